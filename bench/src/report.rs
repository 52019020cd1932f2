//! The report: machine facts, settings, one row per scenario and concurrency, as a Markdown table
//! or as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::Cli;
use crate::load::Measurement;
use crate::machine::Machine;

/// What the report says about each scenario family.
const SCENARIO_NOTES: &[&str] = &[
    "health/*: grpc.health.v1.Health/Check of the whole server (service \"\"), no token.",
    "hello/bare-tonic: helloworld.Greeter/SayHello, a unary RPC with a short string each way: \
     the floor for a small unary RPC on this machine.",
    "health/switchyard: the same check through Switchyard's four layers (observe: request id, \
     span, metrics; shed; deadline; auth, where health is public so no token is verified).",
    "get/switchyard-*: GetCredential, read-only: layers + HS256 JWT verification + one read \
     transaction on the credentials database.",
    "access/switchyard-*: AccessCredential (warm): layers + JWT verification + a read \
     transaction + the secret store's lookup and decryption + an audit-log entry appended in a \
     write transaction (hash-chained, durable commit). It is expected to be far slower than \
     hello; the comparison shows where the time goes.",
    "Client and servers share the machine's CPUs (separate runtimes in one process): \
     throughput is capped by that, and by the client's own cost.",
    "server CPU µs/req: CPU time of the servers' runtime threads per successful request (from \
     /proc); PostgreSQL's own CPU is in the postgres column, not in it. CPU cores: average \
     cores used during the measured window by the servers' threads, the load generator's \
     threads, PostgreSQL's processes, and every other process on the machine (noise).",
];

/// Other processes using more CPU than this during a run make the report warn.
const NOISY_OTHER_CORES: f64 = 0.10;

/// One scenario at one concurrency.
#[derive(Debug)]
pub struct Row {
    scenario: String,
    concurrency: usize,
    measurement: Measurement,
}

impl Row {
    /// The row of a measurement.
    pub fn new(scenario: &str, concurrency: usize, measurement: Measurement) -> Row {
        Row {
            scenario: scenario.to_owned(),
            concurrency,
            measurement,
        }
    }

    /// A one-line summary on standard error while the benchmark runs.
    pub fn print_progress(&self) {
        let m = &self.measurement;
        eprintln!(
            "  {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
            m.throughput(),
            m.quantile_ms(0.5),
            m.quantile_ms(0.99),
            m.error_count()
        );
        if let Some(cpu) = m.cpu {
            eprintln!(
                "  CPU cores used: servers {:.2}, client {:.2}, postgres {:.2}, other {:.2}",
                cpu.server_cores, cpu.client_cores, cpu.postgres_cores, cpu.other_cores
            );
        }
        if m.error_count() > 0 {
            eprintln!(
                "  !!! {} REQUESTS FAILED: {} !!!",
                m.error_count(),
                errors_text(&m.errors)
            );
        }
    }

