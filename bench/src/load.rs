//! The load generator: closed-loop workers, each issuing one RPC after the other over a small pool
//! of HTTP/2 channels, recording the latency of every successful request in an HDR histogram.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use switchyard_proto::credentials::v1 as pb;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cpu;
use crate::hello::HelloRequest;
use crate::hello::greeter_client::GreeterClient;

/// Longest latency the histograms hold (longer ones are clamped to it).
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// The RPC a scenario repeats.
#[derive(Debug, Clone)]
pub enum Call {
    /// `grpc.health.v1.Health/Check` for the whole server (`service: ""`), without a token.
    Health,
    /// `helloworld.Greeter/SayHello` with a short name.
    Hello,
    /// `CredentialService/AccessCredential` of `name`, whose material must be `expected`.
    Access {
        /// `credentials/{id}`.
        name: String,
        /// The material created before the run.
        expected: Vec<u8>,
        /// `Bearer <token>` of each tenant; worker `i` sends the `i % len`-th.
        bearers: Vec<AsciiMetadataValue>,
    },
    /// `CredentialService/GetCredential` of `name` (metadata only, read-only, same token).
    Get {
        /// `credentials/{id}`.
        name: String,
        /// `Bearer <token>` of each tenant; worker `i` sends the `i % len`-th.
        bearers: Vec<AsciiMetadataValue>,
    },
}

impl Call {
    /// The bearer metadata value of `token`.
    pub fn bearer(token: &str) -> anyhow::Result<AsciiMetadataValue> {
        MetadataValue::try_from(format!("Bearer {token}"))
            .context("the token is not a valid metadata value")
    }
}

/// A [`Call`] bound to a channel.
enum Client {
    Health(HealthClient<Channel>),
    Hello(GreeterClient<Channel>),
    Credentials(CredentialServiceClient<Channel>, AsciiMetadataValue),
}

impl Client {
    /// The client of worker `worker`.
    fn new(call: &Call, channel: Channel, worker: usize) -> anyhow::Result<Client> {
        Ok(match call {
            Call::Health => Client::Health(HealthClient::new(channel)),
            Call::Hello => Client::Hello(GreeterClient::new(channel)),
            Call::Access { bearers, .. } | Call::Get { bearers, .. } => {
                let bearer = bearers
                    .get(worker % bearers.len().max(1))
                    .context("a credentials call without a token")?
                    .clone();
                Client::Credentials(CredentialServiceClient::new(channel), bearer)
            }
        })
    }

    /// Makes one call; `Err` is a label for the error table (a gRPC code name, or `BAD_RESPONSE`
    /// for an answer that is not what the scenario expects).
    async fn call(&mut self, call: &Call) -> Result<(), String> {
        match (self, call) {
            (Client::Health(client), Call::Health) => {
                let status = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|status| code_label(&status))?
                    .into_inner()
                    .status;
                expect(status == ServingStatus::Serving as i32)
            }
            (Client::Hello(client), Call::Hello) => {
                let reply = client
                    .say_hello(HelloRequest {
                        name: "bench".to_owned(),
                    })
                    .await
                    .map_err(|status| code_label(&status))?
                    .into_inner();
                expect(reply.message == "Hello bench!")
            }
            (Client::Credentials(client, bearer), Call::Access { name, expected, .. }) => {
                let mut request =
                    tonic::Request::new(pb::AccessCredentialRequest { name: name.clone() });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                let response = client
                    .access_credential(request)
                    .await
                    .map_err(|status| code_label(&status))?
                    .into_inner();
                expect(response.payload.is_some_and(|p| &p.data == expected))
            }
            (Client::Credentials(client, bearer), Call::Get { name, .. }) => {
                let mut request =
                    tonic::Request::new(pb::GetCredentialRequest { name: name.clone() });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                let response = client
                    .get_credential(request)
                    .await
                    .map_err(|status| code_label(&status))?
                    .into_inner();
                expect(response.credential.is_some_and(|c| &c.name == name))
            }
            _ => Err("HARNESS_MISMATCH".to_owned()),
        }
    }
}

