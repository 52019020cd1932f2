//! `ai-gateway-bench`: what an AI gateway adds to a chat completion, measured for Switchyard
//! (its OpenAI-compatible HTTP endpoint and gRPC `AiService`), LiteLLM's proxy and Portkey's
//! gateway, on the same machine in the same run, all in front of one mock OpenAI upstream on
//! 127.0.0.1, with the mock alone as the floor (see docs/benchmarks.md, "AI gateway").
//!
//! The mock and every gateway run as processes of their own (each in its own process group, so
//! the CPU of a gateway's whole process tree is read from /proc); the load generator runs in this
//! process. It prints a Markdown report on standard output and progress on standard error, and
//! asserts nothing about timings; it exits non-zero if any request failed.

#![allow(clippy::print_stdout)]

mod gateways;
mod load;
#[path = "../machine.rs"]
mod machine;
mod mock;
#[path = "../process.rs"]
mod process;
mod procs;
#[path = "../procstat.rs"]
mod procstat;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::gateways::{Gateway, Tools};
use crate::load::{Accounting, Mode, Shape, Target};
use crate::machine::Machine;
use crate::report::{Report, Row};

/// Every target, in report order: the floor first, then the gateways.
const TARGETS: &[&str] = &[
    "direct",
    "switchyard-http",
    "switchyard-grpc",
    "litellm",
    "portkey",
    "envoy",
];

