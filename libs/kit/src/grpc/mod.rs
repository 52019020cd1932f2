//! The gRPC host: the services of one process, with health, reflection, the layers of
//! [`layers`], and the HTTP edge beside it, started and stopped together.

pub mod layers;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::serve::ListenerExt as _;
use http::{Request, Response};
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

pub use layers::{Deadline, REQUEST_ID_HEADER};

use crate::Authenticator;
use crate::config::ServerConfig;
use crate::http::{EdgeState, edge_router};

/// A dependency whose failure makes the server not ready (a database, a secret store).
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Err` says what is wrong, for `/readyz` and the log; never secrets.
    async fn check(&self) -> Result<(), String>;
}

/// How often readiness checks run to update gRPC health.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);

/// The services of one process and everything around them.
pub struct Host {
    config: ServerConfig,
    authenticator: Arc<dyn Authenticator>,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    checks: Vec<(String, Arc<dyn ReadinessCheck>)>,
    http_routes: axum::Router,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("services", &self.service_names)
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why the host stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// A descriptor set given to the host does not decode.
    #[error("invalid file descriptor set: {0}")]
    Descriptor(#[from] prost::DecodeError),
    /// The reflection service could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// In-flight requests did not finish within `server.shutdown_timeout`.
    #[error("in-flight requests did not finish within the shutdown timeout")]
    ShutdownTimeout,
}

impl Host {
    /// A host that checks every request with `authenticator`.
    pub fn new(config: ServerConfig, authenticator: Arc<dyn Authenticator>) -> Self {
        Host {
            config,
            authenticator,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            descriptor_sets: Vec::new(),
            checks: Vec::new(),
            http_routes: axum::Router::new(),
        }
    }

    /// The server configuration, for services that size their messages by it.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Adds a gRPC service; its health status is reported under its full name.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Publishes an encoded `FileDescriptorSet` through reflection.
    pub fn add_descriptor_set(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Adds a readiness check, reported under `name` by `/readyz`.
    pub fn add_readiness_check(&mut self, name: &str, check: Arc<dyn ReadinessCheck>) -> &mut Self {
        self.checks.push((name.to_owned(), check));
        self
    }

    /// Mounts routes on the HTTP edge.
    pub fn merge_http(&mut self, router: axum::Router) -> &mut Self {
        self.http_routes = std::mem::take(&mut self.http_routes).merge(router);
        self
    }

    /// Every method of every registered descriptor set, as `/package.Service/Method` paths, and
    /// the subset whose request or response is a stream.
    pub fn method_paths(&self) -> Result<(HashSet<String>, HashSet<String>), prost::DecodeError> {
        let mut paths = HashSet::new();
        let mut streaming = HashSet::new();
        let sets = self
            .descriptor_sets
            .iter()
            .copied()
            .chain([tonic_health::pb::FILE_DESCRIPTOR_SET]);
        for encoded in sets {
            let set = prost_types::FileDescriptorSet::decode(encoded)?;
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let path = format!("/{package}.{service_name}/{}", method.name());
                        if method.client_streaming() || method.server_streaming() {
                            streaming.insert(path.clone());
                        }
                        paths.insert(path);
                    }
                }
            }
        }
        Ok((paths, streaming))
    }

    /// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` is cancelled, then drains:
    /// health turns NOT_SERVING and `/readyz` 503, and after `server.drain_delay` the listeners
    /// close and in-flight requests get `server.shutdown_timeout` to finish.
    pub async fn serve(
        self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let (known_methods, streaming_methods) = self.method_paths()?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let ready = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(self.checks);
        set_all(&reporter, &self.service_names, ServingStatus::Serving).await;

        let mut reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &self.descriptor_sets {
            reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
            reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
        }
        let reflection_v1 = reflection_v1.build_v1()?;
        let reflection_v1alpha = reflection_v1alpha.build_v1alpha()?;

        let mut routes = self.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let close_listeners = CancellationToken::new();
        let grpc_server = tonic::transport::Server::builder()
            .layer(layers::ObserveLayer::new(known_methods))
            .layer(layers::ShedLayer::new(self.config.max_concurrency))
            .layer(layers::DeadlineLayer::new(
                self.config.default_deadline,
                self.config.max_deadline,
                streaming_methods,
            ))
            .layer(layers::AuthLayer::new(self.authenticator.clone()))
            .add_routes(routes.routes())
            // tonic's own TCP_NODELAY setting does not apply to listeners passed in: without it,
            // Nagle's algorithm delays small responses by up to 40 ms (docs/benchmarks.md).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                close_listeners.clone().cancelled_owned(),
            );

        let edge = edge_router(
            EdgeState {
                ready: ready.clone(),
                checks: checks.clone(),
            },
            self.http_routes,
        );
        // axum does not set TCP_NODELAY either: without it, every streamed HTTP response (SSE)
        // waits on Nagle's algorithm, about 29 ms per stream (docs/benchmarks.md, AI gateway).
        let http = http.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::warn!(error = %err, "could not set TCP_NODELAY on an HTTP connection");
            }
        });
        let http_server = axum::serve(http, edge)
            .with_graceful_shutdown(close_listeners.clone().cancelled_owned());

        let mut grpc_task = tokio::spawn(grpc_server);
        let mut http_task = tokio::spawn(async move { http_server.await });
        let watcher = tokio::spawn(watch_readiness(
            reporter.clone(),
            self.service_names.clone(),
            checks,
            ready.clone(),
        ));

        // Run until asked to stop, or until a server fails on its own.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = &mut grpc_task => {
                watcher.abort();
                close_listeners.cancel();
                return flatten(result).map_err(ServeError::from);
            }
            result = &mut http_task => {
                watcher.abort();
                close_listeners.cancel();
                return flatten_io(result).map_err(ServeError::from);
            }
        }

        watcher.abort();
        ready.store(false, Ordering::SeqCst);
        set_all(&reporter, &self.service_names, ServingStatus::NotServing).await;
        tracing::info!(drain_delay = ?self.config.drain_delay, "draining: health is NOT_SERVING");
        tokio::time::sleep(self.config.drain_delay).await;
        close_listeners.cancel();

        let finished = tokio::time::timeout(self.config.shutdown_timeout, async {
            let grpc = flatten(grpc_task.await);
            let http = flatten_io(http_task.await);
            (grpc, http)
        })
        .await;
        match finished {
            Ok((grpc, http)) => {
                grpc?;
                http?;
                tracing::info!("stopped");
                Ok(())
            }
            Err(_) => Err(ServeError::ShutdownTimeout),
        }
    }
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), tonic::transport::Error> {
    match result {
        Ok(inner) => inner,
        Err(join) => {
            tracing::error!(error = %join, "grpc server task failed");
            Ok(())
        }
    }
}

