//! The Markdown report: the machine and the settings, a side-by-side summary per mode, and one
//! detailed table per mode with a row per target and concurrency.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::load::{Measurement, Mode, quantile_ms};
use crate::machine::Machine;

/// Other processes using more CPU than this during a run make the report warn.
const NOISY_OTHER_CORES: f64 = 0.10;

/// One target at one concurrency in one mode.
#[derive(Debug)]
pub struct Row {
    /// `direct`, `switchyard-http`...
    pub target: &'static str,
    /// Its position in the target list, to order rows.
    pub order: usize,
    /// Unary or streamed.
    pub mode: Mode,
    /// Closed-loop workers.
    pub concurrency: usize,
    /// What was measured.
    pub measurement: Measurement,
}

impl Row {
    /// A one-line summary on standard error while the benchmark runs.
    pub fn print_progress(&self) {
        let m = &self.measurement;
        let ms = |q| fmt_ms(quantile_ms(&m.total, q));
        eprintln!(
            "  {:.0} req/s, p50 {} ms, p99 {} ms, gateway CPU {} µs/req, errors {}",
            m.throughput(),
            ms(0.5),
            ms(0.99),
            fmt_us(m.gateway_us_per_request()),
            m.error_count()
        );
        if m.error_count() > 0 {
            eprintln!(
                "  !!! {} REQUESTS FAILED: {} !!!",
                m.error_count(),
                errors_text(&m.errors)
            );
        }
    }

    fn cores(&self) -> String {
        self.measurement.cpu.map_or_else(
            || "n/a".to_owned(),
            |cpu| {
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}",
                    cpu.gateway_cores, cpu.mock_cores, cpu.client_cores, cpu.other_cores
                )
            },
        )
    }

    fn errors(&self) -> String {
        let m = &self.measurement;
        if m.error_count() == 0 {
            "0".to_owned()
        } else {
            format!("**{}** ({})", m.error_count(), errors_text(&m.errors))
        }
    }

    fn upstream(&self) -> String {
        self.measurement
            .upstream_per_request()
            .map_or_else(|| "n/a".to_owned(), |calls| format!("{calls:.2}"))
    }
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.3}"))
}

fn fmt_us(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.0}"))
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
    /// The machine and build.
    pub machine: Machine,
    /// Lines of settings and versions, printed as a list.
    pub settings: Vec<String>,
    /// The measured rows, in run order.
    pub rows: Vec<Row>,
}

impl Report {
    /// Failed requests over every row.
    pub fn error_count(&self) -> u64 {
        self.rows.iter().map(|r| r.measurement.error_count()).sum()
    }

