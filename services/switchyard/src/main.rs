//! `switchyard`: run Switchyard, mint development tokens, migrate, administer.

#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use switchyard::{Config, ServiceName, development_secret};
use switchyard_auth::TokenRequest;
use switchyard_secrets::{EmbeddedSecretStore, SecretsConfig};

/// glibc's allocator was a quarter of the instructions of an AI completion under load; mimalloc
/// serves the many small, short-lived allocations of the request path for less
/// (docs/benchmarks.md, AI gateway, finding 7).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard: one authenticated, metered and audited way to the platforms your software uses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process on embedded defaults: SQLite, the embedded secret store,
    /// a generated development key. Prints a ready-to-use token on first run.
    Up(Listen),
    /// Run the named services with the backends of the configuration.
    Serve {
        #[command(flatten)]
        listen: Listen,
        /// Services to run.
        #[arg(required = true)]
        services: Vec<ServiceName>,
    },
    /// Print a development token signed with the local HS256 key, and nothing else.
    Token {
        /// The tenant the token acts for.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A scope to grant; repeat for several. Default: every scope of every service.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The token's subject.
        #[arg(long, default_value = "developer")]
        subject: String,
        /// How long the token is valid, e.g. "1h" or "30d".
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The data directory holding the development key.
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Load and validate the configuration (file, then environment), print where it came from,
    /// and exit: non-zero, naming the key, if it is not valid.
    CheckConfig,
    /// Apply database migrations, then exit.
    Migrate {
        /// Services to migrate; default: all.
        services: Vec<ServiceName>,
    },
    /// Administration of the secret store.
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Create a new encryption key version and re-encrypt every secret under it.
    RotateEncryptionKey,
    /// Embedded store only: replace the master key and rewrap the data keys under the new one.
    RotateMasterKey,
}

