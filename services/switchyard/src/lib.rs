//! The Switchyard process: configuration, the services it hosts, and how they start and stop.
//!
//! `switchyard up` and `switchyard serve` both end in [`run`], which tests call too, with
//! listeners bound to port 0.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use async_trait::async_trait;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use switchyard_ai::{AiApi, AiConfig};
use switchyard_auth::{AuthConfig, Authorizer, ScopeTable, Verifier};
use switchyard_credentials::{CredentialApi, CredentialsConfig};
use switchyard_credentials_client::{CredentialsClient, ServiceToken};
use switchyard_gateway::{EventApi, GatewayConfig};
use switchyard_kit::config::{ConfigError, ServerConfig};
use switchyard_kit::grpc::{Host, ReadinessCheck};
use switchyard_kit::telemetry::LogConfig;
use switchyard_secrets::{SecretStore, SecretsConfig};
use switchyard_store::Db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The whole configuration (see README "Configuration").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP edge listen address.
    pub http_addr: SocketAddr,
    /// Where the embedded stores and generated keys live.
    pub data_dir: PathBuf,
    /// `[log]`.
    pub log: LogConfig,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[secrets]`.
    pub secrets: SecretsConfig,
    /// `[credentials]`.
    pub credentials: CredentialsConfig,
    /// `[ai]`.
    pub ai: AiConfig,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".switchyard"),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            secrets: SecretsConfig::default(),
            credentials: CredentialsConfig::default(),
            ai: AiConfig::default(),
            gateway: GatewayConfig::default(),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...`; unset means one SQLite file per service under `data_dir`.
    pub url: Option<SecretString>,
    /// Largest PostgreSQL pool per service.
    pub pool_size: usize,
    /// Prepended to each service's PostgreSQL schema name (`credentials`, `secrets`), so that
    /// several installations can share one database.
    pub schema_prefix: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            pool_size: switchyard_store::DEFAULT_POOL_SIZE,
            schema_prefix: String::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file`, then `SWITCHYARD_*` variables naming a section or key of the
    /// configuration; returns the configuration and the `SWITCHYARD_*` variables left alone.
    pub fn load(file: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        const TOP_LEVEL_KEYS: &[&str] = &[
            "grpc_addr",
            "http_addr",
            "data_dir",
            "log",
            "server",
            "database",
            "auth",
            "secrets",
            "credentials",
            "ai",
            "gateway",
        ];
        let loaded = switchyard_kit::config::load(file, TOP_LEVEL_KEYS)?;
        Ok((loaded.config, loaded.ignored_variables))
    }

    /// Checks every section; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.auth.validate()?;
        self.credentials.validate()?;
        self.ai.validate()?;
        self.gateway.validate()?;
        // Background passes hold one connection for their lock while their work takes another.
        if self.database.pool_size < 2 {
            return Err(ConfigError::invalid(
                "database.pool_size",
                "must be at least 2",
            ));
        }
        Ok(())
    }
}

/// A service this binary can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceName {
    /// `switchyard.credentials.v1`.
    Credentials,
    /// `switchyard.ai.v1`.
    Ai,
    /// `switchyard.events.v1` and the webhook receiver.
    Gateway,
}

impl ServiceName {
    /// Every service, as `up` runs them.
    pub const ALL: &[ServiceName] = &[
        ServiceName::Credentials,
        ServiceName::Ai,
        ServiceName::Gateway,
    ];

    /// The name used on the command line and as the database schema.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Credentials => "credentials",
            ServiceName::Ai => "ai",
            ServiceName::Gateway => "gateway",
        }
    }

    /// The scope tables of the service's gRPC services.
    pub fn scopes(self) -> &'static [ScopeTable] {
        match self {
            ServiceName::Credentials => &[switchyard_credentials::SCOPES],
            ServiceName::Ai => &[switchyard_ai::SCOPES],
            ServiceName::Gateway => &[
                switchyard_gateway::SCOPES,
                switchyard_gateway::oauth_api::SCOPES,
                switchyard_gateway::apikeys_api::SCOPES,
            ],
        }
    }
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ServiceName::ALL
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<_> = ServiceName::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown service {name:?}; known services: {}",
                    known.join(", ")
                )
            })
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opens the record store of `component`: its PostgreSQL schema, or its SQLite file under the
/// data directory.
pub async fn open_db(config: &Config, component: &str) -> anyhow::Result<Db> {
    let url = match &config.database.url {
        Some(url) => url.expose_secret().to_owned(),
        None => format!(
            "sqlite://{}",
            config.data_dir.join(format!("{component}.db")).display()
        ),
    };
    let schema = format!("{}{component}", config.database.schema_prefix);
    Db::connect(&url, &schema, config.database.pool_size)
        .await
        .with_context(|| format!("opening the {component} database"))
}

/// Opens the secret store (with its own database for the embedded backend).
pub async fn open_secrets(config: &Config) -> anyhow::Result<Arc<dyn SecretStore>> {
    let db = open_db(config, "secrets").await?;
    switchyard_secrets::open(&config.secrets, &db, &config.data_dir)
        .await
        .context("opening the secret store")
}

/// Applies the migrations of `services` (and of the embedded secret store, if used).
pub async fn migrate(config: &Config, services: &BTreeSet<ServiceName>) -> anyhow::Result<()> {
    for service in services {
        match service {
            ServiceName::Credentials => {
                let db = open_db(config, service.as_str()).await?;
                let applied = db
                    .migrate(
                        switchyard_credentials::COMPONENT,
                        switchyard_credentials::store::MIGRATIONS,
                    )
                    .await?;
                tracing::info!(service = %service, applied, "migrations done");
            }
            ServiceName::Ai => {
                let db = open_db(config, service.as_str()).await?;
                let applied = db
                    .migrate(switchyard_ai::COMPONENT, switchyard_ai::usage::MIGRATIONS)
                    .await?;
                tracing::info!(service = %service, applied, "migrations done");
            }
            ServiceName::Gateway => {
                let db = open_db(config, service.as_str()).await?;
                let applied = db
                    .migrate(
                        switchyard_gateway::COMPONENT,
                        switchyard_gateway::store::MIGRATIONS,
                    )
                    .await?;
                tracing::info!(service = %service, applied, "migrations done");
            }
        }
    }
    if matches!(config.secrets, SecretsConfig::Embedded(_)) {
        // Opening the embedded store applies its migrations.
        open_secrets(config).await?;
    }
    Ok(())
}

/// The development HS256 secret under the data directory, created on first use. Returns it and
/// whether it was just created.
pub fn development_secret(data_dir: &Path) -> anyhow::Result<(SecretString, bool)> {
    let path = data_dir.join("jwt.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok((SecretString::from(text.trim().to_owned()), false)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    create_private_dir(data_dir)?;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{encoded}\n").as_bytes())?;
    file.sync_all()?;
    Ok((SecretString::from(encoded), true))
}

/// Creates the data directory, readable only by its owner.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

struct DbReady(Db);

#[async_trait]
impl ReadinessCheck for DbReady {
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|err| err.to_string())
    }
}

struct SecretsReady(Arc<dyn SecretStore>);

#[async_trait]
impl ReadinessCheck for SecretsReady {
    async fn check(&self) -> Result<(), String> {
        self.0.check().await.map_err(|err| err.to_string())
    }
}

/// A token of this installation's issuer and audience, for `subject` with `scopes`; the tenant is
/// filled in per token.
fn token_template(
    config: &Config,
    subject: &str,
    scopes: &[&str],
    ttl: std::time::Duration,
) -> switchyard_auth::TokenRequest {
    switchyard_auth::TokenRequest {
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
        subject: subject.to_owned(),
        tenant: String::new(),
        tenant_claim: config.auth.tenant_claim.clone(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl,
    }
}

/// The URL this process's own gRPC listener is reached at from inside it.
fn own_grpc_url(own_grpc: SocketAddr) -> String {
    let host = if own_grpc.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        own_grpc.ip()
    };
    format!("http://{}", SocketAddr::new(host, own_grpc.port()))
}

/// The API gateway in front of every service: REST/JSON, gRPC-Web and gRPC on the HTTP edge,
/// calling the services on this process's gRPC listener unless `gateway.api.upstreams` says
/// otherwise.
async fn api_gateway(
    config: &Config,
    own_grpc: SocketAddr,
    verifier: Arc<Verifier>,
    gateway: switchyard_gateway::Gateway,
) -> anyhow::Result<axum::Router> {
    use switchyard_gateway::rest::{Api, ApiOutside, Callers, KeyTokens};
    let descriptors = prost_reflect::DescriptorPool::decode(switchyard_proto::FILE_DESCRIPTOR_SET)
        .context("decoding the API descriptors")?;
    let own_grpc = tonic::transport::Channel::from_shared(own_grpc_url(own_grpc))
        .context("the gRPC listener's URL")?
        .connect_lazy();
    // Keys stand for principals through tokens the gateway signs, which every service accepts
    // when it verifies with the same HS256 key.
    let key_tokens = config.auth.hs256_secret.clone().map(|secret| {
        KeyTokens::new(
            secret,
            token_template(config, "", &[], std::time::Duration::ZERO),
        )
    });
    let audited = ServiceName::ALL
        .iter()
        .flat_map(|service| service.scopes())
        .flat_map(|table| {
            table
                .checked_by_handler
                .iter()
                .map(move |method| format!("{}.{method}", table.service))
        })
        .collect();
    let rate_limit_redis = match &config.gateway.api.rate_limit_redis {
        None => None,
        Some(url) => Some(
            redis::Client::open(url.expose_secret())
                .context("gateway.api.rate_limit_redis is not a Redis URL")?
                .get_connection_manager_with_config(
                    switchyard_gateway::rest::ratelimit::connection_config(),
                )
                .await
                .context("gateway.api.rate_limit_redis: cannot connect")?,
        ),
    };
    let api = Api::new(
        &config.gateway.api,
        ApiOutside {
            descriptors,
            own_grpc,
            callers: Callers::new(verifier, gateway, key_tokens),
            audited,
            rate_limit_redis,
        },
    )
    .context("gateway.api")?;
    Ok(switchyard_gateway::rest::router(
        Arc::new(api),
        &config.gateway.api,
    ))
}

/// A reader of the credentials service (this process unless `url` says otherwise) as `subject`,
/// presenting `token`, or else tokens minted per tenant with `auth.hs256_secret`; `None` when
/// there is neither.
fn credential_reader(
    config: &Config,
    own_grpc: SocketAddr,
    url: Option<&String>,
    token: Option<&SecretString>,
    subject: &str,
    scopes: &[&str],
) -> anyhow::Result<Option<CredentialsClient>> {
    let url = url.cloned().unwrap_or_else(|| own_grpc_url(own_grpc));
    let token = match (token, &config.auth.hs256_secret) {
        (Some(token), _) => ServiceToken::Static(token.clone()),
        (None, Some(secret)) => ServiceToken::Minted {
            secret: secret.clone(),
            request: token_template(
                config,
                subject,
                scopes,
                std::time::Duration::from_secs(3600),
            ),
        },
        (None, None) => return Ok(None),
    };
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .with_context(|| format!("credentials URL {url:?} is not a URL"))?
        .connect_lazy();
    Ok(Some(CredentialsClient::new(channel, token)))
}

/// Where the AI service gets its providers' keys: the credentials service (this process unless
/// `ai.credentials_url` says otherwise), as `service:ai` of `ai.credentials_tenant`.
fn ai_keys(
    config: &Config,
    own_grpc: SocketAddr,
) -> anyhow::Result<Arc<dyn switchyard_ai::providers::keys::KeySource>> {
    use switchyard_ai::providers::keys::{CredentialServiceKeys, StaticKeys};
    let reader = credential_reader(
        config,
        own_grpc,
        config.ai.credentials_url.as_ref(),
        config.ai.credentials_token.as_ref(),
        "service:ai",
        &[switchyard_credentials::scopes::ACCESS],
    )?;
    match reader {
        Some(reader) => Ok(Arc::new(CredentialServiceKeys::new(
            reader,
            config.ai.credentials_tenant.clone(),
        ))),
        None if config
            .ai
            .deployments
            .values()
            .any(|d| d.credential.is_some()) =>
        {
            bail!("ai: set ai.credentials_token: there is no auth.hs256_secret to mint one with")
        }
        None => Ok(Arc::new(StaticKeys::default())),
    }
}

/// What the gateway reaches outside: endpoint keys in the credentials service (as
/// `service:gateway` of each endpoint's tenant), SNS certificates and confirmations over HTTPS.
fn gateway_outside(
    config: &Config,
    own_grpc: SocketAddr,
) -> anyhow::Result<switchyard_gateway::Outside> {
    let reader = credential_reader(
        config,
        own_grpc,
        config.gateway.credentials_url.as_ref(),
        config.gateway.credentials_token.as_ref(),
        "service:gateway",
        // Endpoint keys and client secrets are read; connections' token sets are written.
        &[
            switchyard_credentials::scopes::ACCESS,
            switchyard_credentials::scopes::WRITE,
        ],
    )?
    .context(
        "gateway: set gateway.credentials_token: there is no auth.hs256_secret to mint one with",
    )?;
    switchyard_kit::tls::install_crypto_provider();
    // AWS serves certificates and confirmations directly; a redirect would lead elsewhere.
    let http = reqwest::Client::builder()
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the gateway's HTTP client")?;
    let guard = switchyard_kit::outbound::Guard::new(&config.gateway.outbound_allow)
        .map_err(|err| anyhow::anyhow!("gateway.outbound_allow: {err}"))?;
    let delivery = switchyard_gateway::domain::delivery::HttpsDelivery::new(guard)
        .context("building the webhook delivery client")?;
    let credentials = Arc::new(reader);
    let oauth_http = guard_client(&config.gateway.outbound_allow)?;
    let sso = match &config.gateway.sso {
        None => None,
        Some(sso) => Some(switchyard_gateway::domain::sso::SsoOutside {
            config: sso.clone(),
            http: oauth_http.clone(),
            signing_key: config.auth.hs256_secret.clone().context(
                "gateway.sso: Switchyard signs the tokens it issues with auth.hs256_secret; set it",
            )?,
            token_template: token_template(config, "", &[], sso.token_ttl),
        }),
    };
    let oauth = switchyard_gateway::domain::oauth::OAuthOutside {
        client: switchyard_oauth::Client::new(oauth_http),
        vault: credentials.clone(),
        state_key: oauth_state_key(config),
        public_url: url::Url::parse(&config.gateway.public_url)
            .context("gateway.public_url is not a URL")?,
    };
    Ok(switchyard_gateway::Outside {
        keys: credentials,
        certificates: Arc::new(switchyard_webhooks::HttpsCertificates::new(http.clone())),
        confirmer: Arc::new(switchyard_gateway::domain::HttpsConfirmer(http)),
        delivery: Arc::new(delivery),
        oauth: Some(oauth),
        sso,
    })
}

/// A client behind the SSRF guard: providers' base URLs (a self-managed GitLab) are the users'.
fn guard_client(allow: &[String]) -> anyhow::Result<reqwest::Client> {
    switchyard_kit::outbound::Guard::new(allow)
        .map_err(|err| anyhow::anyhow!("gateway.outbound_allow: {err}"))?
        .client(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .context("building the OAuth client")
}

/// The key that signs OAuth states: configured, or derived from the installation's HS256 key
/// (so that every replica has the same), or else random (one replica only).
fn oauth_state_key(config: &Config) -> SecretString {
    use hmac::Mac;
    if let Some(key) = &config.gateway.oauth_state_key {
        return key.clone();
    }
    if let Some(secret) = &config.auth.hs256_secret
        && let Ok(mut mac) =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
    {
        mac.update(b"switchyard oauth state key");
        return SecretString::from(hex::encode(mac.finalize().into_bytes()));
    }
    tracing::warn!(
        "gateway.oauth_state_key is unset and there is no auth.hs256_secret: OAuth states are signed with a random key, valid in this process only"
    );
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    SecretString::from(hex::encode(key))
}

/// Serves `services` on the given listeners until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    services: BTreeSet<ServiceName>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    if services.is_empty() {
        bail!("no service to serve");
    }
    let verifier = Arc::new(Verifier::new(&config.auth).context("building the token verifier")?);
    let tables: Vec<ScopeTable> = services
        .iter()
        .flat_map(|s| s.scopes().iter().copied())
        .collect();
    let authorizer: Arc<dyn switchyard_kit::Authenticator> = Arc::new(Authorizer::new(
        verifier.clone(),
        &tables,
        config.auth.public_health,
    ));
    let mut host = Host::new(config.server.clone(), authorizer.clone());
    host.add_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET);

    let background = CancellationToken::new();
    let mut jobs = Vec::new();
    for service in &services {
        match service {
            ServiceName::Credentials => {
                let db = open_db(&config, service.as_str()).await?;
                let secrets = open_secrets(&config).await?;
                let domain = switchyard_credentials::open(
                    db.clone(),
                    secrets.clone(),
                    config.credentials.clone(),
                )
                .await
                .context("migrating the credentials database")?;
                host.add_service(
                    CredentialApi::new(domain.clone()).into_server(config.server.max_message_bytes),
                );
                host.add_readiness_check("credentials.database", Arc::new(DbReady(db)));
                host.add_readiness_check("credentials.secrets", Arc::new(SecretsReady(secrets)));
                jobs.push(tokio::spawn(switchyard_credentials::jobs::run(
                    domain,
                    config.credentials.clone(),
                    background.clone(),
                )));
            }
            ServiceName::Ai => {
                let db = open_db(&config, service.as_str()).await?;
                let keys = ai_keys(&config, grpc.local_addr()?)?;
                switchyard_kit::tls::install_crypto_provider();
                // A provider answers; it never redirects. Following a redirect would send the
                // request, and its API key, somewhere the deployment does not name.
                let http = reqwest::Client::builder()
                    .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .context("building the providers' HTTP client")?;
                let opened =
                    switchyard_ai::open(db.clone(), &config.ai, keys, http, background.clone())
                        .await
                        .context("starting the ai service")?;
                host.add_service(
                    AiApi::new(opened.ai.clone()).into_server(config.server.max_message_bytes),
                );
                host.merge_http(switchyard_ai::openai::router(opened.ai, authorizer.clone()));
                host.add_readiness_check("ai.database", Arc::new(DbReady(db)));
                jobs.push(opened.usage_writer);
            }
            ServiceName::Gateway => {
                // GetEvent returns a body twice (raw and as JSON) in one message.
                let needed = config
                    .gateway
                    .max_body_bytes
                    .saturating_mul(2)
                    .saturating_add(64 * 1024);
                if config.server.max_message_bytes < needed {
                    return Err(ConfigError::invalid(
                        "gateway.max_body_bytes",
                        format!(
                            "GetEvent returns a body twice: server.max_message_bytes must be at least {needed} for it"
                        ),
                    )
                    .into());
                }
                let db = open_db(&config, service.as_str()).await?;
                let gateway = switchyard_gateway::open(
                    db.clone(),
                    &config.gateway,
                    gateway_outside(&config, grpc.local_addr()?)?,
                    shutdown.clone(),
                )
                .await
                .context("migrating the gateway database")?;
                host.add_service(
                    EventApi::new(gateway.clone()).into_server(config.server.max_message_bytes),
                );
                host.add_service(
                    switchyard_gateway::OAuthApi::new(gateway.clone())
                        .into_server(config.server.max_message_bytes),
                );
                host.add_service(
                    switchyard_gateway::ApiKeyApi::new(gateway.clone())
                        .into_server(config.server.max_message_bytes),
                );
                host.merge_http(switchyard_gateway::http::router(
                    gateway.clone(),
                    config.gateway.max_body_bytes,
                ));
                if config.gateway.api.enabled {
                    host.merge_http(
                        api_gateway(
                            &config,
                            grpc.local_addr()?,
                            verifier.clone(),
                            gateway.clone(),
                        )
                        .await?,
                    );
                }
                host.add_readiness_check("gateway.database", Arc::new(DbReady(db)));
                jobs.push(tokio::spawn(
                    switchyard_gateway::domain::oauth::run_refresher(
                        gateway.clone(),
                        config.gateway.oauth_refresh_interval,
                        config.gateway.oauth_refresh_ahead,
                        background.clone(),
                    ),
                ));
                jobs.push(tokio::spawn(switchyard_gateway::domain::delivery::run(
                    gateway,
                    background.clone(),
                )));
            }
        }
    }

    tracing::info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        services = ?services.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "serving"
    );
    let served = host.serve(grpc, http, shutdown).await;
    background.cancel();
    for job in jobs {
        let _ = job.await;
    }
    served.map_err(Into::into)
}