/// Measures the overhead of AI gateways in front of one mock OpenAI upstream.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Serve the mock upstream (the harness starts itself with this, as a separate process).
    #[command(hide = true)]
    Mock {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        threads: usize,
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

#[derive(Debug, Args)]
struct Bench {
    /// How long each run is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each run goes before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrency levels (closed-loop workers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Targets, comma-separated: direct (the mock alone), switchyard-http, switchyard-grpc,
    /// litellm, portkey, envoy (a plain proxy to the mock).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,switchyard-http,switchyard-grpc,litellm,portkey,envoy"
    )]
    targets: Vec<String>,
    /// Modes, comma-separated: unary, stream.
    #[arg(long, value_delimiter = ',', default_value = "unary,stream")]
    modes: Vec<String>,
    /// Worker threads (Switchyard: TOKIO_WORKER_THREADS) or processes (LiteLLM: --num_workers)
    /// of each gateway (Envoy: --concurrency); Portkey runs one Node.js process whatever this
    /// says.
    #[arg(long, default_value_t = 1)]
    gateway_workers: usize,
    /// Worker threads of the mock upstream.
    #[arg(long, default_value_t = 1)]
    mock_threads: usize,
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long)]
    client_threads: Option<usize>,
    /// The mock's pause between the frames of a stream (the first frame carries the first token).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    stream_interval: Duration,
    /// gRPC: workers sharing one HTTP/2 connection (HTTP targets: one connection per worker).
    #[arg(long, default_value_t = 16)]
    grpc_workers_per_connection: usize,
    /// The `switchyard` binary [default: `switchyard` beside this program].
    #[arg(long, env = "AI_BENCH_SWITCHYARD")]
    switchyard_bin: Option<PathBuf>,
    /// LiteLLM's `litellm` script [default: ~/.cache/switchyard/tools/litellm-venv/bin/litellm].
    #[arg(long, env = "AI_BENCH_LITELLM")]
    litellm: Option<PathBuf>,
    /// Where `@portkey-ai/gateway` is installed (npm --prefix)
    /// [default: ~/.cache/switchyard/tools/portkey].
    #[arg(long, env = "AI_BENCH_PORTKEY_DIR")]
    portkey_dir: Option<PathBuf>,
    /// Node.js, for Portkey.
    #[arg(long, env = "AI_BENCH_NODE", default_value = "node")]
    node: PathBuf,
    /// Envoy's `envoy` program, the plain-proxy reference
    /// [default: ~/.cache/switchyard/tools/envoy-venv/bin/envoy].
    #[arg(long, env = "AI_BENCH_ENVOY")]
    envoy: Option<PathBuf>,
    /// Stream through Portkey too. Off by default: @portkey-ai/gateway 1.15.2 on Node.js answers
    /// every OpenAI stream with HTTP 500 (`TypeError: immutable` in `updateHeaders`,
    /// Portkey-AI/gateway issues 1389 and 1550).
    #[arg(long)]
    portkey_stream: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Internal::Mock {
        addr,
        threads,
        interval,
    }) = cli.command
    {
        return match mock::serve(addr, threads, interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let client_threads = cli.bench.client_threads.unwrap_or(cpus).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("bench-client")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.bench, client_threads)) {
        Ok(report) => {
            println!("{}", report.markdown());
            if report.error_count() > 0 {
                eprintln!(
                    "error: {} requests failed; the figures above are not valid",
                    report.error_count()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tools directory of docs/benchmarks.md: `~/.cache/switchyard/tools`.
fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/switchyard/tools")
}

fn tools(bench: &Bench) -> anyhow::Result<Tools> {
    let switchyard = match &bench.switchyard_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("switchyard"),
    };
    Ok(Tools {
        switchyard,
        litellm: bench
            .litellm
            .clone()
            .unwrap_or_else(|| tools_dir().join("litellm-venv/bin/litellm")),
        node: bench.node.clone(),
        portkey: bench
            .portkey_dir
            .clone()
            .unwrap_or_else(|| tools_dir().join("portkey")),
        envoy: bench
            .envoy
            .clone()
            .unwrap_or_else(|| tools_dir().join("envoy-venv/bin/envoy")),
    })
}

/// The gateway process serving `target`; `None` for the mock alone.
fn gateway_of(target: &str) -> Option<Gateway> {
    match target {
        "switchyard-http" | "switchyard-grpc" => Some(Gateway::Switchyard),
        "litellm" => Some(Gateway::Litellm),
        "portkey" => Some(Gateway::Portkey),
        "envoy" => Some(Gateway::Envoy),
        _ => None,
    }
}

fn parse_modes(modes: &[String]) -> anyhow::Result<Vec<Mode>> {
    modes
        .iter()
        .map(|mode| match mode.as_str() {
            "unary" => Ok(Mode::Unary),
            "stream" => Ok(Mode::Stream),
            other => bail!("unknown mode `{other}` (unary, stream)"),
        })
        .collect()
}

async fn execute(bench: Bench, client_threads: usize) -> anyhow::Result<Report> {
    if bench.concurrency.is_empty() || bench.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1");
    }
    if let Some(unknown) = bench
        .targets
        .iter()
        .find(|t| !TARGETS.contains(&t.as_str()))
    {
        bail!("unknown target `{unknown}` ({})", TARGETS.join(", "));
    }
    let modes = parse_modes(&bench.modes)?;
    let mut gateways: Vec<Gateway> = bench.targets.iter().filter_map(|t| gateway_of(t)).collect();
    gateways.sort_unstable();
    gateways.dedup();
    let tools = tools(&bench)?;
    tools.check(&gateways)?;

    let machine = Machine::detect();
    eprintln!(
        "machine: {} CPUs ({}), {}; harness build: {}",
        machine.cpus, machine.cpu_model, machine.kernel, machine.profile
    );
    if machine.profile != "release" {
        eprintln!(
            "warning: this is a {} build; measure a release build (--release)",
            machine.profile
        );
    }
    // Nothing else should be running: the gateways, the mock and the client share the CPUs.
    if let Some(busy) = procs::busy_cores(Duration::from_secs(1)).await
        && busy > 0.2
    {
        eprintln!("warning: the machine is busy before the run ({busy:.2} cores in use)");
    }

    let dir = tempfile::Builder::new()
        .prefix("ai-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (mock, mock_addr) =
        gateways::start_mock(dir.path(), bench.mock_threads, bench.stream_interval).await?;
    eprintln!("mock upstream on {mock_addr}");

    let mut settings = vec![
        format!(
            "command: `{}`",
            std::env::args().collect::<Vec<_>>().join(" ")
        ),
        format!(
            "each run: {} warm-up, then {} measured; closed-loop workers, one HTTP/1.1 keep-alive \
             connection per worker (gRPC: {} workers per HTTP/2 connection); load generator: {} \
             threads in the harness's process",
            humantime::format_duration(bench.warmup),
            humantime::format_duration(bench.duration),
            bench.grpc_workers_per_connection,
            client_threads
        ),
        format!(
            "mock upstream: its own process, {} thread(s); a stream is 7 writes {} apart (8 with \
             `stream_options.include_usage`), the first with the first token",
            bench.mock_threads,
            humantime::format_duration(bench.stream_interval)
        ),
        format!(
            "gateway workers: {} (Switchyard: tokio worker threads; LiteLLM: uvicorn worker \
             processes; Portkey: always one Node.js process; Envoy: --concurrency)",
            bench.gateway_workers
        ),
    ];
    if gateways.contains(&Gateway::Portkey)
        && modes.contains(&Mode::Stream)
        && !bench.portkey_stream
    {
        settings.push(
            "portkey: unary only; its streams fail with HTTP 500 (`TypeError: immutable`, \
             Portkey-AI/gateway issues 1389 and 1550); --portkey-stream tries anyway"
                .to_owned(),
        );
    }
    settings.extend(
        tools
            .versions(&gateways)
            .await
            .into_iter()
            .map(|v| format!("gateway: {v}")),
    );
    let mut report = Report {
        machine,
        settings,
        rows: Vec::new(),
    };

    let order = |target: &str| TARGETS.iter().position(|t| *t == target).unwrap_or(0);
    let accounting = |gateway: Option<u32>| Accounting {
        gateway,
        mock: mock.pid,
        mock_addr,
    };
    if bench.targets.iter().any(|t| t == "direct") {
        let target = gateways::direct_target(mock_addr)?;
        let rows = measure(
            &bench,
            "direct",
            order("direct"),
            &target,
            &modes,
            accounting(None),
        )
        .await?;
        report.rows.extend(rows);
    }
    for gateway in gateways {
        eprintln!("starting {}", gateway.name());
        let running = gateways::start(gateway, &tools, mock_addr, bench.gateway_workers)
            .await
            .with_context(|| format!("starting {}", gateway.name()))?;
        for (name, target) in &running.targets {
            if !bench.targets.iter().any(|t| t == name) {
                continue;
            }
            let modes: Vec<Mode> = modes
                .iter()
                .copied()
                .filter(|mode| {
                    gateway != Gateway::Portkey || *mode == Mode::Unary || bench.portkey_stream
                })
                .collect();
            let rows = measure(
                &bench,
                name,
                order(name),
                target,
                &modes,
                accounting(Some(running.process.pid)),
            )
            .await?;
            report.rows.extend(rows);
        }
        eprintln!("stopping {}", gateway.name());
        running.process.stop().await;
    }
    mock.stop().await;
    Ok(report)
}

/// Every mode at every concurrency against one target.
async fn measure(
    bench: &Bench,
    name: &'static str,
    order: usize,
    target: &Target,
    modes: &[Mode],
    accounting: Accounting,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &mode in modes {
        for &concurrency in &bench.concurrency {
            eprintln!(
                "running {name} {} at concurrency {concurrency} ({:?} warm-up, {:?} measured)",
                mode.as_str(),
                bench.warmup,
                bench.duration
            );
            let shape = Shape {
                concurrency,
                grpc_workers_per_connection: bench.grpc_workers_per_connection,
                warmup: bench.warmup,
                duration: bench.duration,
            };
            let measurement = load::run(target, mode, shape, accounting)
                .await
                .with_context(|| format!("running {name} {}", mode.as_str()))?;
            let row = Row {
                target: name,
                order,
                mode,
                concurrency,
                measurement,
            };
            row.print_progress();
            rows.push(row);
        }
    }
    Ok(rows)
}
