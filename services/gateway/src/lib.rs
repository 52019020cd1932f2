//! The gateway service: the HTTP edge's webhook receiver and the event log
//! (`switchyard.events.v1`).
//!
//! Layout, as every service has it: [`domain`] holds the logic and its types (no tonic, no axum),
//! [`store`] its tables, [`api`] the tonic service, [`http`] the receiver's route.

pub mod api;
pub mod apikeys_api;
pub mod config;
pub mod domain;
pub mod http;
pub mod oauth_api;
pub mod rest;
pub mod store;

pub use api::{EventApi, SCOPES};
pub use apikeys_api::ApiKeyApi;
pub use config::GatewayConfig;
pub use domain::{Gateway, Outside};
pub use oauth_api::OAuthApi;
use switchyard_store::{Db, StoreError};

/// The component name of this service's migrations and its PostgreSQL schema.
pub const COMPONENT: &str = "gateway";

/// Migrates `db` and returns the domain; run [`domain::delivery::run`] beside it to deliver.
/// Event streams end when `shutdown` is cancelled, so that they do not hold a drain open.
pub async fn open(
    db: Db,
    config: &GatewayConfig,
    outside: Outside,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Gateway, StoreError> {
    db.migrate(COMPONENT, store::MIGRATIONS).await?;
    Ok(Gateway::new(db, outside, config, shutdown))
}
