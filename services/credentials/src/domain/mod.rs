//! The credentials domain, free of transport types.

pub mod audit;
pub mod backup;
pub mod error;
pub mod generate;
pub mod model;
pub mod service;
pub mod validate;
