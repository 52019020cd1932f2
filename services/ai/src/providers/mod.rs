//! Provider adapters: each translates the neutral [`ChatRequest`] into its provider's wire format
//! and the answer back. The service picks the adapter by the deployment's provider.

pub mod anthropic;
pub mod echo;
pub mod gemini;
pub mod keys;
pub mod openai;
mod sse;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::domain::model::{
    ChatRequest, Delta, EmbedRequest, FinishReason, Image, ImageRequest, Message, Transcript,
    TranscriptionRequest, Usage,
};

/// A configured place to send requests: a provider, its model name, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment's name in configuration.
    pub name: String,
    /// `openai`, `anthropic`, `gemini` or `echo`.
    pub provider: String,
    /// The catalogue model it serves.
    pub model: String,
    /// The model name the provider expects, when it differs from the catalogue's.
    pub provider_model: String,
    /// Base URL of the provider's API; empty for the provider's public endpoint.
    pub base_url: String,
    /// The credential holding its API key (`credentials/{id}`), if it needs one.
    pub credential: Option<String>,
    /// OpenAI's `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// OpenAI's `OpenAI-Project` header.
    pub project: Option<String>,
    /// How long one call may take.
    pub timeout: Duration,
    /// Its share of a model's traffic among the deployments serving that model.
    pub weight: u32,
}

impl Deployment {
    /// Its base URL without a trailing slash, or the provider's public endpoint when unset.
    pub fn base_url_or<'a>(&'a self, public: &'a str) -> &'a str {
        if self.base_url.is_empty() {
            public
        } else {
            self.base_url.trim_end_matches('/')
        }
    }

    /// Its API key, from the credential it names.
    pub async fn api_key(
        &self,
        keys: &dyn keys::KeySource,
    ) -> Result<secrecy::SecretString, ProviderError> {
        let credential = self.credential.as_deref().ok_or_else(|| {
            ProviderError::Other(format!("deployment {} has no credential", self.name))
        })?;
        keys.key(credential).await
    }
}

/// A failure to reach a provider: a timeout, or an outage worth trying elsewhere.
pub(crate) fn transport_error(err: reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Unavailable(err.without_url().to_string())
    }
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderResponse {
    /// The assistant message.
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Normalized usage.
    pub usage: Usage,
    /// What the caller should know about the answer (safety filters, blocked prompts).
    pub notices: Vec<String>,
}

/// An event of a provider's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// New output.
    Delta(Delta),
    /// The end, with the finish reason and usage.
    Finished {
        /// Why it stopped.
        finish_reason: FinishReason,
        /// Normalized usage.
        usage: Usage,
    },
}

/// How a call to a provider failed. The service decides, from the kind, whether to try the next
/// deployment and what the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 429: rate limited; retry after the delay if the provider gave one.
    #[error("rate limited by the provider")]
    RateLimited {
        /// The provider's Retry-After.
        retry_after: Option<Duration>,
    },
    /// 529 or "overloaded": retry elsewhere.
    #[error("the provider is overloaded")]
    Overloaded,
    /// 5xx, connection errors.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The call took longer than the deployment's timeout.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The provider rejected Switchyard's credential (401/403).
    #[error("the provider rejected the credential")]
    CredentialRejected,
    /// The request is invalid for the provider (400).
    #[error("the provider refused the request: {0}")]
    InvalidRequest(String),
    /// The request uses a feature the provider lacks.
    #[error("{feature} is not supported by {provider}")]
    Unsupported {
        /// The feature, named as in the API (`tools`, `response_format.json_schema`, ...).
        feature: String,
        /// The provider.
        provider: String,
    },
    /// The input is longer than the model's context window.
    #[error("the input is longer than the model's context window")]
    ContextLength,
    /// Anything else.
    #[error("provider error: {0}")]
    Other(String),
}

