//! The mock upstream: a small hyper server that answers `POST …/chat/completions` with a fixed,
//! valid OpenAI `chat.completion` (or, for `"stream": true`, a fixed short `text/event-stream`
//! of `chat.completion.chunk` events ended by `data: [DONE]`), with TCP_NODELAY on every
//! connection and keep-alive, so that it costs a few microseconds of CPU per request and is never
//! the bottleneck. Every body is built once, at start-up.
//!
//! It checks the bearer key (so a gateway that does not forward the configured key fails
//! loudly) and counts the completions it served; `GET /stats` returns the count, which the
//! harness compares with the requests the load generator saw succeed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// The API key every gateway is configured to send upstream.
pub const UPSTREAM_KEY: &str = "sk-bench-upstream-0123456789";
/// The assistant's answer in a unary completion; responses are checked for it.
pub const ANSWER: &str = "Hello from the mock upstream.";
/// The streamed pieces; joined they make the streamed answer. The first is the marker of the
/// first token, looked for in the bytes each gateway streams back.
pub const STREAM_PIECES: &[&str] = &[
    "Mocktoken1",
    " Mocktoken2",
    " Mocktoken3",
    " Mocktoken4",
    " Mocktoken5",
];
/// The model name the mock answers with.
const MODEL: &str = "gpt-4o-mini-2024-07-18";

/// The bodies, built once.
struct Bodies {
    completion: Bytes,
    /// Frames of a stream: the first carries the role chunk and the first token together, as
    /// OpenAI's first write usually does; the others follow, one per interval.
    stream: Vec<Bytes>,
    /// The usage chunk, sent before `[DONE]` when `stream_options.include_usage` is asked for.
    usage: Bytes,
    done: Bytes,
    unauthorized: Bytes,
    interval: Duration,
    served: AtomicU64,
}

fn sse(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}

impl Bodies {
    fn new(interval: Duration) -> Bodies {
        let usage = json!({
            "prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        });
        let completion = json!({
            "id": "chatcmpl-BenchMock0000000000000000001",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_bench0001"
        });
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            json!({
                "id": "chatcmpl-BenchMock0000000000000000002",
                "object": "chat.completion.chunk",
                "created": 1_767_225_600,
                "model": MODEL,
                "service_tier": "default",
                "system_fingerprint": "fp_bench0001",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        };
        let mut stream = Vec::new();
        let role = chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        );
        let first = chunk(json!({"content": STREAM_PIECES[0]}), None);
        stream.push(Bytes::from(format!("{}{}", sse(&role), sse(&first))));
        for piece in &STREAM_PIECES[1..] {
            stream.push(Bytes::from(sse(&chunk(json!({"content": piece}), None))));
        }
        stream.push(Bytes::from(sse(&chunk(json!({}), Some("stop")))));
        let usage_chunk = json!({
            "id": "chatcmpl-BenchMock0000000000000000002",
            "object": "chat.completion.chunk",
            "created": 1_767_225_600,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_bench0001",
            "choices": [],
            "usage": usage
        });
        let unauthorized = json!({"error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        Bodies {
            completion: Bytes::from(completion.to_string()),
            stream,
            usage: Bytes::from(sse(&usage_chunk)),
            done: Bytes::from_static(b"data: [DONE]\n\n"),
            unauthorized: Bytes::from(unauthorized.to_string()),
            interval,
            served: AtomicU64::new(0),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// Whether the JSON `body` has `"<key>": true` (a byte scan; the mock does not parse bodies).
fn flag(body: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut from = 0;
    while let Some(at) = body
        .get(from..)
        .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
    {
        let rest = &body[from + at + needle.len()..];
        let rest = rest.trim_ascii_start();
        if let Some(value) = rest.strip_prefix(b":")
            && value.trim_ascii_start().starts_with(b"true")
        {
            return true;
        }
        from += at + needle.len();
    }
    false
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(
    bodies: Arc<Bodies>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    if request.method() == Method::GET && path == "/stats" {
        let served = bodies.served.load(Ordering::Relaxed);
        let text = json!({ "completions": served }).to_string();
        return Ok(response(
            StatusCode::OK,
            "application/json",
            Full::new(Bytes::from(text)).boxed(),
        ));
    }
    if request.method() != Method::POST || !path.ends_with("/chat/completions") {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "text/plain",
            Full::new(Bytes::from_static(b"not found")).boxed(),
        ));
    }
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key == UPSTREAM_KEY);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(response(
                StatusCode::BAD_REQUEST,
                "text/plain",
                Full::new(Bytes::from_static(b"unreadable body")).boxed(),
            ));
        }
    };
    if !authorized {
        return Ok(response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            Full::new(bodies.unauthorized.clone()).boxed(),
        ));
    }
    bodies.served.fetch_add(1, Ordering::Relaxed);
    if !flag(&body, "stream") {
        return Ok(response(
            StatusCode::OK,
            "application/json",
            Full::new(bodies.completion.clone()).boxed(),
        ));
    }
    let mut frames = bodies.stream.clone();
    if flag(&body, "include_usage") {
        frames.push(bodies.usage.clone());
    }
    frames.push(bodies.done.clone());
    let interval = bodies.interval;
    let frames = futures::stream::iter(frames.into_iter().enumerate()).then(
        move |(index, frame)| async move {
            if index > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Ok::<_, Infallible>(Frame::data(frame))
        },
    );
    let mut response = response(
        StatusCode::OK,
        "text/event-stream",
        BodyExt::boxed(StreamBody::new(frames)),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The line the mock prints once it listens, followed by its address; the harness waits for it.
pub const LISTENING: &str = "mock upstream listening on ";

/// Serves on `addr` with a runtime of `threads` worker threads, until the process is killed.
pub fn serve(addr: SocketAddr, threads: usize, interval: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("mock-upstream")
        .enable_all()
        .build()
        .context("starting the mock's runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the mock upstream to {addr}"))?;
        println!("{LISTENING}{}", listener.local_addr()?);
        let bodies = Arc::new(Bodies::new(interval));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("mock upstream: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                eprintln!("mock upstream: TCP_NODELAY: {err}");
            }
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(bodies.clone(), request));
                // Errors here are clients going away mid-request: nothing to do about them.
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::flag;

    #[test]
    fn flags_are_found_with_any_spacing() {
        assert!(flag(br#"{"model":"m","stream":true}"#, "stream"));
        assert!(flag(br#"{"model": "m", "stream" : true}"#, "stream"));
        assert!(!flag(br#"{"stream": false}"#, "stream"));
        assert!(!flag(br#"{"model": "m"}"#, "stream"));
        assert!(flag(
            br#"{"stream_options": {"include_usage": true}, "stream": true}"#,
            "include_usage"
        ));
        assert!(!flag(br#"{"stream_options": {"x": 1}}"#, "stream"));
    }
}
