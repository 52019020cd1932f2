//! The credentials service (`switchyard.credentials.v1`): secure credential storage with
//! versions, rotation, expiry, per-credential access control, a hash-chained audit log, and
//! encrypted backup and recovery.
//!
//! Layout, as every service has it: [`domain`] holds the logic and its types (no tonic), [`store`]
//! every SQL statement, [`api`] the tonic service and the proto conversions, [`jobs`] the
//! background work.

pub mod api;
pub mod config;
pub mod domain;
pub mod jobs;
pub mod scopes;
pub mod store;

use std::sync::Arc;

pub use api::{CredentialApi, SCOPES};
pub use config::CredentialsConfig;
pub use domain::service::Credentials;
use switchyard_secrets::SecretStore;
use switchyard_store::{Db, StoreError};

/// The component name of this service's migrations and its PostgreSQL schema.
pub const COMPONENT: &str = "credentials";

/// Migrates `db` and returns the domain over it and `secrets`.
pub async fn open(
    db: Db,
    secrets: Arc<dyn SecretStore>,
    config: CredentialsConfig,
) -> Result<Credentials, StoreError> {
    db.migrate(COMPONENT, store::MIGRATIONS).await?;
    Ok(Credentials::new(db, secrets, config))
}