fn flatten_io(
    result: Result<Result<(), std::io::Error>, tokio::task::JoinError>,
) -> Result<(), std::io::Error> {
    match result {
        Ok(inner) => inner,
        Err(join) => Err(std::io::Error::other(join.to_string())),
    }
}

/// Sets every service's status and the whole server's ("").
async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    set_services(reporter, names, status).await;
    reporter.set_service_status("", status).await;
}

async fn set_services(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// Keeps the per-service gRPC health statuses and `/readyz` in step with the readiness checks.
/// The whole-server status ("") stays SERVING until shutdown: it answers liveness probes, which
/// must not restart a process because a dependency is down.
async fn watch_readiness(
    reporter: HealthReporter,
    names: Vec<&'static str>,
    checks: Arc<Vec<(String, Arc<dyn ReadinessCheck>)>>,
    ready: Arc<AtomicBool>,
) {
    let mut interval = tokio::time::interval(READINESS_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ready = true;
    loop {
        interval.tick().await;
        let failures = crate::http::run_checks(&checks).await;
        let now_ready = failures.is_empty();
        if now_ready != was_ready {
            if now_ready {
                tracing::info!("dependencies recovered: serving");
            } else {
                tracing::warn!(failing = ?failures, "dependencies failing: not serving");
            }
            let status = if now_ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_services(&reporter, &names, status).await;
            ready.store(now_ready, Ordering::SeqCst);
            was_ready = now_ready;
        }
    }
}
