//! Per-tenant request and token quotas, in this process (a later issue makes them shared across
//! replicas). Each limit is a sliding window of one minute, approximated from the current and the
//! previous fixed minute, weighted by how much of the previous one still falls in the window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Limits per minute; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens (input plus output) per minute.
    pub tpm: u64,
}

/// `[ai.quotas]`: the default limits and per-tenant ones.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Limits of tenants not listed.
    pub default: Limits,
    /// Limits by tenant.
    pub tenants: BTreeMap<String, Limits>,
}

/// Which limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Requests per minute.
    Requests {
        /// When a request would fit again.
        retry_after: Duration,
    },
    /// Tokens per minute.
    Tokens {
        /// When the window has room again.
        retry_after: Duration,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    minute: u64,
    current: u64,
    previous: u64,
}

impl Window {
    /// The count over the last minute at `now` (in milliseconds since the epoch).
    fn count(&mut self, now_ms: u64) -> u64 {
        let minute = now_ms / 60_000;
        if minute != self.minute {
            self.previous = if minute == self.minute + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.minute = minute;
        }
        let elapsed = now_ms % 60_000;
        let weight = 60_000 - elapsed;
        self.current + self.previous * weight / 60_000
    }
}

/// The quotas of every tenant.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    windows: Mutex<HashMap<String, (Window, Window)>>,
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

impl Quotas {
    /// Quotas as configured.
    pub fn new(config: QuotaConfig) -> Self {
        Quotas {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, tenant: &str) -> Limits {
        self.config
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.config.default)
    }

    /// Admits one request of `tenant` now, or says which limit it reached and when to retry.
    pub fn admit(&self, tenant: &str) -> Result<(), Exceeded> {
        self.admit_at(tenant, now_ms())
    }

    fn admit_at(&self, tenant: &str, now: u64) -> Result<(), Exceeded> {
        let limits = self.limits(tenant);
        if limits.rpm == 0 && limits.tpm == 0 {
            return Ok(());
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (requests, tokens) = windows.entry(tenant.to_owned()).or_default();
        // Until the current minute ends is when the older part of the window drains away.
        let retry_after = Duration::from_millis(60_000 - now % 60_000);
        if limits.tpm > 0 && tokens.count(now) >= limits.tpm {
            return Err(Exceeded::Tokens { retry_after });
        }
        if limits.rpm > 0 {
            if requests.count(now) >= limits.rpm {
                return Err(Exceeded::Requests { retry_after });
            }
            requests.current += 1;
        }
        Ok(())
    }

    /// Counts the tokens a call of `tenant` used.
    pub fn spend(&self, tenant: &str, tokens: u64) {
        if self.limits(tenant).tpm == 0 {
            return;
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, window) = windows.entry(tenant.to_owned()).or_default();
        window.count(now_ms());
        window.current += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(rpm: u64, tpm: u64) -> Quotas {
        Quotas::new(QuotaConfig {
            default: Limits { rpm: 0, tpm: 0 },
            tenants: BTreeMap::from([("acme".to_owned(), Limits { rpm, tpm })]),
        })
    }

    #[test]
    fn requests_are_limited_per_minute_and_per_tenant() {
        let q = quotas(2, 0);
        let t = 60_000 * 100;
        assert!(q.admit_at("acme", t).is_ok());
        assert!(q.admit_at("acme", t + 1).is_ok());
        assert!(matches!(
            q.admit_at("acme", t + 2),
            Err(Exceeded::Requests { .. })
        ));
        assert!(
            q.admit_at("globex", t + 2).is_ok(),
            "another tenant has no limit"
        );
        // Half a minute into the next minute, half of the previous minute still counts: 1 < 2.
        assert!(q.admit_at("acme", t + 60_000 + 30_000).is_ok());
        // Two minutes later the window is empty.
        assert!(q.admit_at("acme", t + 180_000).is_ok());
    }

    #[test]
    fn tokens_are_limited_after_they_are_spent() {
        let q = quotas(0, 100);
        assert!(q.admit("acme").is_ok());
        q.spend("acme", 150);
        assert!(
            matches!(q.admit("acme"), Err(Exceeded::Tokens { retry_after }) if retry_after <= Duration::from_secs(60))
        );
    }
}
