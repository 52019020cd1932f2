//! `webhook-bench`: how many signed webhooks Switchyard's receiver verifies and durably commits
//! per second, and how long a sender waits for its acknowledgement (docs/benchmarks.md,
//! "Webhook ingest").
//!
//! It starts the release `switchyard up` as a user would (SQLite, or PostgreSQL with
//! `--backend postgres`), stores a GitHub webhook secret in the credentials service, creates a
//! GitHub endpoint, and runs closed-loop senders, each on its own HTTP/1.1 keep-alive connection,
//! posting `push` payloads signed as GitHub signs them (`X-Hub-Signature-256`), each with a new
//! delivery id. Every answer must be a 200; afterwards the event log is read back and must hold
//! exactly one event per acknowledged delivery. It prints a Markdown report on standard output.

#![allow(clippy::print_stdout)]

#[path = "../harness.rs"]
mod harness;
#[path = "../machine.rs"]
mod machine;
#[path = "../process.rs"]
mod process;
#[path = "../procstat.rs"]
mod procstat;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use switchyard_proto::credentials::v1 as cred;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use switchyard_proto::events::v1 as pb;
use switchyard_proto::events::v1::event_service_client::EventServiceClient;

use crate::harness::Switchyard;
use crate::machine::Machine;

const SECRET: &str = "webhook-bench-hs256-secret-0123456789abcdef";
const HOOK_SECRET: &str = "webhook-bench-github-secret";

#[derive(Debug, Parser)]
#[command(about = "Webhook ingest: verified and durably committed events per second")]
struct Cli {
    /// How long each run is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each run goes before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent senders (closed loop), comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Record stores: sqlite (the all-in-one default), postgres (needs --postgres-url).
    #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
    backends: Vec<String>,
    /// The PostgreSQL server for the postgres backend; each run gets fresh schemas.
    #[arg(
        long,
        env = "SWITCHYARD_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// The payload's size in bytes (a GitHub push is a few kilobytes).
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    /// The `switchyard` binary [default: `switchyard` beside this program].
    #[arg(long, env = "WEBHOOK_BENCH_SWITCHYARD")]
    switchyard_bin: Option<PathBuf>,
}

#[derive(Debug)]
struct Row {
    backend: String,
    concurrency: usize,
    seconds: f64,
    errors: u64,
    /// Latencies of the posts sent in the measured window, all acknowledged.
    latency: Histogram<u64>,
    /// Acknowledged in the warm-up: stored, not measured.
    warmup_acknowledged: u64,
    cpu_seconds: f64,
}

