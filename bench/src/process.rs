//! The processes a harness starts (a mock upstream, a gateway), each in a process group of its
//! own so that its whole tree can be measured and stopped; shared by the harnesses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// A process this harness started, in a process group of its own, stopped (the whole group)
/// when dropped.
#[derive(Debug)]
pub struct Process {
    /// What it is, for messages.
    pub label: String,
    /// Its pid, which is also its process group id.
    pub pid: u32,
    /// Where its standard output and error go.
    pub log: PathBuf,
    child: Child,
    stopped: bool,
}

impl Process {
    /// Starts `command` in a new process group, with its output in `log`.
    pub fn spawn(label: &str, mut command: Command, log: &Path) -> anyhow::Result<Process> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {label} ({command:?})"))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Process {
            label: label.to_owned(),
            pid,
            log: log.to_owned(),
            child,
            stopped: false,
        })
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Sends SIGTERM to its group, waits up to ten seconds, then SIGKILLs the group.
    pub async fn stop(mut self) {
        signal_group(self.pid, "TERM");
        let waited = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if waited.is_err() {
            eprintln!("{} did not stop on SIGTERM; killing it", self.label);
        }
        // Workers a parent leaves behind are in its group too.
        signal_group(self.pid, "KILL");
        let _ = self.child.wait().await;
        self.stopped = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.stopped {
            signal_group(self.pid, "KILL");
        }
    }
}

/// `kill -<signal> -- -<pgid>`: the group of a process this harness started (its pid is its
/// group id), and nothing else.
fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
