//! A circuit breaker per deployment: after `failure_threshold` retryable failures in a row, a
//! deployment is skipped for `open_for`; then one request probes it, and its outcome closes the
//! circuit or opens it again. Requests are not sent where they would most likely fail, and a
//! recovered deployment is found again without an operator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others are turned away until it reports.
    Probing,
}

/// Whether a deployment may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send normally.
    Allowed,
    /// Send: this request is the probe of a half-open circuit.
    Probe,
    /// Skip: the circuit is open.
    Rejected,
}

/// The breakers of every deployment.
#[derive(Debug)]
pub struct Breakers {
    failure_threshold: u32,
    open_for: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    /// Breakers that open after `failure_threshold` failures in a row, for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Breakers {
            failure_threshold: failure_threshold.max(1),
            open_for,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    fn circuits(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        self.circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `deployment` may be tried now.
    pub fn admit(&self, deployment: &str) -> Admission {
        let mut circuits = self.circuits();
        let circuit = circuits
            .entry(deployment.to_owned())
            .or_insert(Circuit::Closed { failures: 0 });
        match *circuit {
            Circuit::Closed { .. } => Admission::Allowed,
            Circuit::Open { until } if Instant::now() >= until => {
                *circuit = Circuit::Probing;
                Admission::Probe
            }
            Circuit::Open { .. } | Circuit::Probing => Admission::Rejected,
        }
    }

    /// Reports a call's outcome: `healthy` is false for failures that say the deployment is in
    /// trouble (rate limits, overload, outages, timeouts), true otherwise.
    pub fn report(&self, deployment: &str, healthy: bool) {
        let mut circuits = self.circuits();
        let circuit = circuits
            .entry(deployment.to_owned())
            .or_insert(Circuit::Closed { failures: 0 });
        let next = match (*circuit, healthy) {
            (_, true) => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < self.failure_threshold => {
                Circuit::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => {
                tracing::warn!(deployment, open_for = ?self.open_for, "circuit opened");
                metrics::counter!("switchyard_ai_circuit_opened_total", "deployment" => deployment.to_owned()).increment(1);
                Circuit::Open {
                    until: Instant::now() + self.open_for,
                }
            }
        };
        *circuit = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_back() {
        let breakers = Breakers::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert_eq!(breakers.admit("d"), Admission::Allowed);
            breakers.report("d", false);
        }
        assert_eq!(breakers.admit("d"), Admission::Allowed);
        breakers.report("d", false);
        assert_eq!(
            breakers.admit("d"),
            Admission::Rejected,
            "open after 3 failures"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breakers.admit("d"), Admission::Probe);
        assert_eq!(
            breakers.admit("d"),
            Admission::Rejected,
            "one probe at a time"
        );
        breakers.report("d", false);
        assert_eq!(
            breakers.admit("d"),
            Admission::Rejected,
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breakers.admit("d"), Admission::Probe);
        breakers.report("d", true);
        assert_eq!(
            breakers.admit("d"),
            Admission::Allowed,
            "a good probe closes it"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let breakers = Breakers::new(2, Duration::from_secs(60));
        breakers.report("d", false);
        breakers.report("d", true);
        breakers.report("d", false);
        assert_eq!(breakers.admit("d"), Admission::Allowed);
        assert_eq!(breakers.admit("other"), Admission::Allowed);
    }
}