impl ProviderError {
    /// Whether the next deployment should be tried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Overloaded
                | ProviderError::Unavailable(_)
                | ProviderError::Timeout
        )
    }

    /// The gRPC code name recorded for it.
    pub fn result_code(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "RESOURCE_EXHAUSTED",
            ProviderError::Overloaded | ProviderError::Unavailable(_) => "UNAVAILABLE",
            ProviderError::Timeout => "DEADLINE_EXCEEDED",
            ProviderError::CredentialRejected => "FAILED_PRECONDITION",
            ProviderError::InvalidRequest(_)
            | ProviderError::Unsupported { .. }
            | ProviderError::ContextLength => "INVALID_ARGUMENT",
            ProviderError::Other(_) => "INTERNAL",
        }
    }

    /// The ErrorInfo reason recorded for it.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "UPSTREAM_RATE_LIMITED",
            ProviderError::Overloaded | ProviderError::Unavailable(_) | ProviderError::Timeout => {
                "UPSTREAM_UNAVAILABLE"
            }
            ProviderError::CredentialRejected => "UPSTREAM_CREDENTIAL_REJECTED",
            ProviderError::InvalidRequest(_) => "UPSTREAM_INVALID_REQUEST",
            ProviderError::Unsupported { .. } => "UNSUPPORTED_FEATURE",
            ProviderError::ContextLength => "CONTEXT_LENGTH_EXCEEDED",
            ProviderError::Other(_) => "UPSTREAM_ERROR",
        }
    }
}

/// The JSON body of a provider's successful answer.
pub(crate) async fn decode(
    response: reqwest::Response,
) -> Result<serde_json::Value, ProviderError> {
    response.json().await.map_err(|err| {
        ProviderError::Other(format!(
            "the response does not decode: {}",
            err.without_url()
        ))
    })
}

/// A stream of provider events.
pub type EventStream = BoxStream<'static, Result<ProviderEvent, ProviderError>>;

/// One provider's adapter.
#[async_trait]
pub trait ChatProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as deployments name it.
    fn name(&self) -> &'static str;

    /// One completion.
    async fn complete(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError>;

    /// One completion, streamed.
    async fn stream(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError>;
}

/// What an embedding provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input, in the inputs' order.
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens, as the provider counted them or, where it does not say, estimated.
    pub input_tokens: u64,
}

/// One provider's embeddings adapter.
#[async_trait]
pub trait EmbeddingProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as deployments name it.
    fn name(&self) -> &'static str;

    /// The vectors of a batch of inputs.
    async fn embed(
        &self,
        deployment: &Deployment,
        request: &EmbedRequest,
    ) -> Result<Embeddings, ProviderError>;
}

/// What an image provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedImages {
    /// The images.
    pub images: Vec<Image>,
    /// Tokens, for models that report them (GPT image models); the call is priced by them.
    pub usage: Option<Usage>,
}

/// One provider's image generation adapter.
#[async_trait]
pub trait ImageProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as deployments name it.
    fn name(&self) -> &'static str;

    /// Images from a prompt.
    async fn generate(
        &self,
        deployment: &Deployment,
        request: &ImageRequest,
    ) -> Result<GeneratedImages, ProviderError>;
}

/// What a transcription provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcribed {
    /// The transcript.
    pub transcript: Transcript,
    /// Tokens, for models that report them (GPT-4o transcription); the call is priced by them.
    pub usage: Option<Usage>,
    /// Seconds of audio billed, for models billed by the minute.
    pub billed_seconds: Option<f64>,
}

/// One provider's transcription adapter.
#[async_trait]
pub trait TranscriptionProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as deployments name it.
    fn name(&self) -> &'static str;

    /// The transcript of a recording. `timestamps`: the model gives segment and word timing, so
    /// ask for its detailed answer.
    async fn transcribe(
        &self,
        deployment: &Deployment,
        request: &TranscriptionRequest,
        timestamps: bool,
    ) -> Result<Transcribed, ProviderError>;
}

/// One provider's token count endpoint.
#[async_trait]
pub trait TokenCounter: Send + Sync + std::fmt::Debug {
    /// The provider's name, as deployments name it.
    fn name(&self) -> &'static str;

    /// The input tokens of a request, as the provider counts them.
    async fn count_tokens(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<u64, ProviderError>;
}

/// The adapters of every capability, by provider.
#[derive(Debug, Default)]
pub struct Adapters {
    /// Chat completions.
    pub chat: Vec<std::sync::Arc<dyn ChatProvider>>,
    /// Embeddings.
    pub embeddings: Vec<std::sync::Arc<dyn EmbeddingProvider>>,
    /// Image generation.
    pub images: Vec<std::sync::Arc<dyn ImageProvider>>,
    /// Transcription.
    pub transcription: Vec<std::sync::Arc<dyn TranscriptionProvider>>,
    /// Token counting.
    pub token_counters: Vec<std::sync::Arc<dyn TokenCounter>>,
}
