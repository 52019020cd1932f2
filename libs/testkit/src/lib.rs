//! Test support for Switchyard.

pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_oauth;
pub mod fake_openai;
pub mod fake_vault;
pub mod openai_contract;
#[cfg(test)]
mod raw_http;
