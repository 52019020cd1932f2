//! The tower layers every RPC passes through, outermost first:
//!
//! 1. [`ObserveLayer`]: request id, tracing span, access log and Prometheus metrics. Outermost so
//!    that it sees every outcome, including requests refused by the layers below.
//! 2. [`ShedLayer`]: a concurrency limit that refuses at once (RESOURCE_EXHAUSTED with RetryInfo)
//!    instead of queueing, before any work such as token verification is spent on the request.
//! 3. [`DeadlineLayer`]: the caller's `grpc-timeout` (or the configured default), enforced with
//!    DEADLINE_EXCEEDED and handed to handlers as a [`Deadline`] extension.
//! 4. [`AuthLayer`]: the [`Authenticator`]; innermost so the span and deadline already apply.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::code_name;
use crate::telemetry::with_request_id;
use crate::{ApiError, Authenticator, Target};

/// The request id header, read from callers and returned on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

fn status_response(err: ApiError) -> Response<Body> {
    err.into_status().into_http()
}

/// Swaps a ready clone in, as tower services must when the call outlives `&mut self`.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

// ---------------------------------------------------------------------------------------------
// Observe

/// Adds the request id, the span, the access log line and the metrics of each RPC.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    known_methods: Arc<HashSet<String>>,
}

impl ObserveLayer {
    /// `known_methods` are the full paths (`/pkg.Service/Method`) that may appear as metric labels;
    /// anything else is counted as `unknown`, so callers cannot grow the label set.
    pub fn new(known_methods: HashSet<String>) -> Self {
        ObserveLayer {
            known_methods: Arc::new(known_methods),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            known_methods: self.known_methods.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    known_methods: Arc<HashSet<String>>,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = if self.known_methods.contains(path) {
            split_method_path(path)
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        let request_id = request_id_of(request.headers());
        let span = tracing::info_span!(
            "rpc",
            service = %service,
            method = %method,
            request_id = %request_id,
            tenant = tracing::field::Empty,
            principal = tracing::field::Empty,
        );
        metrics::gauge!("switchyard_grpc_requests_in_flight").increment(1.0);
        let finish = Finish {
            span: span.clone(),
            service,
            method,
            start: Instant::now(),
            done: false,
        };
        let response = with_request_id(
            request_id.clone(),
            take_ready(&mut self.inner).call(request),
        )
        .instrument(span);
        Box::pin(async move {
            let Ok(mut response) = response.await;
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            // An error answered without a body (trailers-only) carries its status in the headers;
            // otherwise the status arrives in the trailers, at the end of the body.
            if let Some(code) = grpc_code(response.headers()) {
                finish.complete(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: body,
                    finish: Some(finish),
                })
            }))
        })
    }
}

/// The caller's request id if it is acceptable, or else a new one.
pub(crate) fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_acceptable_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Whether a caller's request id is kept: 1 to 128 visible ASCII characters.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

fn split_method_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (trimmed.to_owned(), String::new()),
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

struct Finish {
    span: tracing::Span,
    service: String,
    method: String,
    start: Instant,
    done: bool,
}

impl Finish {
    fn complete(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        let code = code_name(code);
        metrics::gauge!("switchyard_grpc_requests_in_flight").decrement(1.0);
        metrics::counter!(
            "switchyard_grpc_requests_total",
            "service" => self.service.clone(),
            "method" => self.method.clone(),
            "code" => code,
        )
        .increment(1);
        metrics::histogram!(
            "switchyard_grpc_request_duration_seconds",
            "service" => self.service.clone(),
            "method" => self.method.clone(),
        )
        .record(elapsed.as_secs_f64());
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        tracing::info!(parent: &self.span, code, latency_ms, "rpc finished");
    }
}

impl Drop for Finish {
    // A body dropped before its trailers means the caller went away.
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

struct ObservedBody {
    inner: Body,
    finish: Option<Finish>,
}

impl HttpBody for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code)
                    && let Some(finish) = self.finish.take()
                {
                    finish.complete(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(finish) = self.finish.take() {
                    finish.complete(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(finish) = self.finish.take() {
                    finish.complete(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Shed

/// Paths of the health service, which load shedding never refuses.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Refuses RPCs beyond `max_concurrency` at once, with RESOURCE_EXHAUSTED and a retry hint.
/// Health checks are exempt.
///
/// A permit is held until the handler returns its response; a server-streaming body then
/// continues without one.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    /// A limit of `max_concurrency` RPCs.
    pub fn new(max_concurrency: usize) -> Self {
        ShedLayer {
            permits: Arc::new(Semaphore::new(max_concurrency)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Service<Request<Body>> for Shed<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Health checks are cheap and must answer under load, or probes restart busy pods.
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(take_ready(&mut self.inner).call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("switchyard_grpc_shed_total").increment(1);
            let err = ApiError::new(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the server is at its concurrency limit; retry shortly",
            )
            .with_retry_after(Duration::from_secs(1));
            return Box::pin(async move { Ok(status_response(err)) });
        };
        let response = take_ready(&mut self.inner).call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Deadline

/// When the current RPC must be answered by: handlers pass it on to the calls they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Enforces each RPC's deadline: the caller's `grpc-timeout` up to `max`; without one,
/// `default` for unary RPCs and `max` for streaming ones, whose transfers take longer.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default: Duration,
    max: Duration,
    streaming: Arc<HashSet<String>>,
}

impl DeadlineLayer {
    /// `streaming` lists the method paths with a streaming request or response.
    pub fn new(default: Duration, max: Duration, streaming: HashSet<String>) -> Self {
        DeadlineLayer {
            default,
            max,
            streaming: Arc::new(streaming),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> Service<Request<Body>> for DeadlineService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let layer = &self.layer;
        let timeout = match request
            .headers()
            .get("grpc-timeout")
            .map(parse_grpc_timeout)
        {
            Some(Some(requested)) => requested.min(layer.max),
            Some(None) => {
                let err = ApiError::new(
                    Code::InvalidArgument,
                    "INVALID_ARGUMENT",
                    "the grpc-timeout header is malformed",
                );
                return Box::pin(async move { Ok(status_response(err)) });
            }
            None if layer.streaming.contains(request.uri().path()) => layer.max,
            None => layer.default,
        };
        request
            .extensions_mut()
            .insert(Deadline(Instant::now() + timeout));
        let response = take_ready(&mut self.inner).call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => Ok(status_response(ApiError::new(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    format!("the deadline of {} ms expired", timeout.as_millis()),
                ))),
            }
        })
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n), as the gRPC
/// over HTTP/2 specification defines it; `None` if it is malformed.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Auth

/// Asks the [`Authenticator`] about every RPC before it reaches a handler.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<dyn Authenticator>,
}

impl AuthLayer {
    /// Uses `authenticator` for every RPC.
    pub fn new(authenticator: Arc<dyn Authenticator>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<dyn Authenticator>,
}

impl<S> Service<Request<Body>> for Auth<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path().to_owned();
            if let Err(err) = authenticator
                .authorize(Target::Grpc(&path), &parts.headers, &mut parts.extensions)
                .await
            {
                return Ok(status_response(err));
            }
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        let parse = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert!(parse("123456789S").is_none(), "more than 8 digits");
        assert!(parse("5").is_none());
        assert!(parse("S").is_none());
        assert!(parse("5x").is_none());
        assert!(parse("-5S").is_none());
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(is_acceptable_request_id("abc-123"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("has space"));
        assert!(!is_acceptable_request_id(&"x".repeat(129)));
    }
}
