//! The load generator, the same for every target: closed-loop workers, each with one request in
//! flight, issuing requests back to back, the latency of every successful request recorded in
//! HDR histograms (nanoseconds, 3 significant digits).
//!
//! - HTTP targets: one HTTP/1.1 keep-alive connection per worker (as `hey` and `wrk` do), TCP_NODELAY
//!   on, a raw hyper client connection (no pool, no retries). For streams, the time to the first
//!   token (the first streamed piece of the mock's answer) is recorded too.
//! - gRPC targets: a tonic client, `grpc_workers_per_connection` workers per HTTP/2 connection.
//!
//! Every response is checked (status, and the mock's answer in it); a failure is counted by
//! label and the run says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use switchyard_proto::ai::v1 as pb;
use switchyard_proto::ai::v1::ai_service_client::AiServiceClient;
use tokio::net::TcpStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::mock::{ANSWER, STREAM_PIECES};
use crate::procs;

/// Longest latency the histograms hold (longer ones are clamped to it).
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// Unary or streamed completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `stream: false` / `Complete`.
    Unary,
    /// `stream: true` / `StreamComplete`.
    Stream,
}

impl Mode {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Unary => "unary",
            Mode::Stream => "stream",
        }
    }
}

/// Where an HTTP target is and what each request carries.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The server.
    pub addr: SocketAddr,
    /// The request path, `/v1/chat/completions`.
    pub path: String,
    /// Headers besides Host, Content-Type and Content-Length (Authorization, Portkey's).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A gRPC target: Switchyard's `AiService`.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    /// The server.
    pub addr: SocketAddr,
    /// `Bearer <token>`.
    pub bearer: AsciiMetadataValue,
}

/// What a run sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST /v1/chat/completions` over HTTP/1.1.
    Http(HttpTarget),
    /// `switchyard.ai.v1.AiService/Complete` or `StreamComplete`.
    Grpc(GrpcTarget),
}

