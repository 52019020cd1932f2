use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use switchyard_kit::config::ConfigError;

/// `[auth]`: how tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The required `iss` claim.
    pub issuer: String,
    /// The required `aud` claim.
    pub audience: String,
    /// The HS256 secret, at least 32 bytes. `switchyard up` generates one if unset.
    pub hs256_secret: Option<SecretString>,
    /// Where RS256/ES256/EdDSA public keys are published (an identity provider's JWKS).
    pub jwks_url: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A token with an unknown `kid` triggers a JWKS refetch at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Cached keys are refetched after this long even if every `kid` is known, so revoked keys
    /// drop out.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// Whether health checks and reflection are reachable without a token.
    pub public_health: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "switchyard".to_owned(),
            audience: "switchyard".to_owned(),
            hs256_secret: None,
            jwks_url: None,
            leeway: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(3600),
            tenant_claim: "tenant".to_owned(),
            public_health: true,
        }
    }
}

/// Shortest HS256 secret accepted: the key size of the hash (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl AuthConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hs256_secret.is_none() && self.jwks_url.is_none() {
            return Err(ConfigError::invalid(
                "auth",
                "set auth.hs256_secret or auth.jwks_url (or both)",
            ));
        }
        if let Some(secret) = &self.hs256_secret
            && secret.expose_secret().len() < MIN_HS256_SECRET_BYTES
        {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
            ));
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                "auth.jwks_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid("auth.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid("auth.audience", "must not be empty"));
        }
        if self.tenant_claim.is_empty() {
            return Err(ConfigError::invalid(
                "auth.tenant_claim",
                "must not be empty",
            ));
        }
        Ok(())
    }
}
