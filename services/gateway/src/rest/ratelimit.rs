//! Rate limits per tenant, principal and route: a GCRA bucket (governor) per rule and key, and
//! the `RateLimit-*` headers that tell callers where they stand.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{LimitDimension, RateLimitRule};

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// How often (in checks) idle buckets are dropped, so that memory follows active callers.
const SWEEP_EVERY: u64 = 4096;

#[derive(Debug)]
enum Calls {
    All,
    Service(String),
    Method(String),
}

impl Calls {
    fn covers(&self, method: &str) -> bool {
        match self {
            Calls::All => true,
            Calls::Service(service) => method
                .rsplit_once('.')
                .is_some_and(|(owner, _)| owner == service),
            Calls::Method(name) => name == method,
        }
    }
}

struct Rule {
    calls: Calls,
    per: Vec<LimitDimension>,
    requests: u32,
    period: Duration,
    limiter: Limiter,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("calls", &self.calls)
            .field("per", &self.per)
            .field("requests", &self.requests)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// Where a caller stands against the tightest rule that applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The rule's requests per period.
    pub limit: u32,
    /// Calls left now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// `RateLimit-Policy`: `{limit};w={seconds}`.
    pub policy: String,
}

/// The answer of [`RateLimits::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule names the call.
    Unlimited,
    /// Allowed.
    Allowed(Standing),
    /// Refused until `retry_after`.
    Limited {
        /// The rule that refused.
        standing: Standing,
        /// When a call would be allowed.
        retry_after: Duration,
    },
}

/// Every configured rule.
#[derive(Debug)]
pub struct RateLimits {
    rules: Vec<Rule>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl RateLimits {
    /// The rules, each naming `*`, a service or a method in `methods` (`package.Service.Method`).
    pub fn new(rules: &[RateLimitRule], methods: &HashSet<String>) -> Result<Self, String> {
        let mut built = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let calls = if rule.route == "*" {
                Calls::All
            } else if let Some(service) = rule.route.strip_suffix(".*") {
                if !methods
                    .iter()
                    .any(|m| m.starts_with(&format!("{service}.")))
                {
                    return Err(format!(
                        "gateway.api.rate_limits[{index}]: no service {service}"
                    ));
                }
                Calls::Service(service.to_owned())
            } else if methods.contains(&rule.route) {
                Calls::Method(rule.route.clone())
            } else {
                return Err(format!(
                    "gateway.api.rate_limits[{index}]: no method {}",
                    rule.route
                ));
            };
            let requests = NonZeroU32::new(rule.requests)
                .ok_or_else(|| format!("gateway.api.rate_limits[{index}]: requests is 0"))?;
            let quota = Quota::with_period(rule.period / rule.requests)
                .ok_or_else(|| format!("gateway.api.rate_limits[{index}]: period is too short"))?
                .allow_burst(requests);
            built.push(Rule {
                calls,
                per: rule.per.clone(),
                requests: rule.requests,
                period: rule.period,
                limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            });
        }
        Ok(RateLimits {
            rules: built,
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Counts a call of `method` by `principal` of `tenant` against every rule that names it.
    pub fn check(&self, tenant: &str, principal: &str, method: &str) -> Verdict {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for rule in &self.rules {
                rule.limiter.retain_recent();
            }
        }
        let mut tightest: Option<Standing> = None;
        for rule in self.rules.iter().filter(|rule| rule.calls.covers(method)) {
            let mut key = String::new();
            for dimension in &rule.per {
                key.push_str(match dimension {
                    LimitDimension::Tenant => tenant,
                    LimitDimension::Principal => principal,
                    LimitDimension::Route => method,
                });
                key.push('\u{1f}');
            }
            let policy = format!("{};w={}", rule.requests, rule.period.as_secs().max(1));
            let interval = rule.period / rule.requests;
            match rule.limiter.check_key(&key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let standing = Standing {
                        limit: rule.requests,
                        remaining,
                        reset: interval * rule.requests.saturating_sub(remaining),
                        policy,
                    };
                    if tightest
                        .as_ref()
                        .is_none_or(|t| standing.remaining < t.remaining)
                    {
                        tightest = Some(standing);
                    }
                }
                Err(not_until) => {
                    let retry_after = not_until.wait_time_from(self.clock.now());
                    return Verdict::Limited {
                        standing: Standing {
                            limit: rule.requests,
                            remaining: 0,
                            reset: interval * rule.requests,
                            policy,
                        },
                        retry_after,
                    };
                }
            }
        }
        tightest.map_or(Verdict::Unlimited, Verdict::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: &str, per: &[LimitDimension], requests: u32) -> RateLimitRule {
        RateLimitRule {
            route: route.to_owned(),
            per: per.to_vec(),
            requests,
            period: Duration::from_secs(60),
        }
    }

    fn methods() -> HashSet<String> {
        ["a.S.Get", "a.S.List", "b.T.Do"]
            .iter()
            .map(|m| (*m).to_owned())
            .collect()
    }

    #[test]
    fn buckets_are_kept_per_tenant_principal_and_route() {
        let limits = RateLimits::new(
            &[rule(
                "a.S.*",
                &[LimitDimension::Principal, LimitDimension::Route],
                2,
            )],
            &methods(),
        )
        .unwrap();
        assert!(
            matches!(limits.check("t", "p", "a.S.Get"), Verdict::Allowed(s) if s.remaining == 1)
        );
        assert!(
            matches!(limits.check("t", "p", "a.S.Get"), Verdict::Allowed(s) if s.remaining == 0)
        );
        let Verdict::Limited {
            retry_after,
            standing,
        } = limits.check("t", "p", "a.S.Get")
        else {
            panic!("a third call in the minute must be limited");
        };
        assert!(retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(30));
        assert_eq!(standing.policy, "2;w=60");
        // Another route, another principal: their own buckets. Another service: no rule.
        assert!(matches!(
            limits.check("t", "p", "a.S.List"),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            limits.check("t", "q", "a.S.Get"),
            Verdict::Allowed(_)
        ));
        assert_eq!(limits.check("t", "p", "b.T.Do"), Verdict::Unlimited);
    }

    #[test]
    fn the_tightest_rule_is_reported_and_unknown_routes_refused() {
        let limits = RateLimits::new(
            &[
                rule("*", &[LimitDimension::Tenant], 100),
                rule("b.T.Do", &[LimitDimension::Tenant], 5),
            ],
            &methods(),
        )
        .unwrap();
        let Verdict::Allowed(standing) = limits.check("t", "p", "b.T.Do") else {
            panic!("allowed");
        };
        assert_eq!((standing.limit, standing.remaining), (5, 4));
        assert!(
            RateLimits::new(
                &[rule("a.S.Nope", &[LimitDimension::Tenant], 1)],
                &methods()
            )
            .is_err()
        );
        assert!(RateLimits::new(&[rule("z.*", &[LimitDimension::Tenant], 1)], &methods()).is_err());
    }
}