/// The request body every HTTP target gets, the same bytes for all.
pub fn request_body(mode: Mode) -> Bytes {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello to the benchmark."}
        ]
    });
    if mode == Mode::Stream {
        body["stream"] = serde_json::json!(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

/// The same request for gRPC.
pub fn grpc_request() -> pb::ChatRequest {
    let message = |role: pb::Role, text: &str| pb::Message {
        role: role as i32,
        parts: vec![pb::Part {
            kind: Some(pb::part::Kind::Text(text.to_owned())),
            cache_breakpoint: false,
        }],
        name: String::new(),
    };
    pb::ChatRequest {
        model: "gpt-4o-mini".to_owned(),
        messages: vec![
            message(pb::Role::System, "You are a terse assistant."),
            message(pb::Role::User, "Say hello to the benchmark."),
        ],
        ..Default::default()
    }
}

/// The timings of one successful request, from just before it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// To the end of the response.
    pub total: Duration,
    /// Streams: to the first token of the answer.
    pub first_token: Option<Duration>,
}

/// One worker's connection.
enum Client {
    Http {
        target: HttpTarget,
        body: Bytes,
        sender: Option<SendRequest<Full<Bytes>>>,
    },
    Grpc {
        client: AiServiceClient<Channel>,
        bearer: AsciiMetadataValue,
        // Boxed: a `ChatRequest` is far larger than the HTTP variant.
        chat: Box<pb::ChatRequest>,
    },
}

fn label(text: &str) -> String {
    text.to_owned()
}

async fn http_connect(target: &HttpTarget) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|_| label("CONNECT"))?;
    stream.set_nodelay(true).map_err(|_| label("CONNECT"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| label("HANDSHAKE"))?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the worker drops its sender.
        let _ = connection.await;
    });
    Ok(sender)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Client {
    async fn new(target: &Target, mode: Mode, channel: Option<Channel>) -> anyhow::Result<Client> {
        Ok(match target {
            Target::Http(target) => Client::Http {
                sender: Some(
                    http_connect(target)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .with_context(|| format!("connecting to {}", target.addr))?,
                ),
                target: target.clone(),
                body: request_body(mode),
            },
            Target::Grpc(target) => Client::Grpc {
                client: AiServiceClient::new(channel.context("a gRPC worker without a channel")?)
                    .max_decoding_message_size(16 * 1024 * 1024),
                bearer: target.bearer.clone(),
                chat: Box::new(grpc_request()),
            },
        })
    }

    /// Makes one request; `Err` is a label for the error table.
    async fn call(&mut self, mode: Mode) -> Result<Timing, String> {
        match self {
            Client::Http {
                target,
                body,
                sender,
            } => {
                let started = Instant::now();
                let mut connection = match sender.take() {
                    Some(connection) if !connection.is_closed() => connection,
                    _ => http_connect(target).await?,
                };
                // A keep-alive connection the server closed while it was idle (uvicorn does after
                // 5 s) is not a failed request: open a new one, as any HTTP client would.
                if connection.ready().await.is_err() {
                    connection = http_connect(target).await?;
                    connection.ready().await.map_err(|_| label("CLOSED"))?;
                }
                let mut request = Request::post(target.path.as_str())
                    .header(header::HOST, target.addr.to_string())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .map_err(|_| label("HARNESS"))?;
                for (name, value) in &target.headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
                let response = connection
                    .send_request(request)
                    .await
                    .map_err(|_| label("TRANSPORT"))?;
                let status = response.status();
                let mut body = response.into_body();
                let mut received = Vec::with_capacity(2048);
                let mut first_token = None;
                let marker = STREAM_PIECES[0].as_bytes();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|_| label("BODY"))?;
                    if let Some(data) = frame.data_ref()
                        && !data.is_empty()
                    {
                        received.extend_from_slice(data);
                        if first_token.is_none() && contains(&received, marker) {
                            first_token = Some(started.elapsed());
                        }
                    }
                }
                let total = started.elapsed();
                *sender = Some(connection);
                if !status.is_success() {
                    return Err(format!("HTTP {}", status.as_u16()));
                }
                let ok = match mode {
                    Mode::Unary => contains(&received, ANSWER.as_bytes()),
                    Mode::Stream => {
                        let last = STREAM_PIECES[STREAM_PIECES.len() - 1];
                        first_token.is_some()
                            && contains(&received, last.as_bytes())
                            && received.trim_ascii_end().ends_with(b"data: [DONE]")
                    }
                };
                if !ok {
                    return Err(label("BAD_RESPONSE"));
                }
                Ok(Timing {
                    total,
                    first_token: (mode == Mode::Stream).then_some(first_token).flatten(),
                })
            }
            Client::Grpc {
                client,
                bearer,
                chat,
            } => {
                let started = Instant::now();
                match mode {
                    Mode::Unary => {
                        let mut request = tonic::Request::new(pb::CompleteRequest {
                            chat: Some(chat.as_ref().clone()),
                        });
                        request
                            .metadata_mut()
                            .insert("authorization", bearer.clone());
                        let response = client
                            .complete(request)
                            .await
                            .map_err(|status| format!("{:?}", status.code()))?
                            .into_inner();
                        let total = started.elapsed();
                        let text = response
                            .response
                            .and_then(|r| r.message)
                            .map(|m| {
                                m.parts
                                    .into_iter()
                                    .filter_map(|p| match p.kind {
                                        Some(pb::part::Kind::Text(text)) => Some(text),
                                        _ => None,
                                    })
                                    .collect::<String>()
                            })
                            .unwrap_or_default();
                        if text != ANSWER {
                            return Err(label("BAD_RESPONSE"));
                        }
                        Ok(Timing {
                            total,
                            first_token: None,
                        })
                    }
                    Mode::Stream => {
                        let mut request = tonic::Request::new(pb::StreamCompleteRequest {
                            chat: Some(chat.as_ref().clone()),
                        });
                        request
                            .metadata_mut()
                            .insert("authorization", bearer.clone());
                        let mut stream = client
                            .stream_complete(request)
                            .await
                            .map_err(|status| format!("{:?}", status.code()))?
                            .into_inner();
                        let mut first_token = None;
                        let mut text = String::new();
                        let mut done = false;
                        while let Some(message) = stream
                            .message()
                            .await
                            .map_err(|status| format!("{:?}", status.code()))?
                        {
                            match message.event {
                                Some(pb::stream_complete_response::Event::Delta(delta)) => {
                                    if !delta.text.is_empty() {
                                        first_token.get_or_insert_with(|| started.elapsed());
                                    }
                                    text.push_str(&delta.text);
                                }
                                Some(pb::stream_complete_response::Event::Done(_)) => done = true,
                                None => {}
                            }
                        }
                        let total = started.elapsed();
                        if !done || text != STREAM_PIECES.concat() {
                            return Err(label("BAD_RESPONSE"));
                        }
                        Ok(Timing { total, first_token })
                    }
                }
            }
        }
    }
}

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workers, each with one request in flight at a time.
    pub concurrency: usize,
    /// gRPC: workers sharing one HTTP/2 connection.
    pub grpc_workers_per_connection: usize,
    /// Requests before this long are not recorded.
    pub warmup: Duration,
    /// How long requests are recorded.
    pub duration: Duration,
}