    fn sorted(&self, mode: Mode) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.iter().filter(|r| r.mode == mode).collect();
        rows.sort_by_key(|r| (r.concurrency, r.order));
        rows
    }

    /// The direct (mock-only) row of `mode` at `concurrency`, the floor.
    fn floor(&self, mode: Mode, concurrency: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.mode == mode && r.concurrency == concurrency && r.target == "direct")
    }

    /// `value` minus the floor's, in milliseconds, as text.
    fn added(&self, row: &Row, quantile: f64, first_token: bool) -> String {
        let pick = |r: &Row| {
            let histogram = if first_token {
                &r.measurement.first_token
            } else {
                &r.measurement.total
            };
            quantile_ms(histogram, quantile)
        };
        if row.target == "direct" {
            return "—".to_owned();
        }
        match (
            pick(row),
            self.floor(row.mode, row.concurrency).and_then(pick),
        ) {
            (Some(value), Some(floor)) => format!("{:+.3}", value - floor),
            _ => "n/a".to_owned(),
        }
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "### Run of {}\n", m.date);
        let _ = writeln!(
            out,
            "- machine: {} CPUs ({}), {}, {} RAM; harness build: {} profile, {}",
            m.cpus, m.cpu_model, m.kernel, m.memory, m.profile, m.rustc
        );
        for line in &self.settings {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        let errors = self.error_count();
        if errors > 0 {
            let _ = writeln!(
                out,
                "> **WARNING: {errors} requests failed in this run. Rows with errors are not \
                 valid measurements.**\n"
            );
        }
        let busiest = self
            .rows
            .iter()
            .filter_map(|r| r.measurement.cpu.map(|cpu| cpu.other_cores))
            .fold(0.0, f64::max);
        if busiest > NOISY_OTHER_CORES {
            let _ = writeln!(
                out,
                "> **WARNING: other processes used up to {busiest:.2} CPU cores during a run: the \
                 machine was not quiet, and the figures are disturbed by it.**\n"
            );
        }
        for mode in [Mode::Unary, Mode::Stream] {
            if self.rows.iter().any(|r| r.mode == mode) {
                self.summary(&mut out, mode);
            }
        }
        if self.rows.iter().any(|r| r.mode == Mode::Unary) {
            self.unary_table(&mut out);
        }
        if self.rows.iter().any(|r| r.mode == Mode::Stream) {
            self.stream_table(&mut out);
        }
        out
    }

    /// Targets as columns, concurrency levels as rows: p50 (ms), req/s, gateway CPU per request.
    fn summary(&self, out: &mut String, mode: Mode) {
        let rows = self.sorted(mode);
        let mut targets: Vec<(usize, &str)> = rows.iter().map(|r| (r.order, r.target)).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut levels: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
        levels.dedup();
        let what = match mode {
            Mode::Unary => "p50 latency ms / req/s / gateway CPU µs per request",
            Mode::Stream => {
                "p50 time to first token ms / p50 total ms / req/s / gateway CPU µs per request"
            }
        };
        let _ = writeln!(out, "#### Summary, {}: {what}\n", mode.as_str());
        let _ = write!(out, "| concurrency |");
        for (_, target) in &targets {
            let _ = write!(out, " {target} |");
        }
        let _ = write!(out, "\n|--:|");
        for _ in &targets {
            let _ = write!(out, "--:|");
        }
        out.push('\n');
        for level in levels {
            let _ = write!(out, "| {level} |");
            for (_, target) in &targets {
                let cell = rows
                    .iter()
                    .find(|r| r.concurrency == level && r.target == *target)
                    .map_or_else(String::new, |r| {
                        let m = &r.measurement;
                        let total = fmt_ms(quantile_ms(&m.total, 0.5));
                        let rate = format!("{:.0}", m.throughput());
                        let cpu = fmt_us(m.gateway_us_per_request());
                        let cpu = if r.target == "direct" {
                            "—".to_owned()
                        } else {
                            cpu
                        };
                        let flag = if m.error_count() > 0 {
                            " (errors!)"
                        } else {
                            ""
                        };
                        match mode {
                            Mode::Unary => format!("{total} / {rate} / {cpu}{flag}"),
                            Mode::Stream => format!(
                                "{} / {total} / {rate} / {cpu}{flag}",
                                fmt_ms(quantile_ms(&m.first_token, 0.5))
                            ),
                        }
                    });
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out.push('\n');
    }

    fn unary_table(&self, out: &mut String) {
        let _ = writeln!(out, "#### Unary completions\n");
        out.push_str(
            "| target | concurrency | req/s | p50 ms | p90 ms | p99 ms | max ms | p50 added ms \
             | gateway CPU µs/req | CPU cores: gateway / mock / client / other | upstream calls/req \
             | errors |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for row in self.sorted(Mode::Unary) {
            let m = &row.measurement;
            let ms = |q| fmt_ms(quantile_ms(&m.total, q));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.target,
                row.concurrency,
                m.throughput(),
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(1.0),
                self.added(row, 0.5, false),
                fmt_us(m.gateway_us_per_request()),
                row.cores(),
                row.upstream(),
                row.errors()
            );
        }
        out.push('\n');
    }

    fn stream_table(&self, out: &mut String) {
        let _ = writeln!(out, "#### Streamed completions\n");
        out.push_str(
            "| target | concurrency | req/s | first token p50 ms | p90 | p99 | total p50 ms | p90 \
             | p99 | first token p50 added ms | gateway CPU µs/req \
             | CPU cores: gateway / mock / client / other | upstream calls/req | errors |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for row in self.sorted(Mode::Stream) {
            let m = &row.measurement;
            let ttft = |q| fmt_ms(quantile_ms(&m.first_token, q));
            let total = |q| fmt_ms(quantile_ms(&m.total, q));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.target,
                row.concurrency,
                m.throughput(),
                ttft(0.5),
                ttft(0.9),
                ttft(0.99),
                total(0.5),
                total(0.9),
                total(0.99),
                self.added(row, 0.5, true),
                fmt_us(m.gateway_us_per_request()),
                row.cores(),
                row.upstream(),
                row.errors()
            );
        }
        out.push('\n');
    }
}
