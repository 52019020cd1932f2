use switchyard_kit::FieldViolation;

use crate::providers::ProviderError;

/// Everything that can go wrong in the AI domain.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// The request is invalid; each violation names a field.
    #[error("invalid request: {0:?}")]
    Invalid(Vec<FieldViolation>),
    /// No model or alias has that name.
    #[error("{0} not found")]
    NotFound(String),
    /// The model exists but no deployment serves it.
    #[error("no deployment serves {0}; configure one under [ai.deployments]")]
    NoDeployment(String),
    /// The serving provider or model lacks a feature the request uses.
    #[error("{feature} is not supported by {target}; set allow_unsupported to drop it")]
    Unsupported {
        /// The feature, as the API names it.
        feature: String,
        /// The provider or model.
        target: String,
    },
    /// The input and the requested output do not fit the model's context window.
    #[error(
        "{input} input tokens and {output} output tokens exceed the {window}-token context window of {model}"
    )]
    ContextWindow {
        /// The model.
        model: String,
        /// Counted input tokens.
        input: u64,
        /// Requested output tokens.
        output: u64,
        /// The model's window.
        window: u64,
    },
    /// The tenant's requests or tokens per minute are used up.
    #[error("the tenant's {limit} quota is used up; retry in {} s", retry_after.as_secs().max(1))]
    QuotaExceeded {
        /// `requests_per_minute` or `tokens_per_minute`.
        limit: &'static str,
        /// When to retry.
        retry_after: std::time::Duration,
    },
    /// The provider failed, on the last deployment tried.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] switchyard_store::StoreError),
}

impl AiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        AiError::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// The gRPC code name, recorded in usage records and used by the API.
    pub fn result_code(&self) -> &'static str {
        match self {
            AiError::Invalid(_) | AiError::Unsupported { .. } | AiError::ContextWindow { .. } => {
                "INVALID_ARGUMENT"
            }
            AiError::NotFound(_) => "NOT_FOUND",
            AiError::NoDeployment(_) => "FAILED_PRECONDITION",
            AiError::QuotaExceeded { .. } => "RESOURCE_EXHAUSTED",
            AiError::Provider(err) => err.result_code(),
            AiError::Store(_) => "INTERNAL",
        }
    }
}

/// A result of the AI domain.
pub type Result<T, E = AiError> = std::result::Result<T, E>;