/// The processes whose CPU a run accounts for.
#[derive(Debug, Clone, Copy)]
pub struct Accounting {
    /// The gateway's pid (its tree is counted), none for direct runs.
    pub gateway: Option<u32>,
    /// The mock's pid.
    pub mock: u32,
    /// The mock's address, for its completion counter.
    pub mock_addr: SocketAddr,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measurement {
    /// Total latency of successful requests, in nanoseconds.
    pub total: Histogram<u64>,
    /// Streams: time to the first token.
    pub first_token: Histogram<u64>,
    /// Failed requests by label.
    pub errors: BTreeMap<String, u64>,
    /// The measured window.
    pub elapsed: Duration,
    /// Where the CPU time of the measured window went.
    pub cpu: Option<procs::Usage>,
    /// Completions the mock served during the measured window.
    pub upstream_calls: Option<u64>,
}

impl Measurement {
    /// Successful requests per second over the measured window.
    pub fn throughput(&self) -> f64 {
        self.total.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// CPU time of the gateway per successful request, in microseconds.
    pub fn gateway_us_per_request(&self) -> Option<f64> {
        let cpu = self.cpu?;
        let n = self.total.len();
        (n > 0).then(|| cpu.gateway_seconds * 1e6 / n as f64)
    }

    /// Upstream calls per successful request over the window (1.00 when each request made one).
    pub fn upstream_per_request(&self) -> Option<f64> {
        let n = self.total.len();
        (n > 0).then(|| self.upstream_calls.map(|c| c as f64 / n as f64))?
    }
}

/// A quantile of `histogram` in milliseconds, `None` when it is empty.
pub fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile) as f64 / 1e6)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    let high = u64::try_from(MAX_LATENCY.as_nanos()).unwrap_or(u64::MAX);
    Histogram::new_with_bounds(1, high, 3).context("creating a histogram")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Opens `count` HTTP/2 connections to `addr`.
pub async fn grpc_channels(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Makes one request on a new connection; for readiness checks and warming.
pub async fn call_once(target: &Target, mode: Mode) -> anyhow::Result<Timing> {
    let channel = match target {
        Target::Grpc(grpc) => grpc_channels(grpc.addr, 1).await?.pop(),
        Target::Http(_) => None,
    };
    let mut client = Client::new(target, mode, channel).await?;
    client
        .call(mode)
        .await
        .map_err(|label| anyhow::anyhow!("{label}"))
}

/// The number of completions the mock at `addr` has served.
pub async fn mock_served(addr: SocketAddr) -> anyhow::Result<u64> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/stats")
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body)?;
    stats["completions"]
        .as_u64()
        .context("the mock's /stats has no count")
}

/// Runs `mode` requests against `target` with `shape`, accounting CPU as `accounting` says.
pub async fn run(
    target: &Target,
    mode: Mode,
    shape: Shape,
    accounting: Accounting,
) -> anyhow::Result<Measurement> {
    let channels = match target {
        Target::Grpc(grpc) => {
            let count = shape
                .concurrency
                .div_ceil(shape.grpc_workers_per_connection.max(1))
                .max(1);
            grpc_channels(grpc.addr, count).await?
        }
        Target::Http(_) => Vec::new(),
    };
    let mut clients = Vec::with_capacity(shape.concurrency);
    for index in 0..shape.concurrency {
        let channel = (!channels.is_empty()).then(|| channels[index % channels.len()].clone());
        clients.push(Client::new(target, mode, channel).await?);
    }
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let until = measure_from + shape.duration;
    let mut workers = Vec::with_capacity(clients.len());
    for client in clients {
        workers.push(tokio::spawn(worker(client, mode, measure_from, until)));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let served_before = mock_served(accounting.mock_addr).await.ok();
    let before = procs::sample(accounting.gateway, accounting.mock);
    tokio::time::sleep_until(until.into()).await;
    let after = procs::sample(accounting.gateway, accounting.mock);
    let served_after = mock_served(accounting.mock_addr).await.ok();
    let mut measurement = Measurement {
        total: new_histogram()?,
        first_token: new_histogram()?,
        errors: BTreeMap::new(),
        elapsed: until - measure_from,
        cpu: procs::usage(before, after),
        upstream_calls: served_before
            .zip(served_after)
            .map(|(before, after)| after.saturating_sub(before)),
    };
    for worker in workers {
        let result = worker.await.context("a worker panicked")??;
        measurement.total.add(&result.total)?;
        measurement.first_token.add(&result.first_token)?;
        for (label, count) in result.errors {
            *measurement.errors.entry(label).or_insert(0) += count;
        }
    }
    Ok(measurement)
}

struct WorkerResult {
    total: Histogram<u64>,
    first_token: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

async fn worker(
    mut client: Client,
    mode: Mode,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<WorkerResult> {
    let mut result = WorkerResult {
        total: new_histogram()?,
        first_token: new_histogram()?,
        errors: BTreeMap::new(),
    };
    loop {
        let began = Instant::now();
        if began >= until {
            break;
        }
        let outcome = client.call(mode).await;
        if began < measure_from {
            continue;
        }
        match outcome {
            Ok(timing) => {
                result.total.saturating_record(nanos(timing.total));
                if let Some(first_token) = timing.first_token {
                    result.first_token.saturating_record(nanos(first_token));
                }
            }
            Err(label) => {
                *result.errors.entry(label).or_insert(0) += 1;
                // A failing target should not be hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    Ok(result)
}
