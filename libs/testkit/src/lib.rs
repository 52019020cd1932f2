//! Test support for Switchyard.

pub mod fake_vault;
