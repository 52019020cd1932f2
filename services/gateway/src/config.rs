use std::time::Duration;

use serde::Deserialize;
use switchyard_kit::config::ConfigError;

/// `[gateway]`: the webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The largest webhook body accepted; larger ones get 413 and are not stored. GetEvent
    /// returns an event's body twice (raw and as JSON), so `server.max_message_bytes` must be at
    /// least twice this plus 64 KiB. GitHub caps its payloads at 25 MB; most senders stay far
    /// below a megabyte.
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
    /// Destinations allowed beyond the public internet: CIDRs (`10.0.0.0/8`), addresses or host
    /// names. Plain http is only allowed to these.
    pub outbound_allow: Vec<String>,
    /// `[gateway.delivery]`: the outbound delivery worker.
    pub delivery: DeliveryConfig,
    /// Switchyard's public URL, as users' browsers reach it: OAuth redirect URIs are
    /// `{public_url}/oauth/{provider}/callback`.
    pub public_url: String,
    /// The key that signs OAuth states; every replica needs the same. Unset: derived from
    /// `auth.hs256_secret`, or else random at start (one replica only).
    pub oauth_state_key: Option<secrecy::SecretString>,
    /// How often connections are looked at for a refresh ahead of expiry.
    #[serde(with = "humantime_serde")]
    pub oauth_refresh_interval: Duration,
    /// Connections whose token expires within this are refreshed ahead.
    #[serde(with = "humantime_serde")]
    pub oauth_refresh_ahead: Duration,
    /// `[gateway.sso]`: OpenID Connect login; unset: none.
    pub sso: Option<crate::domain::sso::SsoConfig>,
}

/// `[gateway.delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How often the worker looks for retries that came due (new deliveries wake it at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claimed delivery is the claimer's: a replica that dies mid-attempt releases
    /// it after this. Subscriptions' timeouts must be shorter.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deliveries claimed at once.
    pub batch: usize,
    /// Attempts in flight at once, per replica.
    pub concurrency: usize,
    /// A subscription whose every attempt failed for this long is disabled (Svix: five days).
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(120),
            batch: 64,
            concurrency: 64,
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 1024 * 1024,
            credentials_url: None,
            credentials_token: None,
            key_cache_ttl: Duration::from_secs(30),
            outbound_allow: Vec::new(),
            delivery: DeliveryConfig::default(),
            public_url: "http://127.0.0.1:8080".to_owned(),
            oauth_state_key: None,
            oauth_refresh_interval: Duration::from_secs(30),
            oauth_refresh_ahead: Duration::from_secs(5 * 60),
            sso: None,
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
        match url::Url::parse(&self.public_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "gateway.public_url",
                    "an http(s) URL such as https://switchyard.example.com",
                ));
            }
        }
        switchyard_kit::outbound::Guard::new(&self.outbound_allow)
            .map_err(|err| ConfigError::invalid("gateway.outbound_allow", err))?;
        if self.delivery.lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "gateway.delivery.lease",
                "must be at least 1 s",
            ));
        }
        if self.delivery.batch == 0 || self.delivery.concurrency == 0 {
            return Err(ConfigError::invalid(
                "gateway.delivery.batch",
                "batch and concurrency must be at least 1",
            ));
        }
        Ok(())
    }
}