#[derive(Debug, Args)]
struct Listen {
    /// gRPC listen address.
    #[arg(long, env = "SWITCHYARD_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl Listen {
    fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.grpc_addr {
            config.grpc_addr = addr;
        }
        if let Some(addr) = self.http_addr {
            config.http_addr = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    switchyard_kit::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let (mut config, ignored) = Config::load(cli.config.as_deref())?;
    switchyard_kit::telemetry::init_logging(&config.log).map_err(anyhow::Error::msg)?;
    // SWITCHYARD_CONFIG is the file's path (read by clap), not a key.
    let ignored: Vec<_> = ignored
        .into_iter()
        .filter(|name| name != "SWITCHYARD_CONFIG")
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(variables = ?ignored, "ignoring SWITCHYARD_* variables that name no configuration section");
    }
    match cli.command {
        Command::Up(listen) => {
            listen.apply(&mut config);
            switchyard::create_private_dir(&config.data_dir)?;
            let first_run = ensure_development_key(&mut config)?;
            let services: BTreeSet<ServiceName> = ServiceName::ALL.iter().copied().collect();
            let (grpc, http) = bind(&config).await?;
            println!("Switchyard is up (all-in-one).");
            println!("  gRPC  {}", grpc.local_addr()?);
            println!("  HTTP  http://{}", http.local_addr()?);
            println!("  data  {}", config.data_dir.display());
            if first_run {
                let token = mint(
                    &config,
                    "default",
                    "developer",
                    all_scopes(),
                    Duration::from_secs(30 * 24 * 3600),
                )?;
                println!("  development token (tenant \"default\", every scope, valid 30 days):");
                println!("    {token}");
            } else {
                println!("  mint a token with: switchyard token --tenant default");
            }
            switchyard::run(
                config,
                services,
                grpc,
                http,
                switchyard_kit::shutdown::on_signals(),
            )
            .await
        }
        Command::Serve { listen, services } => {
            listen.apply(&mut config);
            if config.database.url.is_none() {
                anyhow::bail!(
                    "`serve` needs database.url (SWITCHYARD_DATABASE__URL); use `up` for embedded storage"
                );
            }
            let (grpc, http) = bind(&config).await?;
            let services = services.into_iter().collect();
            switchyard::run(
                config,
                services,
                grpc,
                http,
                switchyard_kit::shutdown::on_signals(),
            )
            .await
        }
        Command::Token {
            tenant,
            scopes,
            subject,
            ttl,
            data_dir,
        } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            if config.auth.hs256_secret.is_none() {
                let (secret, _) = development_secret(&config.data_dir)?;
                config.auth.hs256_secret = Some(secret);
            }
            let scopes = if scopes.is_empty() {
                all_scopes()
            } else {
                scopes
            };
            println!("{}", mint(&config, &tenant, &subject, scopes, ttl)?);
            Ok(())
        }
        Command::CheckConfig => {
            config.validate()?;
            let source = cli.config.as_deref().map_or_else(
                || "defaults and environment".to_owned(),
                |path| format!("{} and environment", path.display()),
            );
            let backend = match config.secrets {
                SecretsConfig::Embedded(_) => "embedded",
                SecretsConfig::Vault(_) => "vault",
            };
            let database = if config.database.url.is_some() {
                "postgresql"
            } else {
                "sqlite"
            };
            println!("configuration is valid ({source}): database {database}, secrets {backend}");
            Ok(())
        }
        Command::Migrate { services } => {
            let services: BTreeSet<ServiceName> = if services.is_empty() {
                ServiceName::ALL.iter().copied().collect()
            } else {
                services.into_iter().collect()
            };
            switchyard::migrate(&config, &services).await
        }
        Command::Admin(Admin::RotateEncryptionKey) => {
            let secrets = switchyard::open_secrets(&config).await?;
            let rotation = secrets.rotate_key().await?;
            let report = secrets.rewrap().await?;
            println!(
                "key version {}; {} secrets re-encrypted, {} already current",
                rotation.new_version, report.rewrapped, report.already_current
            );
            Ok(())
        }
        Command::Admin(Admin::RotateMasterKey) => {
            let SecretsConfig::Embedded(embedded) = &config.secrets else {
                anyhow::bail!(
                    "rotate-master-key applies to the embedded secret store only; Vault keys rotate with rotate-encryption-key"
                );
            };
            let db = switchyard::open_db(&config, "secrets").await?;
            let store = EmbeddedSecretStore::open(embedded, db, &config.data_dir).await?;
            let rotation = store.rotate_master_key(None).await?;
            println!(
                "master key {} replaced by {}; {} data keys rewrapped",
                rotation.previous_fingerprint, rotation.fingerprint, rotation.data_keys_rewrapped
            );
            if let Some(key) = rotation.new_key {
                // The old key came from the environment: the operator must install the new one.
                println!(
                    "set SWITCHYARD_SECRETS__MASTER_KEY to this new key before the next start:"
                );
                println!("{}", key.expose_secret());
            }
            Ok(())
        }
    }
}

/// For `up`: the development HS256 key, created on first run unless one is configured.
fn ensure_development_key(config: &mut Config) -> anyhow::Result<bool> {
    if config.auth.hs256_secret.is_some() || config.auth.jwks_url.is_some() {
        return Ok(false);
    }
    let (secret, created) = development_secret(&config.data_dir)?;
    config.auth.hs256_secret = Some(secret);
    Ok(created)
}

async fn bind(
    config: &Config,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC to {}", config.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP to {}", config.http_addr))?;
    Ok((grpc, http))
}

fn all_scopes() -> Vec<String> {
    ServiceName::ALL
        .iter()
        .flat_map(|s| s.scopes().iter())
        .flat_map(|table| table.methods.iter().map(|(_, scope)| (*scope).to_owned()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn mint(
    config: &Config,
    tenant: &str,
    subject: &str,
    scopes: Vec<String>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let secret = config
        .auth
        .hs256_secret
        .as_ref()
        .context("no HS256 secret: set auth.hs256_secret or run `switchyard up` once")?;
    let token = switchyard_auth::mint(
        secret.expose_secret().as_bytes(),
        &TokenRequest {
            issuer: config.auth.issuer.clone(),
            audience: config.auth.audience.clone(),
            subject: subject.to_owned(),
            tenant: tenant.to_owned(),
            tenant_claim: config.auth.tenant_claim.clone(),
            scopes,
            ttl,
        },
    )?;
    Ok(token)
}
