use std::collections::BTreeMap;
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
    /// How long an endpoint's verification key or a subscription's signing secret is used before
    /// it is read again; a rotated key is used within this time (list both keys, one per line,
    /// while rotating).
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
    /// `[gateway.api]`: the API gateway.
    pub api: ApiConfig,
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
    /// Deliveries claimed at once; never more than `concurrency`, so that every claimed attempt
    /// starts within its lease.
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
            api: ApiConfig::default(),
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
        self.api.validate()?;
        if self.delivery.batch == 0 || self.delivery.concurrency == 0 {
            return Err(ConfigError::invalid(
                "gateway.delivery.batch",
                "batch and concurrency must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[gateway.api]`: the API gateway on the HTTP edge, in front of every service: REST/JSON
/// transcoding, gRPC-Web and gRPC, with API keys, rate limits and a read cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the APIs on the HTTP edge.
    pub enabled: bool,
    /// Where each proto package is served, e.g. `"switchyard.ai.v1" = "http://ai:50051"`; a
    /// package not named here is called on this process's own gRPC listener.
    pub upstreams: BTreeMap<String, String>,
    /// `[[gateway.api.rate_limits]]`: every rule that names a call applies to it.
    pub rate_limits: Vec<RateLimitRule>,
    /// `redis://[:password@]host:port[/db]` (or `rediss://`): rate-limit buckets shared by every
    /// replica. Unset: each replica counts on its own. While Redis cannot answer, calls are let
    /// through and the failure is logged and counted.
    pub rate_limit_redis: Option<secrecy::SecretString>,
    /// `[gateway.api.cache]`: answers to safe reads kept for a while.
    pub cache: CacheConfig,
    /// Deprecated API versions by route prefix, e.g. `v1 = { deprecation = "2026-11-01T00:00:00Z",
    /// sunset = "2027-05-01T00:00:00Z" }`: their answers carry `Deprecation` and `Sunset`.
    pub deprecated_versions: BTreeMap<String, Deprecation>,
    /// Origins whose browser pages may call the APIs (CORS), e.g. `https://console.example.com`;
    /// `*` for any. Empty: no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// The largest REST request body.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            upstreams: BTreeMap::new(),
            rate_limits: Vec::new(),
            rate_limit_redis: None,
            cache: CacheConfig::default(),
            deprecated_versions: BTreeMap::new(),
            cors_allowed_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What one rate-limit bucket is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitDimension {
    /// Each tenant.
    Tenant,
    /// Each principal: a token's subject, or an API key (`apikey:{id}`).
    Principal,
    /// Each method.
    Route,
}

/// `[[gateway.api.rate_limits]]`: `requests` per `period` for each combination of `per`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// The calls it counts: `*`, a service (`switchyard.credentials.v1.CredentialService.*`) or a
    /// method (`switchyard.credentials.v1.CredentialService.ListCredentials`).
    #[serde(default = "all_routes")]
    pub route: String,
    /// What gets its own bucket; default: each tenant.
    #[serde(default = "per_tenant")]
    pub per: Vec<LimitDimension>,
    /// Calls allowed per period; also the burst.
    pub requests: u32,
    /// The period, e.g. `1m`.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

fn all_routes() -> String {
    "*".to_owned()
}

fn per_tenant() -> Vec<LimitDimension> {
    vec![LimitDimension::Tenant]
}

/// A time to live, written as `30s`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct Ttl(#[serde(with = "humantime_serde")] pub Duration);

/// `[gateway.api.cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Answers kept at most; past it new answers are not kept until old ones expire.
    pub max_entries: usize,
    /// Time to live by method (`switchyard.credentials.v1.CredentialService.ListCredentials =
    /// "5s"`); only GET routes, and never an audited method, can be cached. Empty: no caching.
    pub routes: BTreeMap<String, Ttl>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            routes: BTreeMap::new(),
        }
    }
}

/// A deprecated API version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// When it was deprecated, RFC 3339.
    pub deprecation: String,
    /// When it stops being served, RFC 3339; unset: not yet decided.
    pub sunset: Option<String>,
    /// Where the migration is explained.
    pub link: Option<String>,
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (index, rule) in self.rate_limits.iter().enumerate() {
            if rule.requests == 0 || rule.period.is_zero() {
                return Err(ConfigError::invalid(
                    &format!("gateway.api.rate_limits[{index}]"),
                    "requests and period must be greater than 0",
                ));
            }
            if rule.per.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("gateway.api.rate_limits[{index}].per"),
                    "name at least one of tenant, principal, route",
                ));
            }
        }
        for (version, deprecation) in &self.deprecated_versions {
            let key = format!("gateway.api.deprecated_versions.{version}");
            humantime::parse_rfc3339(&deprecation.deprecation)
                .map_err(|_| ConfigError::invalid(&key, "deprecation must be an RFC 3339 time"))?;
            if let Some(sunset) = &deprecation.sunset {
                humantime::parse_rfc3339(sunset)
                    .map_err(|_| ConfigError::invalid(&key, "sunset must be an RFC 3339 time"))?;
            }
        }
        for (package, url) in &self.upstreams {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::invalid(
                        &format!("gateway.api.upstreams.{package}"),
                        "an http(s) URL such as http://credentials:50051",
                    ));
                }
            }
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "gateway.api.max_body_bytes",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}
