//! The AI service (`switchyard.ai.v1`): LLM providers behind one provider-neutral API, with a
//! model catalogue, aliases and fallbacks, normalized usage, cost in micro-USD, a usage record of
//! every call, and an OpenAI-compatible HTTP surface.
//!
//! Layout, as every service has it: [`domain`] holds the logic and its types (no tonic),
//! [`providers`] the adapters, [`usage`] the usage store and its writer, [`api`] the tonic service,
//! [`openai`] the OpenAI-compatible routes.

pub mod api;
pub mod config;
pub mod domain;
pub mod openai;
pub mod providers;
pub mod usage;

use std::sync::Arc;

pub use api::{AiApi, SCOPES};
pub use config::AiConfig;
pub use domain::service::Ai;
use switchyard_store::Db;
use tokio_util::sync::CancellationToken;

/// The component name of this service's migrations and its PostgreSQL schema.
pub const COMPONENT: &str = "ai";

/// What [`open`] returns: the domain and the usage writer to await at shutdown.
#[derive(Debug)]
pub struct Opened {
    /// The domain.
    pub ai: Ai,
    /// The usage writer; it flushes and ends when the shutdown token is cancelled.
    pub usage_writer: tokio::task::JoinHandle<()>,
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The catalogue does not load.
    #[error(transparent)]
    Catalogue(#[from] domain::catalogue::CatalogueError),
    /// The database does not migrate.
    #[error(transparent)]
    Store(#[from] switchyard_store::StoreError),
}

/// Migrates `db`, loads the catalogue, starts the usage writer, and returns the domain. Adapters
/// send with `http` and take their providers' keys from `keys`, cached for `ai.key_cache_ttl`.
pub async fn open(
    db: Db,
    config: &AiConfig,
    keys: Arc<dyn providers::keys::KeySource>,
    http: reqwest::Client,
    shutdown: CancellationToken,
) -> Result<Opened, OpenError> {
    db.migrate(COMPONENT, usage::MIGRATIONS).await?;
    let catalogue = domain::catalogue::Catalogue::load(&config.models)?;
    let (recorder, usage_writer) = usage::start(
        db.clone(),
        config.usage_flush_interval,
        config.usage_buffer,
        shutdown,
    );
    let keys: Arc<dyn providers::keys::KeySource> =
        Arc::new(providers::keys::CachedKeys::new(keys, config.key_cache_ttl));
    let echo = Arc::new(providers::echo::Echo);
    let openai = Arc::new(providers::openai::OpenAi::new(http.clone(), keys.clone()));
    let gemini = Arc::new(providers::gemini::Gemini::new(http.clone(), keys.clone()));
    let anthropic = Arc::new(providers::anthropic::Anthropic::new(http, keys));
    let adapters = providers::Adapters {
        chat: vec![
            echo.clone(),
            openai.clone(),
            anthropic.clone(),
            gemini.clone(),
        ],
        embeddings: vec![echo, openai.clone(), gemini.clone()],
        images: vec![openai.clone()],
        transcription: vec![openai],
        token_counters: vec![anthropic, gemini],
    };
    let ai = Ai::new(catalogue, config, adapters, recorder, db);
    Ok(Opened { ai, usage_writer })
}