    fn markdown(&self) -> String {
        let m = &self.measurement;
        let errors = if m.error_count() == 0 {
            "0".to_owned()
        } else {
            format!("**{}** ({})", m.error_count(), errors_text(&m.errors))
        };
        let per_request = m
            .server_cpu_us_per_request()
            .map_or_else(|| "n/a".to_owned(), |us| format!("{us:.0}"));
        let cores = m.cpu.map_or_else(
            || "n/a".to_owned(),
            |cpu| {
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}",
                    cpu.server_cores, cpu.client_cores, cpu.postgres_cores, cpu.other_cores
                )
            },
        );
        format!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            self.scenario,
            self.concurrency,
            m.throughput(),
            m.quantile_ms(0.5),
            m.quantile_ms(0.9),
            m.quantile_ms(0.99),
            m.quantile_ms(0.999),
            m.max_ms(),
            per_request,
            cores,
            errors
        )
    }

    fn json(&self) -> serde_json::Value {
        let m = &self.measurement;
        json!({
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "connections": m.channels,
            "measured_seconds": m.elapsed.as_secs_f64(),
            "requests_ok": m.histogram.len(),
            "requests_per_second": m.throughput(),
            "latency_ms": {
                "mean": m.mean_ms(),
                "p50": m.quantile_ms(0.5),
                "p90": m.quantile_ms(0.9),
                "p99": m.quantile_ms(0.99),
                "p99_9": m.quantile_ms(0.999),
                "max": m.max_ms(),
            },
            "server_cpu_us_per_request": m.server_cpu_us_per_request(),
            "cpu_cores": m.cpu.map(|cpu| json!({
                "servers": cpu.server_cores,
                "client": cpu.client_cores,
                "postgres": cpu.postgres_cores,
                "other": cpu.other_cores,
            })),
            "errors": m.error_count(),
            "errors_by_code": m.errors,
        })
    }
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(label, count)| format!("{label}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole report.
#[derive(Debug)]
pub struct Report {
    machine: Machine,
    command: String,
    warmup: Duration,
    duration: Duration,
    workers_per_connection: usize,
    server_threads: usize,
    client_threads: usize,
    notes: Vec<String>,
    jwt_verify: Duration,
    /// The measured rows, in run order.
    pub rows: Vec<Row>,
}

impl Report {
    /// An empty report for `cli`.
    pub fn new(
        cli: &Cli,
        (server_threads, client_threads): (usize, usize),
        notes: Vec<String>,
        jwt_verify: Duration,
    ) -> Report {
        Report {
            machine: Machine::detect(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            warmup: cli.warmup,
            duration: cli.duration,
            workers_per_connection: cli.workers_per_connection,
            server_threads,
            client_threads,
            notes,
            jwt_verify,
            rows: Vec::new(),
        }
    }

    /// Failed requests over every row.
    pub fn error_count(&self) -> u64 {
        self.rows.iter().map(|r| r.measurement.error_count()).sum()
    }

    /// The most CPU other processes used during one run, in cores.
    fn busiest_other(&self) -> f64 {
        self.rows
            .iter()
            .filter_map(|r| r.measurement.cpu.map(|cpu| cpu.other_cores))
            .fold(0.0, f64::max)
    }

    /// Machine facts on standard error before the runs.
    pub fn print_header(&self, _json: bool) {
        let m = &self.machine;
        eprintln!(
            "machine: {} CPUs ({}), {}, {}; build: {}, {}",
            m.cpus, m.cpu_model, m.kernel, m.memory, m.profile, m.rustc
        );
        if m.profile != "release" {
            eprintln!(
                "warning: this is a {} build; measure a release build (--release)",
                m.profile
            );
        }
    }

    /// Prints the report on standard output.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json())?);
        } else {
            println!("{}", self.markdown());
        }
        Ok(())
    }

    fn json(&self) -> serde_json::Value {
        let m = &self.machine;
        json!({
            "date": m.date,
            "command": self.command,
            "machine": {
                "cpus": m.cpus,
                "cpu_model": m.cpu_model,
                "kernel": m.kernel,
                "memory": m.memory,
            },
            "build": { "profile": m.profile, "rustc": m.rustc },
            "settings": {
                "warmup_seconds": self.warmup.as_secs_f64(),
                "duration_seconds": self.duration.as_secs_f64(),
                "workers_per_connection": self.workers_per_connection,
                "server_runtime_threads": self.server_threads,
                "client_runtime_threads": self.client_threads,
            },
            "jwt_verify_us": self.jwt_verify.as_secs_f64() * 1e6,
            "results": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "errors": self.error_count(),
            "notes": SCENARIO_NOTES.iter().map(|s| (*s).to_owned()).chain(self.notes.iter().cloned()).collect::<Vec<_>>(),
        })
    }

    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        out.push_str(&format!("### Run of {}\n\n", m.date));
        out.push_str(&format!("- command: `{}`\n", self.command));
        out.push_str(&format!(
            "- machine: {} CPUs ({}), {}, {} RAM\n",
            m.cpus, m.cpu_model, m.kernel, m.memory
        ));
        out.push_str(&format!("- build: {} profile, {}\n", m.profile, m.rustc));
        out.push_str(&format!(
            "- each run: {} warm-up, then {} measured; closed-loop workers, {} per HTTP/2 \
             connection; server runtime {} threads, client runtime {} threads, one process\n",
            humantime::format_duration(self.warmup),
            humantime::format_duration(self.duration),
            self.workers_per_connection,
            self.server_threads,
            self.client_threads
        ));
        out.push_str(&format!(
            "- one HS256 token verification (`switchyard_auth::Verifier::verify`, in-process, one \
             thread, before the runs): {:.1} µs\n\n",
            self.jwt_verify.as_secs_f64() * 1e6
        ));
        let errors = self.error_count();
        if errors > 0 {
            out.push_str(&format!(
                "> **WARNING: {errors} requests failed in this run. Rows with errors are not \
                 valid measurements.**\n\n"
            ));
        }
        let busiest = self.busiest_other();
        if busiest > NOISY_OTHER_CORES {
            out.push_str(&format!(
                "> **WARNING: other processes used up to {busiest:.2} CPU cores during a run: the \
                 machine was not quiet, and the figures are disturbed by it.**\n\n"
            ));
        }
        out.push_str(
            "| scenario | concurrency | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms \
             | server CPU µs/req | CPU cores: servers / client / postgres / other | errors |\n",
        );
        out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for row in &self.rows {
            out.push_str(&row.markdown());
            out.push('\n');
        }
        out.push('\n');
        for note in SCENARIO_NOTES
            .iter()
            .copied()
            .chain(self.notes.iter().map(String::as_str))
        {
            out.push_str(&format!("- {note}\n"));
        }
        out
    }
}
