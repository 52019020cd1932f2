//! The AI domain, free of transport types.

pub mod breaker;
pub mod catalogue;
pub mod constitution;
pub mod context;
pub mod cost;
pub mod embeddings;
pub mod error;
pub mod images;
pub mod model;
pub mod quota;
pub mod service;
pub mod tokens;
pub mod transcription;
