//! Rate limits per tenant, principal and route: a GCRA bucket per rule and key, and the
//! `RateLimit-*` headers that tell callers where they stand. Buckets live in this replica's memory
//! (governor), or in Redis, shared by every replica, when `gateway.api.rate_limit_redis` is set.

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
    /// Names the rule's buckets in Redis: replicas with the same rule share them, and a changed
    /// rule starts afresh.
    id: String,
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

/// GCRA in one atomic step on the Redis server's clock. KEYS[1]: the bucket (its theoretical
/// arrival time, µs); ARGV: the emission interval and the burst. Returns allowed (0 or 1), calls
/// remaining, µs until a call would be allowed, µs until the bucket is full again.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
";

/// How the gateway talks to Redis: a call waits at most this long for it, since every API call
/// waits for its count.
pub fn connection_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_millis(250)))
        .set_number_of_retries(1)
}

/// How often a failing Redis is logged, at most.
const REDIS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Buckets shared by every replica.
struct Shared {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    last_logged: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Every configured rule.
pub struct RateLimits {
    rules: Vec<Rule>,
    clock: DefaultClock,
    checks: AtomicU64,
    shared: Option<Shared>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("rules", &self.rules)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The rules, each naming `*`, a service or a method in `methods` (`package.Service.Method`),
    /// with their buckets in `redis` if given.
    pub fn new(
        rules: &[RateLimitRule],
        methods: &HashSet<String>,
        redis: Option<redis::aio::ConnectionManager>,
    ) -> Result<Self, String> {
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
            let per: Vec<String> = rule.per.iter().map(|d| format!("{d:?}")).collect();
            built.push(Rule {
                id: format!(
                    "{}|{}|{}|{}",
                    rule.route,
                    per.join(","),
                    rule.requests,
                    rule.period.as_micros()
                ),
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
            shared: redis.map(|connection| Shared {
                connection,
                script: redis::Script::new(GCRA),
                last_logged: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Counts a call of `method` by `principal` of `tenant` against every rule that names it.
    pub async fn check(&self, tenant: &str, principal: &str, method: &str) -> Verdict {
        if self.shared.is_none()
            && self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
        {
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
            let Some(counted) = self.count(rule, &key).await else {
                continue;
            };
            let policy = format!("{};w={}", rule.requests, rule.period.as_secs().max(1));
            match counted {
                Counted::Allowed { remaining, reset } => {
                    let standing = Standing {
                        limit: rule.requests,
                        remaining,
                        reset,
                        policy,
                    };
                    if tightest
                        .as_ref()
                        .is_none_or(|t| standing.remaining < t.remaining)
                    {
                        tightest = Some(standing);
                    }
                }
                Counted::Refused { retry_after, reset } => {
                    return Verdict::Limited {
                        standing: Standing {
                            limit: rule.requests,
                            remaining: 0,
                            reset,
                            policy,
                        },
                        retry_after,
                    };
                }
            }
        }
        tightest.map_or(Verdict::Unlimited, Verdict::Allowed)
    }

    /// Counts one call in `rule`'s bucket `key`; `None` when the shared store cannot answer, in
    /// which case the call is let through (an outage of Redis must not stop the APIs).
    async fn count(&self, rule: &Rule, key: &str) -> Option<Counted> {
        let interval = rule.period / rule.requests;
        let Some(shared) = &self.shared else {
            return Some(match rule.limiter.check_key(&key.to_owned()) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    Counted::Allowed {
                        remaining,
                        reset: interval * rule.requests.saturating_sub(remaining),
                    }
                }
                Err(not_until) => Counted::Refused {
                    retry_after: not_until.wait_time_from(self.clock.now()),
                    reset: interval * rule.requests,
                },
            });
        };
        let bucket = format!("switchyard:ratelimit:{}:{key}", rule.id);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let answer: redis::RedisResult<(u8, u32, u64, u64)> = shared
            .script
            .key(bucket)
            .arg(interval_us)
            .arg(rule.requests)
            .invoke_async(&mut shared.connection.clone())
            .await;
        match answer {
            Ok((1, remaining, _, reset)) => Some(Counted::Allowed {
                remaining,
                reset: Duration::from_micros(reset),
            }),
            Ok((_, _, retry_after, reset)) => Some(Counted::Refused {
                retry_after: Duration::from_micros(retry_after),
                reset: Duration::from_micros(reset),
            }),
            Err(err) => {
                metrics::counter!("switchyard_gateway_rate_limit_store_errors_total").increment(1);
                let mut last = shared.last_logged.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= REDIS_LOG_EVERY) {
                    *last = Some(std::time::Instant::now());
                    tracing::warn!(error = %err, "rate limits cannot reach Redis: calls are let through");
                }
                None
            }
        }
    }
}

/// One call counted in one bucket.
enum Counted {
    Allowed {
        remaining: u32,
        reset: Duration,
    },
    Refused {
        retry_after: Duration,
        reset: Duration,
    },
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

    /// Three calls of one principal and route allowed twice a minute, then another route and
    /// another principal, as `limits` counts them. Principals are new on every run, so that a run
    /// within a minute of the last finds fresh buckets in a shared Redis.
    async fn per_principal_and_route(first: &RateLimits, second: &RateLimits) {
        let p = uuid::Uuid::new_v4().to_string();
        let q = uuid::Uuid::new_v4().to_string();
        let tenant = "t";
        let remaining = |verdict: Verdict| match verdict {
            Verdict::Allowed(standing) => Some(standing.remaining),
            _ => None,
        };
        assert_eq!(remaining(first.check(tenant, &p, "a.S.Get").await), Some(1));
        assert_eq!(
            remaining(second.check(tenant, &p, "a.S.Get").await),
            Some(0)
        );
        let Verdict::Limited {
            retry_after,
            standing,
        } = first.check(tenant, &p, "a.S.Get").await
        else {
            panic!("a third call in the minute must be limited");
        };
        assert!(
            retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(30),
            "{retry_after:?}"
        );
        assert_eq!(standing.policy, "2;w=60");
        // Another route, another principal: their own buckets. Another service: no rule.
        assert_eq!(
            remaining(second.check(tenant, &p, "a.S.List").await),
            Some(1)
        );
        assert_eq!(remaining(first.check(tenant, &q, "a.S.Get").await), Some(1));
        assert_eq!(first.check(tenant, &p, "b.T.Do").await, Verdict::Unlimited);
    }

    fn route_rules() -> Vec<RateLimitRule> {
        vec![rule(
            "a.S.*",
            &[LimitDimension::Principal, LimitDimension::Route],
            2,
        )]
    }

    #[tokio::test]
    async fn buckets_are_kept_per_tenant_principal_and_route() {
        let limits = RateLimits::new(&route_rules(), &methods(), None).unwrap();
        per_principal_and_route(&limits, &limits).await;
    }

    #[tokio::test]
    async fn replicas_share_their_buckets_through_redis() {
        let url = std::env::var("SWITCHYARD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let connect = || async {
            redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_manager_with_config(connection_config())
                .await
                .expect("the test Redis (tests/run starts it)")
        };
        // Two replicas, one count: the principal's third call is refused by either.
        let first = RateLimits::new(&route_rules(), &methods(), Some(connect().await)).unwrap();
        let second = RateLimits::new(&route_rules(), &methods(), Some(connect().await)).unwrap();
        per_principal_and_route(&first, &second).await;
    }

    #[tokio::test]
    async fn an_outage_of_redis_lets_calls_through() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        /// Stops the test's own redis-server however the test ends.
        struct Server(std::process::Child);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let server = Server(
            std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (tests/run installs it)"),
        );
        let url = format!("redis://127.0.0.1:{port}");
        let mut manager = None;
        for _ in 0..100 {
            let client = redis::Client::open(url.as_str()).unwrap();
            if let Ok(connected) = client
                .get_connection_manager_with_config(connection_config())
                .await
            {
                manager = Some(connected);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let limits = RateLimits::new(&route_rules(), &methods(), manager).unwrap();
        assert!(matches!(
            limits.check("t", "p", "a.S.Get").await,
            Verdict::Allowed(_)
        ));
        drop(server);
        let started = std::time::Instant::now();
        assert_eq!(limits.check("t", "p", "a.S.Get").await, Verdict::Unlimited);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_tightest_rule_is_reported_and_unknown_routes_refused() {
        let limits = RateLimits::new(
            &[
                rule("*", &[LimitDimension::Tenant], 100),
                rule("b.T.Do", &[LimitDimension::Tenant], 5),
            ],
            &methods(),
            None,
        )
        .unwrap();
        let Verdict::Allowed(standing) = limits.check("t", "p", "b.T.Do").await else {
            panic!("allowed");
        };
        assert_eq!((standing.limit, standing.remaining), (5, 4));
        assert!(
            RateLimits::new(
                &[rule("a.S.Nope", &[LimitDimension::Tenant], 1)],
                &methods(),
                None
            )
            .is_err()
        );
        assert!(
            RateLimits::new(
                &[rule("z.*", &[LimitDimension::Tenant], 1)],
                &methods(),
                None
            )
            .is_err()
        );
    }
}
