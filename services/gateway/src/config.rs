use std::time::Duration;

use serde::Deserialize;
use switchyard_kit::config::ConfigError;

/// `[gateway]`: the webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The largest webhook body accepted; larger ones get 413 and are not stored. GitHub's
    /// largest payloads are 25 MB; most senders stay far below.
    pub max_body_bytes: usize,
    /// The credentials service holding endpoints' verification keys; unset: this process.
    pub credentials_url: Option<String>,
    /// The token the gateway presents to the credentials service; unset: one minted per tenant
    /// with `auth.hs256_secret` for `service:gateway` with the `credentials.access` scope. A
    /// static token names one tenant, so only that tenant's endpoints can be verified.
    pub credentials_token: Option<secrecy::SecretString>,
    /// How long a verification key is used before it is read again; a rotated key reaches the
    /// receiver within this time (list both keys, one per line, while rotating).
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 26 * 1024 * 1024,
            credentials_url: None,
            credentials_token: None,
            key_cache_ttl: Duration::from_secs(30),
        }
    }
}

impl GatewayConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "gateway.max_body_bytes",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}
