//! Who is calling through the gateway: a bearer token verified as the services verify it, or a
//! Switchyard API key, for which the gateway presents the services a short-lived token of the
//! key's principal (ADR 0010).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use switchyard_auth::{Principal, TokenRequest, Verifier};
use switchyard_kit::ApiError;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::domain::Gateway;
use crate::domain::apikeys::{ApiKey, is_api_key};

/// How long a token minted for a key lives; it is only ever sent to a service, never returned.
const KEY_TOKEN_TTL: Duration = Duration::from_secs(300);
/// A minted token is replaced when less than this is left of it.
const KEY_TOKEN_MARGIN: Duration = Duration::from_secs(60);
const MAX_MINTED: usize = 10_000;

/// The header a key can come in besides `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Signs the tokens that stand for API keys, with the installation's HS256 key.
pub struct KeyTokens {
    secret: SecretString,
    template: TokenRequest,
    minted: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl std::fmt::Debug for KeyTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTokens").finish_non_exhaustive()
    }
}

impl KeyTokens {
    /// Mints with `secret` (`auth.hs256_secret`) the issuer, audience and tenant claim of
    /// `template`.
    pub fn new(secret: SecretString, template: TokenRequest) -> Self {
        KeyTokens {
            secret,
            template,
            minted: Mutex::new(HashMap::new()),
        }
    }

    fn token_for(&self, key: &ApiKey) -> Result<SecretString, ApiError> {
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, expires)) = minted.get(&key.id)
            && expires.saturating_duration_since(Instant::now()) > KEY_TOKEN_MARGIN
        {
            return Ok(token.clone());
        }
        let principal = key.principal();
        let request = TokenRequest {
            subject: principal.subject,
            tenant: principal.tenant,
            scopes: key.scopes.clone(),
            ttl: KEY_TOKEN_TTL,
            ..self.template.clone()
        };
        let token = switchyard_auth::mint(self.secret.expose_secret().as_bytes(), &request)
            .map(SecretString::from)
            .map_err(ApiError::internal)?;
        if minted.len() >= MAX_MINTED {
            minted.clear();
        }
        minted.insert(
            key.id.clone(),
            (token.clone(), Instant::now() + KEY_TOKEN_TTL),
        );
        Ok(token)
    }
}

/// Authenticates callers of the gateway.
#[derive(Debug, Clone)]
pub struct Callers {
    verifier: Arc<Verifier>,
    gateway: Gateway,
    key_tokens: Option<Arc<KeyTokens>>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal the services will see.
    pub principal: Principal,
    /// What the gateway presents to the services for it.
    token: SecretString,
}

impl Caller {
    /// A gRPC request carrying `message` as this caller, with the edge's request id.
    pub fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", self.token.expose_secret()))
        {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(id) = switchyard_kit::telemetry::current_request_id()
            && let Ok(value) = MetadataValue::try_from(id)
        {
            request.metadata_mut().insert("x-request-id", value);
        }
        request
    }

    /// The `authorization` value to present upstream.
    pub fn authorization(&self) -> SecretString {
        SecretString::from(format!("Bearer {}", self.token.expose_secret()))
    }
}

impl Callers {
    /// Verifies tokens with `verifier` and resolves API keys through `gateway`; keys are refused
    /// when there is nothing to mint their tokens with.
    pub fn new(verifier: Arc<Verifier>, gateway: Gateway, key_tokens: Option<KeyTokens>) -> Self {
        Callers {
            verifier,
            gateway,
            key_tokens: key_tokens.map(Arc::new),
        }
    }

    /// The caller of a request, from `X-Api-Key` or `Authorization: Bearer`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let presented = headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| switchyard_auth::bearer_token(headers))
            .filter(|text| !text.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated("missing credentials: send a bearer token or an API key")
            })?;
        if is_api_key(presented) {
            let Some(key_tokens) = &self.key_tokens else {
                return Err(ApiError::new(
                    Code::FailedPrecondition,
                    "API_KEYS_DISABLED",
                    "API keys need auth.hs256_secret: the gateway vouches for a key with a token it signs",
                ));
            };
            let key = self
                .gateway
                .resolve_api_key(presented)
                .await
                .map_err(crate::api::api_error)?;
            return Ok(Caller {
                principal: key.principal(),
                token: key_tokens.token_for(&key)?,
            });
        }
        let principal = self
            .verifier
            .verify(presented)
            .await
            .map_err(switchyard_auth::rejection)?;
        Ok(Caller {
            principal,
            token: SecretString::from(presented.to_owned()),
        })
    }
}
