//! Secret material for Switchyard: the [`SecretStore`] interface and its two backends.
//!
//! - [`vault`]: HashiCorp Vault. Material is encrypted by the Transit engine and the ciphertext is
//!   kept in the KV v2 engine; Transit key rotation and rewrap re-encrypt it without Switchyard
//!   ever holding the key. Token, AppRole and Kubernetes auth, with token renewal.
//! - [`embedded`]: for the all-in-one mode. Every secret is encrypted with XChaCha20-Poly1305
//!   under a versioned data key; data keys are wrapped by a master key kept in a file readable only
//!   by its owner (or supplied through the environment). Rows live in the owning service's
//!   database ([`switchyard_store::Db`]); nothing secret is written in plaintext.
//!
//! Callers never see how material is stored: they keep the opaque [`SecretRef`] that `put`
//! returns, next to their own records.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use secrecy::{ExposeSecret, SecretString};

pub mod embedded;
pub mod vault;

pub use embedded::{EmbeddedConfig, EmbeddedSecretStore};
pub use vault::{VaultAuth, VaultConfig, VaultSecretStore};

/// Secret material. Zeroed when dropped; `Debug` never shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps material.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// The material itself, for the few places that must hand it on.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes::new(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The opaque reference under which a secret is stored: `{scope}/{unique id}`, where the scope is
/// what the caller passed to [`SecretStore::put`] (for example `acme/credentials/openai-prod`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretRef(String);

impl SecretRef {
    /// Parses a reference read back from a caller's records.
    pub fn parse(value: impl Into<String>) -> Result<Self, SecretError> {
        let value = value.into();
        validate_path(&value)?;
        Ok(SecretRef(value))
    }

    /// The reference as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Scopes and references are path-like: segments of ASCII letters, digits, `-`, `_` and `.`,
/// separated by `/`, none empty, none `.` or `..`, at most 512 bytes in all.
pub fn validate_path(path: &str) -> Result<(), SecretError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if path.len() <= 512 && path.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(SecretError::InvalidPath(path.chars().take(80).collect()))
    }
}

/// What a key rotation produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRotation {
    /// The key version that new material is now encrypted under.
    pub new_version: u32,
}

/// What a rewrap did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Secrets re-encrypted under the newest key version.
    pub rewrapped: u64,
    /// Secrets already under the newest key version.
    pub already_current: u64,
}

/// Errors of a secret store. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret is stored under the reference.
    #[error("no secret stored under {0}")]
    NotFound(String),
    /// A scope or reference is not path-like (see [`validate_path`]).
    #[error("invalid secret path {0:?}")]
    InvalidPath(String),
    /// The stored ciphertext does not decrypt: the wrong key, or tampered data.
    #[error("secret {0} failed to decrypt: wrong key or tampered data")]
    Integrity(String),
    /// The backend refused Switchyard's own credentials (Vault 401/403).
    #[error("the secret store refused access: {0}")]
    Unauthorized(String),
    /// The backend cannot be reached or is failing (Vault down, sealed, 5xx).
    #[error("the secret store is unavailable: {0}")]
    Unavailable(String),
    /// The store is configured wrongly (a missing key file, a master key that does not match).
    #[error("secret store configuration: {0}")]
    Config(String),
    /// The record store under the embedded backend failed.
    #[error(transparent)]
    Store(#[from] switchyard_store::StoreError),
}

/// Versioned, encrypted storage of secret material.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// `"vault"` or `"embedded"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Stores material under a new, unique reference below `scope` and returns it. Each call
    /// creates a new secret; material is never overwritten, so concurrent writers cannot clobber
    /// each other.
    async fn put(&self, scope: &str, material: &SecretBytes) -> Result<SecretRef, SecretError>;

    /// Returns the material stored under `secret`.
    async fn get(&self, secret: &SecretRef) -> Result<SecretBytes, SecretError>;

    /// Deletes the material for good. Destroying what is absent succeeds.
    async fn destroy(&self, secret: &SecretRef) -> Result<(), SecretError>;

    /// Creates a new encryption key version; material stored from now on is encrypted under it,
    /// and older material stays readable.
    async fn rotate_key(&self) -> Result<KeyRotation, SecretError>;

    /// Re-encrypts every stored secret under the newest key version.
    async fn rewrap(&self) -> Result<RewrapReport, SecretError>;

    /// Checks that the store is reachable and usable, for readiness probes.
    async fn check(&self) -> Result<(), SecretError>;
}

/// Which backend to use, as configured under `[secrets]`.
// Read once at start-up, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretsConfig {
    /// The embedded encrypted store (the default).
    Embedded(EmbeddedConfig),
    /// HashiCorp Vault.
    Vault(VaultConfig),
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig::Embedded(EmbeddedConfig::default())
    }
}

/// Opens the configured backend. The embedded backend keeps its rows in `db` and, unless the
/// configuration supplies the master key, its key file under `data_dir`.
pub async fn open(
    config: &SecretsConfig,
    db: &switchyard_store::Db,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn SecretStore>, SecretError> {
    match config {
        SecretsConfig::Embedded(config) => Ok(Arc::new(
            EmbeddedSecretStore::open(config, db.clone(), data_dir).await?,
        )),
        SecretsConfig::Vault(config) => Ok(Arc::new(VaultSecretStore::connect(config).await?)),
    }
}
