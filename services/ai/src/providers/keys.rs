//! Where adapters get their providers' API keys: the credentials service, through its gRPC API,
//! with a short cache so that a busy deployment does not access its key on every call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use switchyard_credentials_client::CredentialsClient;
use tokio::sync::Mutex;

use super::ProviderError;

/// Gives API keys by credential name (`credentials/{id}`).
#[async_trait]
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// The current key of `credential`.
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError>;
}

/// Fixed keys, for tests and for deployments whose key is given directly.
#[derive(Debug, Default)]
pub struct StaticKeys(HashMap<String, SecretString>);

impl StaticKeys {
    /// Keys by credential name.
    pub fn new(keys: impl IntoIterator<Item = (String, SecretString)>) -> Self {
        StaticKeys(keys.into_iter().collect())
    }
}

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError> {
        self.0
            .get(credential)
            .cloned()
            .ok_or_else(|| ProviderError::Other(format!("no key for {credential}")))
    }
}

#[async_trait]
impl KeySource for std::sync::Arc<dyn KeySource> {
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError> {
        (**self).key(credential).await
    }
}

/// Keys fetched from a [`KeySource`] and kept for `ttl`, so that a rotation reaches callers
/// within `ttl` while most calls need no fetch.
#[derive(Debug)]
pub struct CachedKeys<S> {
    source: S,
    ttl: Duration,
    cache: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl<S: KeySource> CachedKeys<S> {
    /// Caches `source` for `ttl`.
    pub fn new(source: S, ttl: Duration) -> Self {
        CachedKeys {
            source,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<S: KeySource> KeySource for CachedKeys<S> {
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError> {
        if let Some((key, at)) = self.cache.lock().await.get(credential)
            && at.elapsed() < self.ttl
        {
            return Ok(key.clone());
        }
        let key = self.source.key(credential).await?;
        self.cache
            .lock()
            .await
            .insert(credential.to_owned(), (key.clone(), Instant::now()));
        Ok(key)
    }
}

/// Keys read from the credentials service (see [`CredentialsClient`]) in one tenant: the one
/// whose credentials hold the providers' keys.
#[derive(Debug)]
pub struct CredentialServiceKeys {
    reader: CredentialsClient,
    tenant: String,
}

impl CredentialServiceKeys {
    /// Keys of `tenant`, read with `reader`.
    pub fn new(reader: CredentialsClient, tenant: String) -> Self {
        CredentialServiceKeys { reader, tenant }
    }
}

#[async_trait]
impl KeySource for CredentialServiceKeys {
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError> {
        // The key is Switchyard's own: a missing or refused one is the operator's to fix.
        let material = self
            .reader
            .read(&self.tenant, credential)
            .await
            .map_err(|err| ProviderError::Other(err.to_string()))?;
        let key = String::from_utf8(material)
            .map_err(|_| ProviderError::Other(format!("{credential} is not text")))?;
        Ok(SecretString::from(key.trim().to_owned()))
    }
}
