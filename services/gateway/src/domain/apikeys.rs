//! Switchyard API keys: made for the creator's tenant with some of the creator's scopes, stored as
//! the SHA-256 of their secret, and resolved on every call through the gateway to the principal
//! the key stands for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchyard_auth::Principal;
use switchyard_store::page;

use super::{Gateway, GatewayError, Micros, page_error};
use crate::store;

/// What every key starts with, so that secret scanners and people recognise it.
pub const KEY_PREFIX: &str = "sy_";
/// The subject of a key's principal is this followed by the key's id.
pub const SUBJECT_PREFIX: &str = "apikey:";
/// How long a resolved key is trusted before it is read again: the longest a revocation takes to
/// reach another replica (this one forgets the key at once).
const RESOLVED_TTL: Duration = Duration::from_secs(10);
/// Bound on resolved keys kept; past it the cache starts over.
const MAX_RESOLVED: usize = 10_000;
const MAX_DISPLAY_NAME: usize = 256;
const MAX_SCOPES: usize = 64;

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// 16 hex characters.
    pub id: String,
    /// The tenant of its creator.
    pub tenant: String,
    /// Free text.
    pub display_name: String,
    /// What it grants.
    pub scopes: Vec<String>,
    /// The subject of the token that created it.
    pub creator: String,
    /// When it was made.
    pub create_time: Micros,
    /// When it stops being accepted, if ever.
    pub expire_time: Option<Micros>,
    /// When it was revoked, if it was.
    pub revoke_time: Option<Micros>,
}

/// Whether a key is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyState {
    /// Accepted.
    Active,
    /// Revoked for good.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl ApiKey {
    /// Its state at `now`.
    pub fn state(&self, now: Micros) -> ApiKeyState {
        if self.revoke_time.is_some() {
            ApiKeyState::Revoked
        } else if self.expire_time.is_some_and(|expiry| expiry <= now) {
            ApiKeyState::Expired
        } else {
            ApiKeyState::Active
        }
    }

    /// The visible start of the key.
    pub fn prefix(&self) -> String {
        format!("{KEY_PREFIX}{}", self.id)
    }

    /// The principal a caller presenting this key acts as.
    pub fn principal(&self) -> Principal {
        Principal {
            subject: format!("{SUBJECT_PREFIX}{}", self.id),
            tenant: self.tenant.clone(),
            scopes: self.scopes.iter().cloned().collect(),
        }
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// Free text.
    pub display_name: String,
    /// At least one, each held by the caller.
    pub scopes: Vec<String>,
    /// Unset: never expires.
    pub expire_time: Option<Micros>,
}

/// Whether `text` looks like a Switchyard API key rather than a token.
pub fn is_api_key(text: &str) -> bool {
    text.starts_with(KEY_PREFIX)
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `sy_{id}_{secret}`; the id is hex, so the first `_` after the prefix ends it.
fn split_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

/// Keys resolved lately, by the digest of the whole key, so that a call costs no query.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    entries: std::sync::Mutex<HashMap<String, (ApiKey, Instant)>>,
}

impl Resolved {
    fn get(&self, digest: &str) -> Option<ApiKey> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < RESOLVED_TTL)
            .map(|(key, _)| key.clone())
    }

    fn put(&self, digest: String, key: ApiKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_RESOLVED {
            entries.clear();
        }
        entries.insert(digest, (key, Instant::now()));
    }

    fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (key, _)| key.id != id);
    }
}

fn unauthenticated(message: &str) -> GatewayError {
    GatewayError::Unauthenticated(message.to_owned())
}

