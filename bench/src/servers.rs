//! The servers under test, each started on `127.0.0.1:0` on the server runtime:
//!
//! - the bare tonic baseline: tonic's hello-world `Greeter` plus `tonic-health`, served the way
//!   tonic's own examples serve it (`Server::builder()` with its defaults, TCP_NODELAY on), with
//!   no layer of any kind;
//! - Switchyard all-in-one through [`switchyard::run`], the entry point of `switchyard up`, on a
//!   temporary data directory, with SQLite or with PostgreSQL.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use switchyard::{Config, ServiceName};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::hello::greeter_server::{Greeter, GreeterServer};
use crate::hello::{HelloReply, HelloRequest};

/// The HS256 secret of the benchmarked Switchyard servers (a fixed 32+ byte value: benchmarks
/// only, never a real key).
pub const SECRET: &str = "switchyard-bench-hs256-secret-0123456789abcdef";

/// A server running on the server runtime.
#[derive(Debug)]
pub struct Running {
    /// Its gRPC address.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the server to stop and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("server task panicked")?
    }

    /// Whether the server task has ended (only on an error, before `stop`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The error the server ended with, if it ended.
    pub async fn failure(self) -> anyhow::Error {
        match self.task.await {
            Ok(Ok(())) => anyhow::anyhow!("the server stopped on its own"),
            Ok(Err(err)) => err,
            Err(join) => anyhow::anyhow!("the server task panicked: {join}"),
        }
    }
}

/// tonic's hello-world service.
#[derive(Debug, Default)]
struct HelloService;

#[tonic::async_trait]
impl Greeter for HelloService {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}!", request.into_inner().name),
        }))
    }
}

/// Starts the bare tonic server. `nodelay` is tonic's default (`true`) unless an experiment says
/// otherwise.
pub async fn start_bare(nodelay: bool) -> anyhow::Result<Running> {
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("binding the bare tonic server")?
        .with_nodelay(Some(nodelay));
    let addr = incoming.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<GreeterServer<HelloService>>().await;
    let stop = CancellationToken::new();
    let server = Server::builder()
        .add_service(health)
        .add_service(GreeterServer::new(HelloService))
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    let task = tokio::spawn(async move { server.await.context("bare tonic server") });
    Ok(Running { addr, stop, task })
}

/// Where a Switchyard under test keeps its records.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite files (and the embedded secret store) in the data directory.
    Sqlite,
    /// PostgreSQL at this URL, in schemas named with this prefix.
    Postgres {
        /// `postgres://...`.
        url: String,
        /// `bench_<pid>_`.
        schema_prefix: String,
    },
}

/// The configuration of a benchmarked Switchyard: `switchyard up`'s defaults, a fixed HS256
/// secret, warnings-only logging, and `data_dir` for its files.
pub fn switchyard_config(data_dir: &Path, store: &Store) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SecretString::from(SECRET));
    config.log.level = "warn".to_owned();
    config.server.shutdown_timeout = Duration::from_secs(10);
    if let Store::Postgres { url, schema_prefix } = store {
        config.database.url = Some(SecretString::from(url.clone()));
        config.database.schema_prefix = schema_prefix.clone();
    }
    config
}

/// Starts Switchyard all-in-one with `config`. With `listener_nodelay`, TCP_NODELAY is set on the
/// gRPC listening socket, which Linux copies to the connections it accepts (an experiment: as
/// shipped, Switchyard's connections have Nagle's algorithm on).
pub async fn start_switchyard(config: Config, listener_nodelay: bool) -> anyhow::Result<Running> {
    let socket = TcpSocket::new_v4().context("creating Switchyard's gRPC socket")?;
    if listener_nodelay {
        socket.set_nodelay(true)?;
    }
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let grpc = socket
        .listen(1024)
        .context("binding Switchyard's gRPC listener")?;
    let http = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding Switchyard's HTTP listener")?;
    let addr = grpc.local_addr()?;
    let stop = CancellationToken::new();
    let services: BTreeSet<ServiceName> = ServiceName::ALL.iter().copied().collect();
    let task = tokio::spawn(switchyard::run(config, services, grpc, http, stop.clone()));
    Ok(Running { addr, stop, task })
}

/// Whether a PostgreSQL server answers at `url` (within two seconds).
pub async fn postgres_answers(url: &str) -> bool {
    let probe = switchyard_store::Db::connect(url, "public", 1);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(db)) if db.ping().await.is_ok()
    )
}

/// Drops the schemas a PostgreSQL run created.
pub async fn drop_schemas(url: &str, schema_prefix: &str) -> anyhow::Result<()> {
    let db = switchyard_store::Db::connect(url, "public", 1).await?;
    for component in ["credentials", "secrets"] {
        db.execute(
            &format!("DROP SCHEMA IF EXISTS {schema_prefix}{component} CASCADE"),
            &[],
        )
        .await?;
    }
    Ok(())
}
