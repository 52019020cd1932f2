//! What the process-level benchmarks (`webhook-bench`, `transcode-bench`) share: their `main`,
//! starting the release `switchyard up` as a user would, tokens, and the CPU time of a process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::process::Command;

use crate::process::Process;
use crate::procstat::parse_stat;

/// Runs `run` on a multi-threaded runtime and turns its error into a message and a failure.
pub fn main<F: Future<Output = anyhow::Result<()>>>(run: F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `explicit`, or else the `switchyard` binary beside this program.
pub fn switchyard_binary(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(path) => Ok(path.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("switchyard")),
    }
}

/// A running `switchyard up`.
pub struct Switchyard {
    /// The process, stopped with [`Process::stop`].
    pub process: Process,
    /// Its gRPC listener.
    pub grpc: SocketAddr,
    /// Its HTTP edge.
    pub http: SocketAddr,
}

/// Starts `switchyard up` on fresh ports with its data under `dir`, logging at warn, signing
/// tokens with `secret`; `extra` is appended to the configuration file.
pub async fn start_switchyard(
    binary: &Path,
    dir: &Path,
    secret: &str,
    extra: &str,
) -> anyhow::Result<Switchyard> {
    let config = format!(
        "grpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[log]\nlevel = \"warn\"\n\n[auth]\nhs256_secret = \"{secret}\"\n{extra}",
        dir.join("data").display()
    );
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, config)?;
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("up")
        .env_remove("RUST_LOG");
    let mut process = Process::spawn("switchyard", command, &dir.join("switchyard.log"))?;
    let started = Instant::now();
    loop {
        // `up` prints the addresses it listens on.
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        let find = |prefix: &str| {
            log.lines()
                .find_map(|line| line.trim().strip_prefix(prefix))
                .map(|rest| rest.trim().trim_start_matches("http://").to_owned())
        };
        if let (Some(grpc), Some(http)) = (find("gRPC"), find("HTTP")) {
            return Ok(Switchyard {
                process,
                grpc: grpc.parse()?,
                http: http.parse()?,
            });
        }
        if process.exited() || started.elapsed() > Duration::from_secs(60) {
            bail!("switchyard did not start:\n{}", process.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A day-long token of tenant `bench` signed with `secret`.
pub fn token(secret: &str, subject: &str, scopes: &[&str]) -> anyhow::Result<String> {
    Ok(switchyard_auth::mint(
        secret.as_bytes(),
        &switchyard_auth::TokenRequest {
            issuer: "switchyard".into(),
            audience: "switchyard".into(),
            subject: subject.into(),
            tenant: "bench".into(),
            tenant_claim: "tenant".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(24 * 3600),
        },
    )?)
}

/// `message` with `authorization: Bearer {token}`.
pub fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// An HTTP/1.1 connection with TCP_NODELAY, as a client keeps one alive.
pub async fn connect_http1<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// CPU seconds (user + system) of `pid` and its threads.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // USER_HZ: 100 clock ticks per second by the Linux ABI.
    parse_stat(&stat).map_or(0.0, |(_, ticks)| ticks as f64 / 100.0)
}
