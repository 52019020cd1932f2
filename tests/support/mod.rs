//! Test support: a whole Switchyard process started in the test, on port 0, with either record
//! store, and clients with tokens for it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use switchyard::{Config, ServiceName};
use switchyard_auth::TokenRequest;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The HS256 secret of test servers.
pub const SECRET: &str = "an-hs256-secret-for-the-e2e-tests-0123456789";

/// Which record store a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file per service under the data directory.
    Sqlite,
    /// Fresh schemas on the test PostgreSQL server.
    Postgres,
}

/// A running all-in-one server.
#[derive(Debug)]
pub struct TestServer {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// The configuration it runs with; reuse it to restart on the same data.
    pub config: Config,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A configuration for a new, empty installation; `data_dir` holds its files.
pub fn config(backend: Backend, data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SecretString::from(SECRET));
    config.server.shutdown_timeout = Duration::from_secs(5);
    if backend == Backend::Postgres {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        config.database.url = Some(SecretString::from(switchyard_store::testing::postgres_url()));
        // The swtest_<seconds>_ prefix lets later runs drop what this one leaves behind.
        config.database.schema_prefix = format!("swtest_{now}_{}_", uuid::Uuid::new_v4().simple());
    }
    config
}

impl TestServer {
    /// Starts a server of every service with `config` on fresh ports.
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_services(config, ServiceName::ALL).await
    }

    /// Starts a server of `services` with `config` on fresh ports.
    pub async fn start_services(config: Config, services: &[ServiceName]) -> TestServer {
        switchyard_kit::tls::install_crypto_provider();
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding gRPC");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding HTTP");
        let (grpc_addr, http_addr) = (
            grpc.local_addr().expect("gRPC address"),
            http.local_addr().expect("HTTP address"),
        );
        let shutdown = CancellationToken::new();
        let services: BTreeSet<ServiceName> = services.iter().copied().collect();
        let task = tokio::spawn(switchyard::run(
            config.clone(),
            services,
            grpc,
            http,
            shutdown.clone(),
        ));
        let server = TestServer {
            grpc: grpc_addr,
            http: http_addr,
            config,
            shutdown,
            task,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.grpc))
                .expect("valid URI")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(request).await.is_ok() {
                    return;
                }
            }
            assert!(
                !self.task.is_finished(),
                "the server stopped while starting"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server did not become ready");
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }

    /// A channel to its gRPC port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("valid URI")
            .connect()
            .await
            .expect("connecting")
    }

    /// A credentials client sending `token`, if any.
    pub async fn credentials(&self, token: Option<String>) -> CredentialClient {
        CredentialServiceClient::with_interceptor(self.channel().await, Bearer(token))
    }
}

/// A token of the test servers' key.
pub fn token(tenant: &str, subject: &str, scopes: &[&str]) -> String {
    switchyard_auth::mint(
        SECRET.as_bytes(),
        &TokenRequest {
            issuer: "switchyard".into(),
            audience: "switchyard".into(),
            subject: subject.into(),
            tenant: tenant.into(),
            tenant_claim: "tenant".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(600),
        },
    )
    .expect("minting a token")
}

/// Every credentials scope.
pub const ALL_SCOPES: &[&str] = &["credentials.*"];

/// A credentials client with its bearer token.
pub type CredentialClient = CredentialServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}