impl Gateway {
    /// Creates a key for `caller`'s tenant. Returns it and the key text, shown once.
    pub async fn create_api_key(
        &self,
        caller: &Principal,
        new: NewApiKey,
    ) -> Result<(ApiKey, SecretString), GatewayError> {
        let mut violations = Vec::new();
        if new.display_name.chars().count() > MAX_DISPLAY_NAME {
            violations.push(switchyard_kit::FieldViolation::new(
                "api_key.display_name",
                format!("at most {MAX_DISPLAY_NAME} characters"),
            ));
        }
        if new.scopes.is_empty() || new.scopes.len() > MAX_SCOPES {
            violations.push(switchyard_kit::FieldViolation::new(
                "api_key.scopes",
                format!("between 1 and {MAX_SCOPES} scopes"),
            ));
        }
        for scope in &new.scopes {
            if scope.is_empty() || scope.chars().any(|c| c.is_whitespace()) {
                violations.push(switchyard_kit::FieldViolation::new(
                    "api_key.scopes",
                    format!("{scope:?} is not a scope"),
                ));
            } else if !caller.has_scope(scope) {
                // A key can do no more than its creator: otherwise apikeys.write would be every
                // scope of the tenant.
                violations.push(switchyard_kit::FieldViolation::new(
                    "api_key.scopes",
                    format!("{scope} is not a scope of the caller"),
                ));
            }
        }
        let now = switchyard_store::now_micros();
        if new.expire_time.is_some_and(|expiry| expiry <= now) {
            violations.push(switchyard_kit::FieldViolation::new(
                "api_key.expire_time",
                "must be in the future",
            ));
        }
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let key = ApiKey {
            id: hex::encode(id),
            tenant: caller.tenant.clone(),
            display_name: new.display_name,
            scopes: new.scopes,
            creator: caller.subject.clone(),
            create_time: now,
            expire_time: new.expire_time,
            revoke_time: None,
        };
        store::apikeys::insert(&self.inner.db, &key, &digest(&secret)).await?;
        let text = SecretString::from(format!("{}_{secret}", key.prefix()));
        tracing::info!(tenant = %key.tenant, key = %key.prefix(), creator = %key.creator, "API key created");
        Ok((key, text))
    }

    /// A key of `tenant`.
    pub async fn api_key(&self, tenant: &str, id: &str) -> Result<ApiKey, GatewayError> {
        store::apikeys::get(&self.inner.db, tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(format!("apiKeys/{id}")))
    }

    /// A page of `tenant`'s keys, newest first.
    pub async fn list_api_keys(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ApiKey>, String), GatewayError> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint("api_keys");
        let after: Option<(i64, String)> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut keys =
            store::apikeys::list(&self.inner.db, tenant, after.as_ref(), size + 1).await?;
        let next = page::next_token(&mut keys, size, &fingerprint, |key| {
            (key.create_time, key.id.clone())
        });
        Ok((keys, next))
    }

    /// Revokes a key of `tenant`; revoking a revoked key changes nothing.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<ApiKey, GatewayError> {
        store::apikeys::revoke(&self.inner.db, tenant, id, switchyard_store::now_micros()).await?;
        self.inner.api_keys.forget(id);
        let key = self.api_key(tenant, id).await?;
        tracing::info!(tenant = %key.tenant, key = %key.prefix(), "API key revoked");
        Ok(key)
    }

    /// The key a caller presented, if it is known, its secret matches and it is active.
    pub async fn resolve_api_key(&self, presented: &str) -> Result<ApiKey, GatewayError> {
        let whole = digest(presented);
        let now = switchyard_store::now_micros();
        if let Some(key) = self.inner.api_keys.get(&whole) {
            return match key.state(now) {
                ApiKeyState::Active => Ok(key),
                _ => Err(unauthenticated("the API key is revoked or expired")),
            };
        }
        let (id, secret) =
            split_key(presented).ok_or_else(|| unauthenticated("malformed API key"))?;
        let Some((key, stored)) = store::apikeys::by_id(&self.inner.db, id).await? else {
            return Err(unauthenticated("unknown API key"));
        };
        if !bool::from(stored.as_bytes().ct_eq(digest(secret).as_bytes())) {
            return Err(unauthenticated("unknown API key"));
        }
        if key.state(now) != ApiKeyState::Active {
            return Err(unauthenticated("the API key is revoked or expired"));
        }
        self.inner.api_keys.put(whole, key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_end_of_the_hex_id() {
        assert_eq!(
            split_key("sy_0123456789abcdef_se_cr-et"),
            Some(("0123456789abcdef", "se_cr-et"))
        );
        assert_eq!(split_key("sy_0123_secret"), None);
        assert_eq!(split_key("sy_0123456789abcdeg_secret"), None);
        assert_eq!(split_key("sy_0123456789abcdef_"), None);
        assert_eq!(split_key("eyJhbGciOi.x.y"), None);
    }
}
