//! Where the CPU time of a run went, from Linux's `/proc`: the servers' runtime threads, the load
//! generator's, PostgreSQL's processes, and everything else on the machine. Times are in clock
//! ticks (`USER_HZ`, 100 per second on Linux); elsewhere every figure is `None`.

use std::time::Instant;

use crate::procstat::parse_stat;

/// Clock ticks per second in `/proc` (`USER_HZ`, fixed at 100 by the Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Thread name prefix of the servers' runtime.
pub const SERVER_THREADS: &str = "bench-server";
/// Thread name prefix of the load generator's runtime.
pub const CLIENT_THREADS: &str = "bench-client";

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    server: u64,
    client: u64,
    process: u64,
    postgres: u64,
    machine_busy: u64,
}

/// Average CPU cores used over a window, and the servers' CPU seconds.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// The servers' runtime threads.
    pub server_cores: f64,
    /// The load generator's runtime threads.
    pub client_cores: f64,
    /// PostgreSQL's processes (its backends serve the `-postgres` scenarios, but anything else
    /// using PostgreSQL meanwhile counts here too).
    pub postgres_cores: f64,
    /// Every other process on the machine: noise, unless the run is alone on the machine.
    pub other_cores: f64,
    /// CPU seconds of the servers' runtime threads over the window.
    pub server_seconds: f64,
}

/// Reads the counters now; `None` off Linux.
pub fn sample() -> Option<Sample> {
    let mut server = 0;
    let mut client = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = parse_stat(&stat) else {
            continue;
        };
        if name.starts_with(SERVER_THREADS) {
            server += ticks;
        } else if name.starts_with(CLIENT_THREADS) {
            client += ticks;
        }
    }
    let (_, process) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(Sample {
        at: Instant::now(),
        server,
        client,
        process,
        postgres: postgres_ticks(),
        machine_busy: machine_busy()?,
    })
}

/// The usage between two samples.
pub fn usage(before: Option<Sample>, after: Option<Sample>) -> Option<Usage> {
    let (before, after) = (before?, after?);
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let delta = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SECOND;
    let process = delta(before.process, after.process);
    let postgres = delta(before.postgres, after.postgres);
    let machine = delta(before.machine_busy, after.machine_busy);
    let server_seconds = delta(before.server, after.server);
    Some(Usage {
        server_cores: server_seconds / seconds,
        client_cores: delta(before.client, after.client) / seconds,
        postgres_cores: postgres / seconds,
        other_cores: (machine - process - postgres).max(0.0) / seconds,
        server_seconds,
    })
}

/// CPU ticks of every process named `postgres`.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((name, ticks)) = parse_stat(&stat)
            && name == "postgres"
        {
            total += ticks;
        }
    }
    total
}

/// Busy ticks of the whole machine (every state but idle and iowait), from `/proc/stat`.
fn machine_busy() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some(total - idle)
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_lines_are_parsed() {
        let line = "1234 (bench-server) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("bench-server", 281)));
        let odd = "99 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 3)));
    }
}
