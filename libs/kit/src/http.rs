//! The HTTP edge: an axum server on its own port with `/healthz` (liveness), `/readyz`
//! (readiness), `/metrics` (Prometheus), and the routes services mount, which use
//! [`require_scope`] for the same authentication as gRPC. Every request gets a request id
//! (`x-request-id`, the caller's if it sent an acceptable one), a span and an access log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;

use crate::grpc::layers::request_id_of;
use crate::grpc::{REQUEST_ID_HEADER, ReadinessCheck};
use crate::telemetry::{metrics_handle, with_request_id};
use crate::{Authenticator, Target};

#[derive(Clone)]
pub(crate) struct EdgeState {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) checks: Arc<Vec<(String, Arc<dyn ReadinessCheck>)>>,
}

pub(crate) fn edge_router(state: EdgeState, routes: Router) -> Router {
    // Make sure the recorder exists before the first scrape.
    metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(routes)
        .layer(axum::middleware::from_fn(observe_http))
}

async fn readyz(State(state): State<EdgeState>) -> Response {
    if !state.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready"})),
        )
            .into_response();
    }
    let failures = run_checks(&state.checks).await;
    if failures.is_empty() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        // Names only: this endpoint needs no token, and the reasons (logged by run_checks) can
        // name hosts and paths.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready", "failing": failures})),
        )
            .into_response()
    }
}

/// Runs every check; returns the names of the failing ones and logs why they fail.
pub(crate) async fn run_checks(checks: &[(String, Arc<dyn ReadinessCheck>)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, check) in checks {
        if let Err(reason) = check.check().await {
            tracing::warn!(check = %name, %reason, "readiness check failed");
            failures.push(name.clone());
        }
    }
    failures
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics_handle().render(),
    )
}

/// The request id (the caller's `x-request-id`, or a new one, returned on the response), the
/// span that the authenticator records the tenant and principal in, the access log line and
/// the metrics of every HTTP request, as the gRPC host's observe layer does for RPCs.
async fn observe_http(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    // The matched route, not the raw path, so that callers cannot grow the label set.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let request_id = request_id_of(request.headers());
    let span = tracing::info_span!(
        "http",
        method = %method,
        route = %route,
        request_id = %request_id,
        tenant = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    let start = Instant::now();
    let mut response = with_request_id(request_id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    metrics::counter!("switchyard_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("switchyard_http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    tracing::info!(parent: &span, status, latency_ms, "http request finished");
    response
}

/// Middleware for an HTTP route that needs `scope`: the same tokens as gRPC, the same principal in
/// the request extensions, errors as JSON bodies.
///
/// ```ignore
/// router.route_layer(axum::middleware::from_fn_with_state(
///     (authenticator, "events.write"),
///     switchyard_kit::http::require_scope,
/// ))
/// ```
pub async fn require_scope(
    State((authenticator, scope)): State<(Arc<dyn Authenticator>, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(err) = authenticator
        .authorize(
            Target::Http { scope },
            &parts.headers,
            &mut parts.extensions,
        )
        .await
    {
        return err.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