fn main() -> ExitCode {
    harness::main(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let switchyard = harness::switchyard_binary(cli.switchyard_bin.as_ref())?;
    eprintln!(
        "machine: {} CPUs ({}), {}; harness build: {}",
        machine.cpus, machine.cpu_model, machine.kernel, machine.profile
    );
    let mut rows = Vec::new();
    for backend in &cli.backends {
        let server = Server::start(&switchyard, backend, &cli.postgres_url).await?;
        let path = server.endpoint().await?;
        let mut acknowledged = 0;
        for &concurrency in &cli.concurrency {
            eprintln!("running {backend} at concurrency {concurrency}");
            let row = measure(&cli, &server, &path, backend, concurrency).await?;
            eprintln!(
                "  {:.0} events/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
                row.events_per_second(),
                quantile_ms(&row.latency, 0.5),
                quantile_ms(&row.latency, 0.99),
                row.errors
            );
            if row.errors > 0 {
                bail!(
                    "{} requests failed at concurrency {concurrency}",
                    row.errors
                );
            }
            acknowledged += row.total_acknowledged();
            rows.push(row);
        }
        let stored = server.stored_events().await?;
        eprintln!("{backend}: {acknowledged} acknowledged, {stored} in the event log");
        if stored != acknowledged {
            bail!("{backend}: {acknowledged} deliveries acknowledged but {stored} events stored");
        }
        server.up.process.stop().await;
    }
    report(&machine, &cli, &rows);
    Ok(())
}

impl Row {
    /// Everything acknowledged, warm-up included: what the event log must hold.
    fn total_acknowledged(&self) -> u64 {
        self.latency.len() + self.warmup_acknowledged
    }

    fn events_per_second(&self) -> f64 {
        self.latency.len() as f64 / self.seconds
    }
}

struct Server {
    up: Switchyard,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(binary: &Path, backend: &str, postgres_url: &str) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("webhook-bench-")
            .tempdir()?;
        let database = match backend {
            "sqlite" => String::new(),
            "postgres" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                // The swtest_<seconds>_ prefix lets the test suite drop what a run leaves behind.
                format!(
                    "\n[database]\nurl = \"{postgres_url}\"\nschema_prefix = \"swtest_{now}_whbench_{}_\"\n",
                    std::process::id()
                )
            }
            other => bail!("unknown backend {other:?}: sqlite or postgres"),
        };
        let up = harness::start_switchyard(binary, dir.path(), SECRET, &database).await?;
        Ok(Server { up, _dir: dir })
    }

    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(
            tonic::transport::Channel::from_shared(format!("http://{}", self.up.grpc))?
                .connect()
                .await?,
        )
    }

    /// Stores the GitHub secret and creates the endpoint; returns its path.
    async fn endpoint(&self) -> anyhow::Result<String> {
        let admin = token(&["credentials.*", "events.*"])?;
        CredentialServiceClient::new(self.channel().await?)
            .create_credential(harness::authorized(
                cred::CreateCredentialRequest {
                    credential_id: "github-hook".into(),
                    credential: Some(cred::Credential {
                        kind: cred::CredentialKind::Generic as i32,
                        ..Default::default()
                    }),
                    payload: Some(cred::SecretPayload {
                        data: HOOK_SECRET.as_bytes().to_vec(),
                    }),
                    request_id: String::new(),
                },
                &admin,
            )?)
            .await
            .context("storing the webhook secret")?;
        let endpoint = EventServiceClient::new(self.channel().await?)
            .create_inbound_endpoint(harness::authorized(
                pb::CreateInboundEndpointRequest {
                    endpoint: Some(pb::InboundEndpoint {
                        source: pb::Source::Github as i32,
                        credential: "credentials/github-hook".into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
                &admin,
            )?)
            .await
            .context("creating the endpoint")?
            .into_inner()
            .endpoint
            .context("no endpoint")?;
        Ok(endpoint.url_path)
    }

    /// Counts the event log, paging through it.
    async fn stored_events(&self) -> anyhow::Result<u64> {
        let reader = token(&["events.read"])?;
        let mut client = EventServiceClient::new(self.channel().await?);
        let mut ids = HashSet::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_events(harness::authorized(
                    pb::ListEventsRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                    &reader,
                )?)
                .await?
                .into_inner();
            for event in page.events {
                if !ids.insert(event.delivery_id.clone()) {
                    bail!("delivery {} stored twice", event.delivery_id);
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(ids.len() as u64);
            }
            page_token = page.next_page_token;
        }
    }
}

fn token(scopes: &[&str]) -> anyhow::Result<String> {
    harness::token(SECRET, "webhook-bench", scopes)
}

/// A GitHub `push` payload of about `size` bytes, unique to `delivery`.
fn payload(delivery: &str, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"ref":"refs/heads/main","after":"{delivery}","repository":{{"full_name":"bench/app"}},"commits":[{{"message":""#
    );
    let tail = r#""}]}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', fill));
    body.extend_from_slice(tail.as_bytes());
    body
}

fn sign(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

struct Outcome {
    /// Latencies of acknowledged posts sent after the warm-up.
    latency: Histogram<u64>,
    /// Acknowledged during the warm-up (stored, not measured).
    warmup_acknowledged: u64,
    errors: u64,
}

async fn sender(
    http: SocketAddr,
    path: String,
    worker: usize,
    label: String,
    body_bytes: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let mut connection = harness::connect_http1(http).await?;
    let mut outcome = Outcome {
        latency: Histogram::new(3)?,
        warmup_acknowledged: 0,
        errors: 0,
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let delivery = format!("{label}-{worker}-{n}");
        let body = payload(&delivery, body_bytes);
        let request = http::Request::post(&path)
            .header(http::header::HOST, http.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", &delivery)
            .header("x-hub-signature-256", sign(&body))
            .body(Full::new(Bytes::from(body)))?;
        let measured = measuring.load(Ordering::Relaxed);
        let started = Instant::now();
        let response = connection.send_request(request).await;
        let ok = match response {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                status.is_success()
            }
            Err(_) => {
                connection = harness::connect_http1(http).await?;
                false
            }
        };
        let elapsed = started.elapsed();
        match (ok, measured) {
            (false, _) => outcome.errors += 1,
            (true, true) => outcome
                .latency
                .record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))?,
            (true, false) => outcome.warmup_acknowledged += 1,
        }
    }
    Ok(outcome)
}

async fn measure(
    cli: &Cli,
    server: &Server,
    path: &str,
    backend: &str,
    concurrency: usize,
) -> anyhow::Result<Row> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let label = format!("{backend}-c{concurrency}");
    let senders: Vec<_> = (0..concurrency)
        .map(|worker| {
            tokio::spawn(sender(
                server.up.http,
                path.to_owned(),
                worker,
                label.clone(),
                cli.body_bytes,
                measuring.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(cli.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = harness::cpu_seconds(server.up.process.pid);
    let started = Instant::now();
    tokio::time::sleep(cli.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = harness::cpu_seconds(server.up.process.pid) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::new(3)?;
    let mut errors = 0;
    let mut warmup_acknowledged = 0;
    for sender in senders {
        let outcome = sender.await??;
        latency.add(&outcome.latency)?;
        errors += outcome.errors;
        warmup_acknowledged += outcome.warmup_acknowledged;
    }
    Ok(Row {
        backend: backend.to_owned(),
        concurrency,
        seconds,
        errors,
        latency,
        warmup_acknowledged,
        cpu_seconds,
    })
}

fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e6
}

fn report(machine: &Machine, cli: &Cli, rows: &[Row]) {
    println!(
        "Webhook ingest, run of {} on {} CPUs ({}), {}, {}; harness build: {}, {}.\n",
        machine.date,
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.profile,
        machine.rustc
    );
    println!(
        "{} s measured after {} s of warm-up per row; GitHub `push` payloads of {} bytes signed with X-Hub-Signature-256, each with a new delivery id.\n",
        cli.duration.as_secs_f64(),
        cli.warmup.as_secs_f64(),
        cli.body_bytes
    );
    println!(
        "| store | concurrency | events/s | p50 ms | p90 ms | p99 ms | max ms | CPU µs/event | errors |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let events = row.latency.len().max(1) as f64;
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
            row.backend,
            row.concurrency,
            row.events_per_second(),
            quantile_ms(&row.latency, 0.5),
            quantile_ms(&row.latency, 0.9),
            quantile_ms(&row.latency, 0.99),
            row.latency.max() as f64 / 1e6,
            row.cpu_seconds * 1e6 / events,
            row.errors
        );
    }
}
