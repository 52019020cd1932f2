//! Public keys from a JWKS URL, cached by `kid`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use crate::AuthError;
use crate::verifier::JWKS_TIMEOUT;

pub(crate) struct JwksCache {
    url: String,
    http: reqwest::Client,
    refresh_interval: Duration,
    max_age: Duration,
    keys: RwLock<Keys>,
    // Serializes fetches, so a burst of tokens with a new kid fetches once.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    /// Why the last fetch failed, so that callers see an outage rather than an unknown key.
    fetch_error: Option<String>,
}

#[derive(Clone)]
pub(crate) struct CachedKey {
    pub(crate) key: DecodingKey,
    /// The `alg` the JWK declares, if any; a token must then use exactly it.
    pub(crate) algorithm: Option<Algorithm>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("url", &self.url).finish()
    }
}

impl JwksCache {
    pub(crate) fn new(
        url: String,
        http: reqwest::Client,
        refresh_interval: Duration,
        max_age: Duration,
    ) -> Self {
        JwksCache {
            url,
            http,
            refresh_interval,
            max_age,
            keys: RwLock::new(Keys::default()),
            fetching: Mutex::new(()),
        }
    }

    /// The key for `kid`, fetching the set if the kid is unknown (at most once per refresh
    /// interval) or the cache is older than its maximum age.
    pub(crate) async fn key(&self, kid: &str) -> Result<CachedKey, AuthError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.max_age);
            if fresh && let Some(key) = keys.by_kid.get(kid) {
                return Ok(key.clone());
            }
        }
        let _fetching = self.fetching.lock().await;
        {
            // Another task may have fetched while this one waited.
            let keys = self.keys.read().await;
            let recent = keys
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.refresh_interval);
            if let Some(key) = keys.by_kid.get(kid)
                && keys
                    .fetched_at
                    .is_some_and(|at| at.elapsed() < self.max_age)
            {
                return Ok(key.clone());
            }
            if recent {
                return Err(match &keys.fetch_error {
                    Some(error) => AuthError::KeysUnavailable(error.clone()),
                    None => AuthError::UnknownKey(kid.to_owned()),
                });
            }
        }
        let fetched = self.fetch().await;
        let mut keys = self.keys.write().await;
        // A failed fetch still counts against the refresh interval, so a broken identity
        // provider is not hammered by every request.
        keys.fetched_at = Some(Instant::now());
        match fetched {
            Ok(by_kid) => {
                keys.by_kid = by_kid;
                keys.fetch_error = None;
            }
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "fetching JWKS failed");
                keys.fetch_error = Some(err.to_string());
                // Keep serving the keys fetched before the outage.
                if !keys.by_kid.contains_key(kid) {
                    return Err(err);
                }
            }
        }
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, CachedKey>, AuthError> {
        let response = self
            .http
            .get(&self.url)
            // Whatever client it was given: a slow key server must not hold every verification.
            .timeout(JWKS_TIMEOUT)
            .send()
            .await
            .map_err(|err| AuthError::KeysUnavailable(err.to_string()))?;
        if !response.status().is_success() {
            return Err(AuthError::KeysUnavailable(format!(
                "{} answered {}",
                self.url,
                response.status()
            )));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|err| AuthError::KeysUnavailable(format!("invalid JWKS: {err}")))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match cached_key(jwk) {
                Some(key) => {
                    by_kid.insert(kid, key);
                }
                None => tracing::debug!(kid, "skipping JWKS key that cannot verify signatures"),
            }
        }
        tracing::info!(url = %self.url, keys = by_kid.len(), "fetched JWKS");
        Ok(by_kid)
    }
}

fn cached_key(jwk: &Jwk) -> Option<CachedKey> {
    // Symmetric keys are never accepted from a JWKS: a public document cannot hold a secret.
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    let algorithm = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => Some(signing_algorithm(declared)?),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(CachedKey { key, algorithm })
}

fn signing_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