fn expect(ok: bool) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err("BAD_RESPONSE".to_owned())
    }
}

fn code_label(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workers, each with one request in flight at a time.
    pub concurrency: usize,
    /// Workers sharing one HTTP/2 channel (connection).
    pub workers_per_channel: usize,
    /// Requests before this long are not recorded.
    pub warmup: Duration,
    /// How long requests are recorded.
    pub duration: Duration,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measurement {
    /// Latencies of successful requests, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Failed requests by label.
    pub errors: BTreeMap<String, u64>,
    /// The measured window.
    pub elapsed: Duration,
    /// HTTP/2 connections used.
    pub channels: usize,
    /// Where the CPU time of the measured window went (Linux only).
    pub cpu: Option<cpu::Usage>,
}

impl Measurement {
    /// Successful requests per second over the measured window.
    pub fn throughput(&self) -> f64 {
        self.histogram.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A latency quantile in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1e6
    }

    /// The largest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.histogram.max() as f64 / 1e6
    }

    /// The servers' CPU time per successful request, in microseconds.
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        let requests = self.histogram.len();
        let cpu = self.cpu?;
        (requests > 0).then(|| cpu.server_seconds * 1e6 / requests as f64)
    }

    /// The mean latency in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        self.histogram.mean() / 1e6
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    let high = u64::try_from(MAX_LATENCY.as_nanos()).unwrap_or(u64::MAX);
    Histogram::new_with_bounds(1, high, 3).context("creating a histogram")
}

/// Opens `count` HTTP/2 connections to `addr`.
pub async fn connect(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Makes one call of `call` on a new connection, for set-up and readiness checks.
pub async fn call_once(addr: SocketAddr, call: &Call) -> anyhow::Result<()> {
    let channel = connect(addr, 1).await?.pop().context("no channel opened")?;
    Client::new(call, channel, 0)?
        .call(call)
        .await
        .map_err(|label| anyhow::anyhow!("{label}"))
}

/// Runs `call` against `addr` with `shape`: `shape.concurrency` closed-loop workers for the warm-up
/// and then the measured duration, on new connections.
pub async fn run(addr: SocketAddr, call: &Call, shape: Shape) -> anyhow::Result<Measurement> {
    let count = shape
        .concurrency
        .div_ceil(shape.workers_per_channel.max(1))
        .max(1);
    let channels = connect(addr, count).await?;
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let until = measure_from + shape.duration;
    let mut workers = Vec::with_capacity(shape.concurrency);
    for index in 0..shape.concurrency {
        let client = Client::new(call, channels[index % count].clone(), index)?;
        let call = call.clone();
        workers.push(tokio::spawn(worker(client, call, measure_from, until)));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let before = cpu::sample();
    tokio::time::sleep_until(until.into()).await;
    let after = cpu::sample();
    let mut histogram = new_histogram()?;
    let mut errors = BTreeMap::new();
    for worker in workers {
        let (worker_histogram, worker_errors) = worker.await.context("a worker panicked")??;
        histogram
            .add(&worker_histogram)
            .context("merging histograms")?;
        for (label, count) in worker_errors {
            *errors.entry(label).or_insert(0) += count;
        }
    }
    Ok(Measurement {
        histogram,
        errors,
        elapsed: until - measure_from,
        channels: count,
        cpu: cpu::usage(before, after),
    })
}

type WorkerResult = anyhow::Result<(Histogram<u64>, BTreeMap<String, u64>)>;

async fn worker(
    mut client: Client,
    call: Call,
    measure_from: Instant,
    until: Instant,
) -> WorkerResult {
    let mut histogram = new_histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let began = Instant::now();
        if began >= until {
            break;
        }
        let outcome = client.call(&call).await;
        let latency = began.elapsed();
        if began < measure_from {
            continue;
        }
        match outcome {
            Ok(()) => {
                let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                histogram.saturating_record(nanos.max(1));
            }
            Err(label) => *errors.entry(label).or_insert(0) += 1,
        }
    }
    Ok((histogram, errors))
}
