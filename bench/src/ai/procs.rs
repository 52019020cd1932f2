//! Where the CPU time of a run went, from Linux's `/proc`: the gateway's process tree, the
//! mock's, the load generator (this process), and everything else on the machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::procstat::parse_stat;

/// Clock ticks per second in `/proc` (`USER_HZ`, fixed at 100 by the Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    gateway: u64,
    mock: u64,
    client: u64,
    machine_busy: u64,
}

/// Average cores used over a window, and the CPU seconds of the gateway and the mock.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// The gateway's process tree (0 for the direct runs).
    pub gateway_cores: f64,
    /// The mock upstream.
    pub mock_cores: f64,
    /// The load generator (this process).
    pub client_cores: f64,
    /// Everything else on the machine: noise, unless the run is alone on it.
    pub other_cores: f64,
    /// CPU seconds of the gateway over the window.
    pub gateway_seconds: f64,
    /// CPU seconds of the mock over the window.
    pub mock_seconds: f64,
}

/// Reads the counters of the gateway tree rooted at `gateway`, the mock tree at `mock`, and this
/// process; `None` off Linux.
pub fn sample(gateway: Option<u32>, mock: u32) -> Option<Sample> {
    let table = process_table();
    let (_, client) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(Sample {
        at: Instant::now(),
        gateway: gateway.map_or(0, |pid| tree_ticks(&table, pid)),
        mock: tree_ticks(&table, mock),
        client,
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
    let gateway = delta(before.gateway, after.gateway);
    let mock = delta(before.mock, after.mock);
    let client = delta(before.client, after.client);
    let machine = delta(before.machine_busy, after.machine_busy);
    Some(Usage {
        gateway_cores: gateway / seconds,
        mock_cores: mock / seconds,
        client_cores: client / seconds,
        other_cores: (machine - gateway - mock - client).max(0.0) / seconds,
        gateway_seconds: gateway,
        mock_seconds: mock,
    })
}

/// pid → (parent pid, utime + stime) of every process.
fn process_table() -> HashMap<u32, (u32, u64)> {
    let mut table = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((ppid, ticks)) = parse_ppid_ticks(&stat)
        {
            table.insert(pid, (ppid, ticks));
        }
    }
    table
}

/// CPU ticks of `root` and all its descendants.
fn tree_ticks(table: &HashMap<u32, (u32, u64)>, root: u32) -> u64 {
    table
        .iter()
        .filter(|(pid, _)| {
            let mut current = **pid;
            for _ in 0..64 {
                if current == root {
                    return true;
                }
                match table.get(&current) {
                    Some((parent, _)) if *parent != 0 && *parent != current => current = *parent,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, (_, ticks))| ticks)
        .sum()
}

/// The fields after the command name of a `/proc/.../stat` line.
fn fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 1..)?.split_whitespace().collect())
}

/// `(ppid, utime + stime)` of a `/proc/.../stat` line.
fn parse_ppid_ticks(stat: &str) -> Option<(u32, u64)> {
    let fields = fields(stat)?;
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let (_, ticks) = parse_stat(stat)?;
    Some((ppid, ticks))
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

/// The busy share of the machine's CPUs over `window` (0 to the number of CPUs), measured now:
/// the harness checks that the machine is quiet before it starts.
pub async fn busy_cores(window: Duration) -> Option<f64> {
    let before = machine_busy()?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let after = machine_busy()?;
    Some(after.saturating_sub(before) as f64 / TICKS_PER_SECOND / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::{parse_ppid_ticks, parse_stat, tree_ticks};
    use std::collections::HashMap;

    #[test]
    fn stat_lines_are_parsed() {
        let line = "1234 (node) S 77 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("node", 281)));
        assert_eq!(parse_ppid_ticks(line), Some((77, 281)));
        let odd = "99 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 3)));
    }

    #[test]
    fn trees_add_up_their_descendants() {
        let table: HashMap<u32, (u32, u64)> = [
            (1, (0, 1000)),
            (10, (1, 5)),
            (11, (10, 7)),
            (12, (11, 11)),
            (20, (1, 100)),
        ]
        .into_iter()
        .collect();
        assert_eq!(tree_ticks(&table, 10), 23);
        assert_eq!(tree_ticks(&table, 20), 100);
    }
}
