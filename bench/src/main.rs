//! `switchyard-bench`: Switchyard's gRPC path measured against a bare tonic hello-world server,
//! on the same machine, in the same run.
//!
//! One process hosts the servers under test on a runtime of their own and drives them from a
//! second runtime with closed-loop tonic clients over HTTP/2 (see docs/benchmarks.md):
//!
//! - `health/bare-tonic`, `hello/bare-tonic`: the floor, a tonic server with no layer at all;
//! - `health/switchyard`: the same health check through Switchyard's layers (observe, shed,
//!   deadline, auth; public, so no token is verified);
//! - `get/switchyard-*`: GetCredential, read-only, with a verified bearer token;
//! - `access/switchyard-*`: AccessCredential (warm), which also decrypts the material and appends
//!   to the audit log in a write transaction.
//!
//! It prints a Markdown report (or JSON with `--json`). It asserts nothing about timings.

#![allow(clippy::print_stdout)]

mod cpu;
mod load;
mod machine;
mod procstat;
mod report;
mod servers;

/// The generated code of `proto/helloworld.proto`.
mod hello {
    #![allow(clippy::all, missing_debug_implementations, unused_qualifications)]
    tonic::include_proto!("helloworld");
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_auth::TokenRequest;
use switchyard_proto::credentials::v1 as pb;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tokio::runtime::Handle;

use crate::load::{Call, Shape};
use crate::report::{Report, Row};
use crate::servers::{Running, Store};

/// The PostgreSQL server tried when `--postgres` is not given.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The credential every Switchyard scenario reads.
const CREDENTIAL_ID: &str = "bench-api-key";

/// Its material: a 40-byte API key.
const API_KEY: &[u8; 40] = b"sk-bench-0123456789abcdefghijklmnopqrstu";

/// Measures Switchyard's gRPC path against a bare tonic server, in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// How long each run is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each run goes before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrency levels (closed-loop workers), comma-separated; each scenario runs at each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Workers sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 16)]
    workers_per_connection: usize,
    /// Only the scenarios whose name contains one of these strings (comma-separated).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// PostgreSQL for the `-postgres` scenarios. Without it, the local test server is used if it
    /// answers, and the scenarios are skipped (with a note) if it does not.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Skip the PostgreSQL scenarios.
    #[arg(long, conflicts_with = "postgres")]
    no_postgres: bool,
    /// Worker threads of the servers' runtime (default: one per CPU).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Worker threads of the load generator's runtime (default: one per CPU).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Where the temporary data directories go (default: the system's temporary directory).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Experiment: serve the bare tonic baseline without TCP_NODELAY (tonic's default is on).
    #[arg(long)]
    bare_without_nodelay: bool,
    /// Experiment: set TCP_NODELAY on Switchyard's gRPC listening socket, which Linux passes on to
    /// the connections it accepts (as shipped, they keep Nagle's algorithm on).
    #[arg(long)]
    switchyard_listener_nodelay: bool,
    /// Experiment: spread the credentials workers over this many tenants (each with its own
    /// token and credential), to see what the per-tenant audit chain serializes.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let server_threads = cli.server_threads.unwrap_or(cpus).max(1);
    let client_threads = cli.client_threads.unwrap_or(cpus).max(1);
    let runtimes = build_runtime(cpu::SERVER_THREADS, server_threads)
        .and_then(|server| Ok((server, build_runtime(cpu::CLIENT_THREADS, client_threads)?)));
    let (server_runtime, client_runtime) = match runtimes {
        Ok(runtimes) => runtimes,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let threads = (server_threads, client_threads);
    let outcome = client_runtime.block_on(execute(cli, server_runtime.handle().clone(), threads));
    server_runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(report) if report.error_count() > 0 => {
            eprintln!(
                "error: {} requests failed; the figures above are not valid",
                report.error_count()
            );
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_runtime(name: &str, threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// One scenario: an RPC against one server.
#[derive(Debug)]
struct Scenario {
    name: String,
    addr: SocketAddr,
    call: Call,
}

/// A Switchyard under test.
struct Installation {
    label: &'static str,
    server: Running,
    _data_dir: tempfile::TempDir,
    schema_prefix: Option<(String, String)>,
}

async fn execute(cli: Cli, server_rt: Handle, threads: (usize, usize)) -> anyhow::Result<Report> {
    if cli.concurrency.is_empty() || cli.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1");
    }
    // Warnings only: the servers' access log (one INFO line per RPC) is off, as with
    // `log.level = "warn"`; RUST_LOG overrides it.
    let log = switchyard_kit::telemetry::LogConfig {
        level: "warn".to_owned(),
        ..Default::default()
    };
    switchyard_kit::telemetry::init_logging(&log).map_err(anyhow::Error::msg)?;
    switchyard_kit::tls::install_crypto_provider();

    let mut notes = Vec::new();
    if cli.bare_without_nodelay {
        notes.push("EXPERIMENT: the bare tonic server runs without TCP_NODELAY".to_owned());
    }
    if cli.tenants > 1 {
        notes.push(format!(
            "EXPERIMENT: get/access workers are spread over {} tenants (worker i uses tenant i mod {})",
            cli.tenants, cli.tenants
        ));
    }
    if cli.switchyard_listener_nodelay {
        notes.push(
            "EXPERIMENT: Switchyard's gRPC connections have TCP_NODELAY (set on the listener)"
                .to_owned(),
        );
    }
    let postgres = match (&cli.postgres, cli.no_postgres) {
        (_, true) => None,
        (Some(url), false) => {
            if !servers::postgres_answers(url).await {
                bail!("PostgreSQL does not answer at the --postgres URL");
            }
            Some(url.clone())
        }
        (None, false) => {
            if servers::postgres_answers(DEFAULT_POSTGRES_URL).await {
                Some(DEFAULT_POSTGRES_URL.to_owned())
            } else {
                let note = format!(
                    "PostgreSQL scenarios skipped: nothing answered at {DEFAULT_POSTGRES_URL}"
                );
                eprintln!("note: {note}");
                notes.push(note);
                None
            }
        }
    };

    eprintln!("starting the servers");
    let bare = server_rt
        .spawn(servers::start_bare(!cli.bare_without_nodelay))
        .await
        .context("starting the bare tonic server")??;
    let bare = wait_ready(bare).await?;

    let mut installations = Vec::new();
    installations.push(start_installation(&cli, &server_rt, "sqlite", Store::Sqlite).await?);
    if let Some(url) = &postgres {
        let schema_prefix = format!("bench_{}_", std::process::id());
        let store = Store::Postgres {
            url: url.clone(),
            schema_prefix: schema_prefix.clone(),
        };
        let mut installation = start_installation(&cli, &server_rt, "postgres", store).await;
        if let Ok(installation) = &mut installation {
            installation.schema_prefix = Some((url.clone(), schema_prefix.clone()));
        } else if let Err(err) = servers::drop_schemas(url, &schema_prefix).await {
            eprintln!("warning: dropping the schemas {schema_prefix}*: {err:#}");
        }
        installations.push(installation?);
    }

    let outcome = measure(&cli, bare.addr, &installations, threads, notes).await;

    eprintln!("stopping the servers");
    bare.stop().await?;
    for installation in installations {
        installation.server.stop().await?;
        if let Some((url, prefix)) = installation.schema_prefix {
            servers::drop_schemas(&url, &prefix)
                .await
                .with_context(|| format!("dropping the schemas {prefix}*"))?;
        }
    }
    outcome
}

async fn measure(
    cli: &Cli,
    bare: SocketAddr,
    installations: &[Installation],
    threads: (usize, usize),
    notes: Vec<String>,
) -> anyhow::Result<Report> {
    let tokens = (0..cli.tenants.max(1))
        .map(|index| mint_token(&tenant_name(index)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bearers = tokens
        .iter()
        .map(|token| Call::bearer(token))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = format!("credentials/{CREDENTIAL_ID}");
    let mut scenarios = vec![
        Scenario {
            name: "health/bare-tonic".to_owned(),
            addr: bare,
            call: Call::Health,
        },
        Scenario {
            name: "hello/bare-tonic".to_owned(),
            addr: bare,
            call: Call::Hello,
        },
    ];
    if let Some(first) = installations.first() {
        scenarios.push(Scenario {
            name: "health/switchyard".to_owned(),
            addr: first.server.addr,
            call: Call::Health,
        });
    }
    for installation in installations {
        for token in &tokens {
            prepare(installation.server.addr, token)
                .await
                .with_context(|| format!("preparing the {} installation", installation.label))?;
        }
        scenarios.push(Scenario {
            name: format!("get/switchyard-{}", installation.label),
            addr: installation.server.addr,
            call: Call::Get {
                name: name.clone(),
                bearers: bearers.clone(),
            },
        });
        scenarios.push(Scenario {
            name: format!("access/switchyard-{}", installation.label),
            addr: installation.server.addr,
            call: Call::Access {
                name: name.clone(),
                expected: API_KEY.to_vec(),
                bearers: bearers.clone(),
            },
        });
    }
    scenarios
        .retain(|s| cli.scenario.is_empty() || cli.scenario.iter().any(|f| s.name.contains(f)));
    if scenarios.is_empty() {
        bail!("no scenario matches --scenario");
    }

    let jwt_verify = jwt_verify_cost(&tokens[0]).await?;
    let mut report = Report::new(cli, threads, notes, jwt_verify);
    report.print_header(cli.json);
    for scenario in &scenarios {
        for &concurrency in &cli.concurrency {
            let shape = Shape {
                concurrency,
                workers_per_channel: cli.workers_per_connection,
                warmup: cli.warmup,
                duration: cli.duration,
            };
            eprintln!(
                "running {} at concurrency {concurrency} ({:?} warm-up, {:?} measured)",
                scenario.name, cli.warmup, cli.duration
            );
            let measurement = load::run(scenario.addr, &scenario.call, shape)
                .await
                .with_context(|| format!("running {}", scenario.name))?;
            let row = Row::new(&scenario.name, concurrency, measurement);
            row.print_progress();
            report.rows.push(row);
        }
    }
    report.print(cli.json)?;
    Ok(report)
}

async fn start_installation(
    cli: &Cli,
    server_rt: &Handle,
    label: &'static str,
    store: Store,
) -> anyhow::Result<Installation> {
    let data_dir = match &cli.tmp_dir {
        Some(parent) => tempfile::Builder::new()
            .prefix("switchyard-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new()
            .prefix("switchyard-bench-")
            .tempdir(),
    }
    .context("creating a temporary data directory")?;
    let config = servers::switchyard_config(data_dir.path(), &store);
    let server = server_rt
        .spawn(servers::start_switchyard(
            config,
            cli.switchyard_listener_nodelay,
        ))
        .await
        .with_context(|| format!("starting Switchyard ({label})"))??;
    let server = wait_ready(server)
        .await
        .with_context(|| format!("starting Switchyard ({label})"))?;
    Ok(Installation {
        label,
        server,
        _data_dir: data_dir,
        schema_prefix: None,
    })
}

/// Waits until `server` answers a health check.
async fn wait_ready(server: Running) -> anyhow::Result<Running> {
    let mut last_error = None;
    for _ in 0..400 {
        if server.is_finished() {
            return Err(server.failure().await);
        }
        match load::call_once(server.addr, &Call::Health).await {
            Ok(()) => return Ok(server),
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no answer")))
        .context("the server did not become ready within 10 s")
}

/// The mean time of one `Verifier::verify` of `token` (HS256), the check every authenticated RPC
/// makes, measured in this task before the runs.
async fn jwt_verify_cost(token: &str) -> anyhow::Result<Duration> {
    const ROUNDS: u32 = 20_000;
    let config = switchyard_auth::AuthConfig {
        hs256_secret: Some(secrecy::SecretString::from(servers::SECRET)),
        ..Default::default()
    };
    let verifier = switchyard_auth::Verifier::new(&config).context("building a verifier")?;
    for _ in 0..ROUNDS / 10 {
        verifier
            .verify(token)
            .await
            .context("verifying the token")?;
    }
    let start = std::time::Instant::now();
    for _ in 0..ROUNDS {
        verifier
            .verify(token)
            .await
            .context("verifying the token")?;
    }
    Ok(start.elapsed() / ROUNDS)
}

/// The name of the `index`-th tenant: `bench`, then `bench-1`, `bench-2`...
fn tenant_name(index: usize) -> String {
    if index == 0 {
        "bench".to_owned()
    } else {
        format!("bench-{index}")
    }
}

/// A token of `tenant` with the scopes the scenarios need.
fn mint_token(tenant: &str) -> anyhow::Result<String> {
    let defaults = switchyard_auth::AuthConfig::default();
    switchyard_auth::mint(
        servers::SECRET.as_bytes(),
        &TokenRequest {
            issuer: defaults.issuer,
            audience: defaults.audience,
            subject: "bench".to_owned(),
            tenant: tenant.to_owned(),
            tenant_claim: defaults.tenant_claim,
            scopes: [
                "credentials.write",
                "credentials.access",
                "credentials.read",
            ]
            .map(str::to_owned)
            .to_vec(),
            ttl: Duration::from_secs(3600),
        },
    )
    .context("minting the benchmark token")
}

/// Creates the credential the scenarios read, then accesses and reads it once so that every
/// cache and pool is warm.
async fn prepare(addr: SocketAddr, token: &str) -> anyhow::Result<()> {
    let bearer = Call::bearer(token)?;
    let channel = load::connect(addr, 1)
        .await?
        .pop()
        .context("no channel opened")?;
    let mut client = CredentialServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::CreateCredentialRequest {
        credential_id: CREDENTIAL_ID.to_owned(),
        credential: Some(pb::Credential {
            display_name: "benchmark API key".to_owned(),
            kind: pb::CredentialKind::ApiKey as i32,
            provider: "bench".to_owned(),
            ..Default::default()
        }),
        payload: Some(pb::SecretPayload {
            data: API_KEY.to_vec(),
        }),
        request_id: String::new(),
    });
    request.metadata_mut().insert("authorization", bearer);
    client
        .create_credential(request)
        .await
        .context("CreateCredential")?;
    let name = format!("credentials/{CREDENTIAL_ID}");
    load::call_once(
        addr,
        &Call::Access {
            name: name.clone(),
            expected: API_KEY.to_vec(),
            bearers: vec![Call::bearer(token)?],
        },
    )
    .await
    .context("AccessCredential")?;
    load::call_once(
        addr,
        &Call::Get {
            name,
            bearers: vec![Call::bearer(token)?],
        },
    )
    .await
    .context("GetCredential")?;
    Ok(())
}
