//! Where adapters get their providers' API keys: the credentials service, through its gRPC API,
//! with a short cache so that a busy deployment does not access its key on every call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use switchyard_proto::credentials::v1::AccessCredentialRequest;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
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

/// How the AI service proves itself to the credentials service.
#[derive(Debug, Clone)]
pub enum ServiceToken {
    /// A token given in configuration.
    Static(SecretString),
    /// Tokens minted with the installation's HS256 key, renewed before they expire.
    Minted {
        /// The HS256 key.
        secret: SecretString,
        /// What the tokens say.
        request: switchyard_auth::TokenRequest,
    },
}

/// Keys read from the credentials service with `AccessCredential` (audited there, and subject
/// to each credential's access policy), as the principal of a [`ServiceToken`].
#[derive(Debug)]
pub struct CredentialServiceKeys {
    client: CredentialServiceClient<tonic::transport::Channel>,
    token: ServiceToken,
    minted: Mutex<Option<(SecretString, Instant)>>,
}

impl CredentialServiceKeys {
    /// Keys from the credentials service on `channel`.
    pub fn new(channel: tonic::transport::Channel, token: ServiceToken) -> Self {
        CredentialServiceKeys {
            client: CredentialServiceClient::new(channel),
            token,
            minted: Mutex::new(None),
        }
    }

    async fn bearer(&self) -> Result<SecretString, ProviderError> {
        match &self.token {
            ServiceToken::Static(token) => Ok(token.clone()),
            ServiceToken::Minted { secret, request } => {
                let mut minted = self.minted.lock().await;
                // Renewed at half its lifetime, so a token in use never expires mid-call.
                if let Some((token, at)) = minted.as_ref()
                    && at.elapsed() < request.ttl / 2
                {
                    return Ok(token.clone());
                }
                let token = switchyard_auth::mint(secret.expose_secret().as_bytes(), request)
                    .map_err(|err| {
                        ProviderError::Other(format!("minting the service token: {err}"))
                    })?;
                let token = SecretString::from(token);
                *minted = Some((token.clone(), Instant::now()));
                Ok(token)
            }
        }
    }
}

#[async_trait]
impl KeySource for CredentialServiceKeys {
    async fn key(&self, credential: &str) -> Result<SecretString, ProviderError> {
        let bearer = self.bearer().await?;
        let mut request = tonic::Request::new(AccessCredentialRequest {
            name: credential.to_owned(),
        });
        let value = format!("Bearer {}", bearer.expose_secret())
            .parse()
            .map_err(|_| ProviderError::Other("the service token is not a header value".into()))?;
        request.metadata_mut().insert("authorization", value);
        let response = self
            .client
            .clone()
            .access_credential(request)
            .await
            .map_err(|status| {
                // The key is Switchyard's own: a missing or refused one is the operator's to fix.
                ProviderError::Other(format!(
                    "reading {credential} from the credentials service: {}",
                    status.message()
                ))
            })?;
        let material = response
            .into_inner()
            .payload
            .map(|p| p.data)
            .unwrap_or_default();
        let key = String::from_utf8(material)
            .map_err(|_| ProviderError::Other(format!("{credential} is not text")))?;
        Ok(SecretString::from(key.trim().to_owned()))
    }
}
