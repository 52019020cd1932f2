//! The gRPC host end to end: its layers (deadline, load shedding, auth hook, request id,
//! metrics), health and reflection, the HTTP edge, and graceful shutdown with draining.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use switchyard_kit::config::ServerConfig;
use switchyard_kit::grpc::{Deadline, Host, ReadinessCheck};
use switchyard_kit::{ApiError, Authenticator, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_prost::ProstCodec;

/// A test service: `/test.Slow/Sleep` sleeps for the milliseconds in the `x-sleep-ms` header.
#[derive(Clone)]
struct Slow;

impl NamedService for Slow {
    const NAME: &'static str = "test.Slow";
}

struct SleepHandler(Duration);

impl tonic::server::UnaryService<()> for SleepHandler {
    type Response = ();
    type Future = BoxFuture<'static, Result<Response<()>, Status>>;

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let delay = self.0;
        // Reports the deadline the host handed to the handler.
        let remaining = request.extensions().get::<Deadline>().map(|deadline| {
            deadline
                .0
                .saturating_duration_since(Instant::now())
                .as_millis()
        });
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(());
            if let Some(remaining) = remaining {
                response
                    .metadata_mut()
                    .insert("x-deadline-ms", remaining.to_string().parse().unwrap());
            }
            Ok(response)
        })
    }
}

impl tower::Service<http::Request<Body>> for Slow {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let millis = request
            .headers()
            .get("x-sleep-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<(), ()>::default());
            Ok(grpc
                .unary(SleepHandler(Duration::from_millis(millis)), request)
                .await)
        })
    }
}

/// Lets everything through except requests carrying `x-deny`.
#[derive(Debug)]
struct TestAuth;

#[async_trait]
impl Authenticator for TestAuth {
    async fn authorize(
        &self,
        _target: Target<'_>,
        headers: &http::HeaderMap,
        _extensions: &mut http::Extensions,
    ) -> Result<(), ApiError> {
        if headers.contains_key("x-deny") {
            return Err(ApiError::unauthenticated("denied by test"));
        }
        Ok(())
    }
}

struct Flag(Arc<std::sync::atomic::AtomicBool>);

#[async_trait]
impl ReadinessCheck for Flag {
    async fn check(&self) -> Result<(), String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("dependency down".into())
        }
    }
}

struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), switchyard_kit::grpc::ServeError>>,
    dependency_up: Arc<std::sync::atomic::AtomicBool>,
}

async fn start(config: ServerConfig) -> Running {
    switchyard_kit::tls::install_crypto_provider();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let dependency_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let authenticator: Arc<dyn Authenticator> = Arc::new(TestAuth);
    let mut host = Host::new(config, authenticator.clone());
    // A protected HTTP route, as later services mount them.
    let protected = axum::Router::new()
        .route("/v1/thing", axum::routing::get(|| async { "thing" }))
        .route_layer(axum::middleware::from_fn_with_state(
            (authenticator, "things.read"),
            switchyard_kit::http::require_scope,
        ));
    host.add_service(Slow)
        .add_readiness_check("dependency", Arc::new(Flag(dependency_up.clone())))
        .merge_http(protected);
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(host.serve(grpc, http, shutdown.clone()));
    Running {
        grpc: grpc_addr,
        http: http_addr,
        shutdown,
        served,
        dependency_up,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn sleep_call(
    channel: Channel,
    millis: u64,
    timeout: Option<Duration>,
) -> Result<http::HeaderMap, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("x-sleep-ms", millis.to_string().parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", "test-request-1".parse().unwrap());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let response = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.Slow/Sleep"),
            ProstCodec::<(), ()>::default(),
        )
        .await?;
    Ok(response.metadata().clone().into_headers())
}

fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn deadline_ms(headers: &http::HeaderMap) -> u64 {
    headers
        .get("x-deadline-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn deadlines_from_caller_and_default_are_enforced() {
    let server = start(ServerConfig {
        default_deadline: Duration::from_millis(300),
        max_deadline: Duration::from_millis(800),
        ..ServerConfig::default()
    })
    .await;
    let ch = channel(server.grpc).await;

    let headers = sleep_call(ch.clone(), 0, None).await.unwrap();
    assert_eq!(
        headers.get("x-request-id").unwrap(),
        "test-request-1",
        "request ids are echoed"
    );
    let remaining = deadline_ms(&headers);
    assert!(
        (200..=300).contains(&remaining),
        "no caller deadline: the default, got {remaining}"
    );

    // The caller's grpc-timeout reaches the handler, shorter or longer than the default...
    let remaining = deadline_ms(
        &sleep_call(ch.clone(), 0, Some(Duration::from_millis(120)))
            .await
            .unwrap(),
    );
    assert!(
        (20..=120).contains(&remaining),
        "caller deadline: got {remaining}"
    );
    let remaining = deadline_ms(
        &sleep_call(ch.clone(), 0, Some(Duration::from_millis(600)))
            .await
            .unwrap(),
    );
    assert!(
        (500..=600).contains(&remaining),
        "longer caller deadline: got {remaining}"
    );
    // ...up to the maximum.
    let remaining = deadline_ms(
        &sleep_call(ch.clone(), 0, Some(Duration::from_secs(60)))
            .await
            .unwrap(),
    );
    assert!(
        (700..=800).contains(&remaining),
        "capped deadline: got {remaining}"
    );

    // Work past the deadline is cut off with DEADLINE_EXCEEDED.
    let started = Instant::now();
    let err = sleep_call(ch.clone(), 5_000, Some(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(reason(&err), "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A malformed grpc-timeout is the caller's error.
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let result = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.Slow/Sleep"),
            ProstCodec::<(), ()>::default(),
        )
        .await;
    assert!(
        result.is_err(),
        "a malformed grpc-timeout must not be served"
    );
}

#[tokio::test]
async fn excess_concurrency_is_shed_not_queued() {
    let server = start(ServerConfig {
        max_concurrency: 1,
        ..ServerConfig::default()
    })
    .await;
    let ch = channel(server.grpc).await;
    let slow = tokio::spawn(sleep_call(ch.clone(), 500, None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = sleep_call(ch.clone(), 0, None).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "OVERLOADED");
    // Health still answers: probes must not fail because the server is busy.
    let mut health = HealthClient::new(ch.clone());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    use tonic_types::StatusExt;
    assert!(
        err.get_error_details().retry_info().is_some(),
        "shed responses carry RetryInfo"
    );
    slow.await.unwrap().unwrap();
    sleep_call(ch, 0, None).await.unwrap();
}

#[tokio::test]
async fn authenticator_refusals_reach_the_caller_and_metrics_count_them() {
    let server = start(ServerConfig::default()).await;
    let ch = channel(server.grpc).await;
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("x-deny", "1".parse().unwrap());
    let err = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.Slow/Sleep"),
            ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let err = sleep_call(ch, 0, None).await.map(drop);
    assert!(err.is_ok());
    let metrics = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_grpc_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"UNAUTHENTICATED\""), "{metrics}");
    assert!(
        metrics.contains("switchyard_grpc_request_duration_seconds"),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://{}/healthz", server.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        health.headers().contains_key("x-request-id"),
        "a new request id"
    );
    let echoed = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.http))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed.headers()["x-request-id"],
        "trace-42",
        "the caller's is kept"
    );
}

#[tokio::test]
async fn health_follows_dependencies_and_shutdown_drains() {
    let server = start(ServerConfig {
        drain_delay: Duration::from_millis(600),
        ..ServerConfig::default()
    })
    .await;
    let ch = channel(server.grpc).await;
    let health = HealthClient::new(ch.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    assert_eq!(status("").await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(
        status("test.Slow").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let readyz = format!("http://{}/readyz", server.http);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    // A failing dependency makes the service (not the process) unready.
    server
        .dependency_up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    server
        .dependency_up
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Reflection lists the services without any descriptor registered by the test.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap());
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");

    // In-flight work finishes; during the drain delay health says NOT_SERVING.
    let in_flight = tokio::spawn(sleep_call(ch.clone(), 400, None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(status("").await.unwrap(), ServingStatus::NotServing as i32);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    in_flight.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.served)
        .await
        .expect("the server stops after draining")
        .unwrap()
        .unwrap();
}
