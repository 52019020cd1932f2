//! Outbound delivery: subscriptions, the fan-out of each new event into deliveries (in the
//! event's own commit), and the worker that attempts them on a retry schedule, signed per
//! Standard Webhooks, at least once, with a dead-letter queue.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rand::Rng;
use secrecy::ExposeSecret;
use switchyard_kit::FieldViolation;
use switchyard_store::page;
use switchyard_store::{StoreError, Tx};
use switchyard_webhooks::standard::Key;
use tokio_util::sync::CancellationToken;

use super::{Event, EventSource, Gateway, GatewayError, Micros, Page, micros, page_error};
use crate::store::{self, delivery as db};

/// Svix's schedule: the waits before each retry, the first attempt being immediate.
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// How long an attempt may take when the subscription does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How much of a response body an attempt keeps.
const RESPONSE_PREFIX_BYTES: usize = 4096;

/// Whether a subscription is delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Delivered to.
    Active,
    /// Not delivered to.
    Disabled,
}

/// An outbound webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Generated.
    pub id: String,
    /// The owner.
    pub tenant: String,
    /// For people.
    pub display_name: String,
    /// `push`, `pull_request.*`, `*`.
    pub event_types: Vec<String>,
    /// Empty: all.
    pub sources: Vec<EventSource>,
    /// A CEL expression, or empty.
    pub filter: String,
    /// The destination.
    pub url: String,
    /// `credentials/{id}` with the `whsec_` secret(s).
    pub signing_credential: String,
    /// Waits before each retry.
    pub retry_schedule: Vec<Duration>,
    /// Per attempt.
    pub timeout: Duration,
    /// Delivered to or not.
    pub state: SubscriptionState,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Start of the current stretch of failed attempts.
    pub failing_since: Option<Micros>,
    /// When it was made.
    pub create_time: Micros,
}

/// What CreateSubscription is given.
#[derive(Debug, Clone, Default)]
pub struct NewSubscription {
    /// For people.
    pub display_name: String,
    /// Required.
    pub event_types: Vec<String>,
    /// Empty: all.
    pub sources: Vec<EventSource>,
    /// CEL, or empty.
    pub filter: String,
    /// Required.
    pub url: String,
    /// Required.
    pub signing_credential: String,
    /// Empty: the default.
    pub retry_schedule: Vec<Duration>,
    /// `None`: the default.
    pub timeout: Option<Duration>,
    /// Makes a retried create return the first one's subscription.
    pub request_id: Option<String>,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Answered with a 2xx.
    Succeeded,
    /// In the dead-letter queue.
    Dead,
}

/// One event to one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Generated; the `webhook-id` the destination sees.
    pub id: String,
    /// The owner.
    pub tenant: String,
    /// The subscription's id.
    pub subscription: String,
    /// The event's id.
    pub event: String,
    /// The event's type.
    pub event_type: String,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempt_count: i32,
    /// Retries used of the schedule (a replay starts it again).
    pub schedule_step: i32,
    /// When the next attempt is due.
    pub next_attempt_at: Micros,
    /// The last attempt's HTTP status, 0 if none.
    pub last_status: i32,
    /// The last attempt's transport error.
    pub last_error: Option<String>,
    /// When it was made.
    pub create_time: Micros,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The delivery's id.
    pub delivery: String,
    /// From 1.
    pub number: i32,
    /// When it started.
    pub start_time: Micros,
    /// Until the answer or the failure.
    pub latency_us: i64,
    /// The HTTP status, 0 if none came.
    pub status: i32,
    /// The transport error.
    pub error: Option<String>,
    /// What was sent.
    pub request_headers: Vec<(String, String)>,
    /// The start of the answer.
    pub response_body: String,
}

/// A POST to a destination.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// Where.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
    /// How long it may take.
    pub timeout: Duration,
}

/// A destination's answer.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    /// Its status.
    pub status: u16,
    /// Its Retry-After, in seconds or as a date.
    pub retry_after: Option<Duration>,
    /// The start of its body.
    pub body: String,
}

/// Sends deliveries; the real one passes the SSRF guard.
#[async_trait]
pub trait DeliveryClient: Send + Sync + std::fmt::Debug {
    /// Refuses a destination before it is stored.
    fn check_url(&self, url: &str) -> Result<(), String>;
    /// POSTs `request`; `Err` when no answer came.
    async fn post(&self, request: OutboundRequest) -> Result<OutboundResponse, String>;
}

/// HTTPS through the SSRF guard.
#[derive(Debug, Clone)]
pub struct HttpsDelivery {
    guard: switchyard_kit::outbound::Guard,
    client: reqwest::Client,
}

impl HttpsDelivery {
    /// A client passing `guard`.
    pub fn new(guard: switchyard_kit::outbound::Guard) -> Result<Self, reqwest::Error> {
        let client = guard.client(concat!("switchyard-webhooks/", env!("CARGO_PKG_VERSION")))?;
        Ok(HttpsDelivery { guard, client })
    }
}

#[async_trait]
impl DeliveryClient for HttpsDelivery {
    fn check_url(&self, url: &str) -> Result<(), String> {
        self.guard
            .check_url(url)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    async fn post(&self, request: OutboundRequest) -> Result<OutboundResponse, String> {
        let url = self
            .guard
            .check_url(&request.url)
            .map_err(|err| err.to_string())?;
        let mut builder = self
            .client
            .post(url)
            .timeout(request.timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let mut response = builder.send().await.map_err(|err| {
            // The guard's refusal is the error's source; say it plainly.
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        while body.len() < RESPONSE_PREFIX_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(RESPONSE_PREFIX_BYTES);
        Ok(OutboundResponse {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Retry-After as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = humantime::parse_rfc3339_weak(value).ok().or_else(|| {
        httpdate_seconds(value).map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    })?;
    at.duration_since(SystemTime::now()).ok()
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_seconds(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?
        + 1;
    let text = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    let at = humantime::parse_rfc3339(&text).ok()?;
    at.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Whether `pattern` (`push`, `pull_request.*`, `*`) matches `event_type`.
fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// The variables a filter sees.
fn filter_variables(event: &Event) -> serde_json::Value {
    serde_json::json!({
        "type": event.event_type,
        "source": event.source.as_str(),
        "subject": event.subject.clone().unwrap_or_default(),
        "data": event.data,
        "headers": event.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// A CEL filter compiled once, for evaluating on many events.
#[derive(Debug)]
pub(crate) enum Filter {
    /// No filter: everything matches.
    None,
    /// A compiled expression.
    Cel(cel_interpreter::Program),
    /// An expression that does not compile (refused where filters are made): nothing matches.
    Invalid,
}

impl Filter {
    /// Compiles `text`; empty is no filter.
    pub(crate) fn new(text: &str) -> Filter {
        if text.is_empty() {
            return Filter::None;
        }
        cel_interpreter::Program::compile(text).map_or(Filter::Invalid, Filter::Cel)
    }

    /// Whether `event` passes: true to deliver or list. An expression that fails on this event
    /// (a missing field, a type mismatch) does not match.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let program = match self {
            Filter::None => return true,
            Filter::Invalid => return false,
            Filter::Cel(program) => program,
        };
        let mut context = cel_interpreter::Context::default();
        if let serde_json::Value::Object(fields) = filter_variables(event) {
            for (name, value) in fields {
                if context.add_variable(name, value).is_err() {
                    return false;
                }
            }
        }
        matches!(
            program.execute(&context),
            Ok(cel_interpreter::Value::Bool(true))
        )
    }
}

/// Whether `event` is one of `event_types` (patterns; empty: any) from one of `sources` (empty:
/// any) and passes `filter`: how subscriptions and event streams choose.
pub(crate) fn selects(
    event_types: &[String],
    sources: &[EventSource],
    filter: &Filter,
    event: &Event,
) -> bool {
    (event_types.is_empty()
        || event_types
            .iter()
            .any(|pattern| type_matches(pattern, &event.event_type)))
        && (sources.is_empty() || sources.contains(&event.source))
        && filter.matches(event)
}

/// What is wrong with type patterns and a filter, as field violations under `prefix`.
pub(crate) fn selector_violations(
    prefix: &str,
    event_types: &[String],
    filter: &str,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for pattern in event_types {
        let bare = pattern.strip_suffix('*').unwrap_or(pattern);
        if pattern.is_empty() || bare.contains('*') || pattern.len() > 256 {
            violations.push(FieldViolation::new(
                format!("{prefix}event_types"),
                format!("{pattern:?} is not a type or a prefix ending in *"),
            ));
        }
    }
    if filter.len() > 4096 || filter.contains('\0') {
        violations.push(FieldViolation::new(
            format!("{prefix}filter"),
            "at most 4096 bytes, without NUL characters",
        ));
    } else if !filter.is_empty()
        && let Err(err) = cel_interpreter::Program::compile(filter)
    {
        violations.push(FieldViolation::new(
            format!("{prefix}filter"),
            format!("not a CEL expression: {err}"),
        ));
    }
    violations
}

/// A tenant's active subscriptions with their filters compiled: read and compiled once for
/// all the events of a commit.
#[derive(Debug)]
pub(crate) struct Candidates(Vec<(Subscription, Filter)>);

impl Candidates {
    /// The active subscriptions of `tenant`.
    pub(crate) async fn load(tx: &mut Tx, tenant: &str) -> Result<Candidates, StoreError> {
        let subscriptions = db::active_subscriptions(tx, tenant).await?;
        Ok(Candidates(
            subscriptions
                .into_iter()
                .map(|subscription| {
                    let filter = Filter::new(&subscription.filter);
                    (subscription, filter)
                })
                .collect(),
        ))
    }

    /// Deliveries of `event` to the matching subscriptions, written in `tx`: the event and its
    /// deliveries commit together, so an acknowledged event is never without them.
    pub(crate) async fn fan_out(&self, tx: &mut Tx, event: &Event) -> Result<usize, StoreError> {
        let mut made = 0;
        for (subscription, filter) in &self.0 {
            if selects(
                &subscription.event_types,
                &subscription.sources,
                filter,
                event,
            ) {
                db::insert_delivery(tx, &new_delivery(subscription, event)).await?;
                made += 1;
            }
        }
        Ok(made)
    }
}

/// Deliveries of one event (see [`Candidates::fan_out`]).
pub(crate) async fn fan_out(tx: &mut Tx, event: &Event) -> Result<usize, StoreError> {
    Candidates::load(tx, &event.tenant)
        .await?
        .fan_out(tx, event)
        .await
}

fn new_delivery(subscription: &Subscription, event: &Event) -> Delivery {
    let now = switchyard_store::now_micros();
    Delivery {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        tenant: event.tenant.clone(),
        subscription: subscription.id.clone(),
        event: event.id.clone(),
        event_type: event.event_type.clone(),
        state: DeliveryState::Pending,
        attempt_count: 0,
        schedule_step: 0,
        next_attempt_at: now,
        last_status: 0,
        last_error: None,
        create_time: now,
    }
}

fn id_of<'a>(name: &'a str, prefix: &str, field: &str) -> Result<&'a str, GatewayError> {
    name.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| GatewayError::invalid(field, format!("must be {prefix}{{id}}")))
}

/// The payload a destination receives: the normalized envelope, in Standard Webhooks' shape
/// (`type`, `timestamp`, `data`) with the envelope's other fields beside them.
fn payload(event: &Event) -> Vec<u8> {
    let time = SystemTime::UNIX_EPOCH
        + Duration::from_micros(u64::try_from(event.time).unwrap_or_default());
    serde_json::json!({
        "id": format!("events/{}", event.id),
        "type": event.event_type,
        "timestamp": humantime::format_rfc3339_millis(time).to_string(),
        "source": event.source.as_str(),
        "subject": event.subject,
        "tenant": event.tenant,
        "data": event.data,
    })
    .to_string()
    .into_bytes()
}

/// The wait before retry number `step` (0-based), with up to 10% of jitter either way, no
/// shorter than a Retry-After (up to a day); `None` when the schedule has run out.
fn next_wait(
    schedule: &[Duration],
    step: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let base = *schedule.get(step)?;
    let jitter = base.mul_f64(rand::thread_rng().gen_range(-0.1..=0.1_f64).abs());
    let jittered = if rand::thread_rng().gen_bool(0.5) {
        base + jitter
    } else {
        base.saturating_sub(jitter)
    };
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

impl Gateway {
    /// Creates a subscription after checking its destination against the SSRF guard and its
    /// filter's syntax.
    pub async fn create_subscription(
        &self,
        tenant: &str,
        new: NewSubscription,
    ) -> Result<Subscription, GatewayError> {
        let mut violations = selector_violations("subscription.", &new.event_types, &new.filter);
        if new.event_types.is_empty() {
            violations.push(FieldViolation::new(
                "subscription.event_types",
                "at least one type or pattern (`push`, `pull_request.*`, `*`)",
            ));
        }
        if let Err(err) = self.inner.delivery.check_url(&new.url) {
            violations.push(FieldViolation::new("subscription.url", err));
        }
        if !super::is_credential_name(&new.signing_credential) {
            violations.push(FieldViolation::new(
                "subscription.signing_credential",
                "must be credentials/{id}",
            ));
        }
        if new.retry_schedule.len() > 20
            || new
                .retry_schedule
                .iter()
                .any(|wait| *wait > Duration::from_secs(7 * 24 * 3600))
        {
            violations.push(FieldViolation::new(
                "subscription.retry_schedule",
                "at most 20 waits of at most 7 days",
            ));
        }
        // An attempt must end before its claim does, or another replica could start the same
        // delivery while it is still running.
        let lease = self.inner.delivery_config.lease;
        let longest = (lease / 2).min(Duration::from_secs(60));
        let timeout = new.timeout.unwrap_or(DEFAULT_TIMEOUT.min(longest));
        if timeout.is_zero() || timeout > longest {
            violations.push(FieldViolation::new(
                "subscription.timeout",
                format!(
                    "between 1 ms and {} (60 s, and half of gateway.delivery.lease)",
                    humantime::format_duration(longest)
                ),
            ));
        }
        for (field, value, max) in [
            ("subscription.display_name", new.display_name.as_str(), 256),
            ("subscription.url", new.url.as_str(), 2048),
            ("request_id", new.request_id.as_deref().unwrap_or(""), 128),
        ] {
            if value.len() > max || value.contains('\0') {
                violations.push(FieldViolation::new(
                    field,
                    format!("at most {max} bytes, without NUL characters"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        let request_id = new.request_id.filter(|id| !id.is_empty());
        if let Some(request_id) = &request_id
            && let Some(existing) =
                db::subscription_by_request_id(&self.inner.db, tenant, request_id).await?
        {
            return Ok(existing);
        }
        let subscription = Subscription {
            id: uuid::Uuid::new_v4().simple().to_string(),
            tenant: tenant.to_owned(),
            display_name: new.display_name,
            event_types: new.event_types,
            sources: new.sources,
            filter: new.filter,
            url: new.url,
            signing_credential: new.signing_credential,
            retry_schedule: if new.retry_schedule.is_empty() {
                DEFAULT_RETRY_SCHEDULE.to_vec()
            } else {
                new.retry_schedule
            },
            timeout,
            state: SubscriptionState::Active,
            disabled_reason: None,
            failing_since: None,
            create_time: switchyard_store::now_micros(),
        };
        match db::insert_subscription(&self.inner.db, &subscription, request_id.as_deref()).await {
            Ok(()) => Ok(subscription),
            Err(err) if err.is_unique_violation() => {
                let request_id = request_id.as_deref().unwrap_or_default();
                db::subscription_by_request_id(&self.inner.db, tenant, request_id)
                    .await?
                    .ok_or(GatewayError::Store(err))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// One of the tenant's subscriptions.
    pub async fn get_subscription(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Subscription, GatewayError> {
        let id = id_of(name, "subscriptions/", "name")?;
        let mut tx = self.inner.db.begin().await?;
        db::subscription(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))
    }

    /// A page of the tenant's subscriptions, oldest first.
    pub async fn list_subscriptions(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Subscription>, GatewayError> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint("subscriptions");
        let after: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut items =
            db::list_subscriptions(&self.inner.db, tenant, after.as_deref(), size + 1).await?;
        let next_page_token = page::next_token(&mut items, size, &fingerprint, |d| d.id.clone());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Deletes one of the tenant's subscriptions; its pending deliveries die when next claimed.
    pub async fn delete_subscription(&self, tenant: &str, name: &str) -> Result<(), GatewayError> {
        let id = id_of(name, "subscriptions/", "name")?;
        let mut tx = self.inner.db.begin().await?;
        let deleted =
            db::delete_subscription(&mut tx, tenant, id, switchyard_store::now_micros()).await?;
        tx.commit().await?;
        if deleted {
            Ok(())
        } else {
            Err(GatewayError::NotFound(name.to_owned()))
        }
    }

    /// Enables a disabled subscription.
    pub async fn enable_subscription(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Subscription, GatewayError> {
        let id = id_of(name, "subscriptions/", "name")?;
        let mut tx = self.inner.db.begin().await?;
        if db::subscription(&mut tx, tenant, id).await?.is_none() {
            return Err(GatewayError::NotFound(name.to_owned()));
        }
        db::set_subscription_state(&mut tx, id, SubscriptionState::Active, None).await?;
        let enabled = db::subscription(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))?;
        tx.commit().await?;
        Ok(enabled)
    }

    /// A page of a subscription's deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        subscription: &str,
        state: Option<DeliveryState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Delivery>, GatewayError> {
        let subscription_id = id_of(subscription, "subscriptions/", "subscription")?;
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&format!("{subscription_id}/{state:?}"));
        let before: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut items = db::list_deliveries(
            &self.inner.db,
            tenant,
            subscription_id,
            state,
            before.as_deref(),
            size + 1,
        )
        .await?;
        let next_page_token = page::next_token(&mut items, size, &fingerprint, |d| d.id.clone());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The attempts of one of the tenant's deliveries, oldest first.
    pub async fn list_attempts(
        &self,
        tenant: &str,
        delivery: &str,
    ) -> Result<Vec<Attempt>, GatewayError> {
        let id = id_of(delivery, "deliveries/", "delivery")?;
        if db::delivery(&self.inner.db, tenant, id).await?.is_none() {
            return Err(GatewayError::NotFound(delivery.to_owned()));
        }
        Ok(db::attempts(&self.inner.db, tenant, id, None).await?)
    }

    /// One attempt, `deliveries/{id}/attempts/{n}`.
    pub async fn get_attempt(&self, tenant: &str, name: &str) -> Result<Attempt, GatewayError> {
        let invalid = || GatewayError::invalid("name", "must be deliveries/{id}/attempts/{n}");
        let rest = name.strip_prefix("deliveries/").ok_or_else(invalid)?;
        let (id, number) = rest.split_once("/attempts/").ok_or_else(invalid)?;
        let number: i32 = number.parse().map_err(|_| invalid())?;
        db::attempts(&self.inner.db, tenant, id, Some(number))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))
    }

    /// Sends dead deliveries of a subscription back to pending: one, or all since a time.
    pub async fn replay_deliveries(
        &self,
        tenant: &str,
        subscription: &str,
        delivery: Option<&str>,
        since: Option<Micros>,
    ) -> Result<u64, GatewayError> {
        let subscription_name = subscription;
        let subscription = id_of(subscription, "subscriptions/", "subscription")?;
        let delivery = delivery
            .map(|name| id_of(name, "deliveries/", "delivery"))
            .transpose()?;
        self.get_subscription(tenant, subscription_name).await?;
        let replayed = db::replay(
            &self.inner.db,
            tenant,
            subscription,
            delivery,
            since,
            switchyard_store::now_micros(),
        )
        .await?;
        self.inner.wake.notify_one();
        Ok(replayed)
    }

    /// Deletes a subscription's dead deliveries created before `before` (all if `None`).
    pub async fn purge_dead_letters(
        &self,
        tenant: &str,
        subscription: &str,
        before: Option<Micros>,
    ) -> Result<u64, GatewayError> {
        let id = id_of(subscription, "subscriptions/", "subscription")?;
        self.get_subscription(tenant, subscription).await?;
        Ok(db::purge_dead(&self.inner.db, tenant, id, before).await?)
    }

    /// Stores a `switchyard.test` event and delivers it to one subscription only.
    pub async fn send_test_event(
        &self,
        tenant: &str,
        subscription: &str,
    ) -> Result<Delivery, GatewayError> {
        let target = self.get_subscription(tenant, subscription).await?;
        let event = self.switchyard_event(
            tenant,
            "switchyard.test",
            subscription,
            serde_json::json!({ "message": "a test event from Switchyard" }),
        );
        let delivery = new_delivery(&target, &event);
        let mut tx = self.inner.db.begin().await?;
        store::insert_event(&mut tx, &event).await?;
        db::insert_delivery(&mut tx, &delivery).await?;
        tx.commit().await?;
        self.inner.wake.notify_one();
        Ok(delivery)
    }

    /// Commits one of Switchyard's own events with its deliveries.
    pub(crate) async fn record_event(&self, event: &Event) -> Result<(), GatewayError> {
        let mut tx = self.inner.db.begin().await?;
        store::insert_event(&mut tx, event).await?;
        let deliveries = fan_out(&mut tx, event).await?;
        tx.commit().await?;
        if deliveries > 0 {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    pub(crate) fn switchyard_event(
        &self,
        tenant: &str,
        event_type: &str,
        subject: &str,
        data: serde_json::Value,
    ) -> Event {
        let now = switchyard_store::now_micros();
        let id = uuid::Uuid::now_v7().simple().to_string();
        Event {
            delivery_id: id.clone(),
            id,
            tenant: tenant.to_owned(),
            endpoint: String::new(),
            source: EventSource::Switchyard,
            event_type: event_type.to_owned(),
            subject: Some(subject.to_owned()),
            time: now,
            receive_time: now,
            data,
            headers: Vec::new(),
            content_type: "application/json".to_owned(),
            raw_body: Vec::new(),
        }
    }

    /// Claims the deliveries that are due, at most `concurrency`, and attempts them all at once;
    /// returns how many were attempted. No more is claimed than can start at once: an attempt
    /// queued behind others could start after its lease ran out and be claimed twice.
    pub async fn deliver_due(&self) -> Result<usize, GatewayError> {
        let config = &self.inner.delivery_config;
        let now = switchyard_store::now_micros();
        let lease = micros(SystemTime::now() + config.lease);
        let claim = config.batch.min(config.concurrency).max(1);
        let due = db::claim_due(&self.inner.db, now, lease, claim).await?;
        let count = due.len();
        let mut running = tokio::task::JoinSet::new();
        for delivery in due {
            let gateway = self.clone();
            running.spawn(async move {
                if let Err(err) = gateway.attempt(delivery).await {
                    tracing::error!(error = %err, "recording a delivery attempt failed");
                }
            });
        }
        while running.join_next().await.is_some() {}
        Ok(count)
    }

    async fn attempt(&self, mut delivery: Delivery) -> Result<(), GatewayError> {
        let mut tx = self.inner.db.begin().await?;
        let subscription =
            db::subscription(&mut tx, &delivery.tenant, &delivery.subscription).await?;
        let event = store::event_in(&mut tx, &delivery.tenant, &delivery.event).await?;
        tx.commit().await?;
        let (subscription, event) = match (subscription, event) {
            (Some(subscription), Some(event))
                if subscription.state == SubscriptionState::Active =>
            {
                (subscription, event)
            }
            (subscription, event) => {
                delivery.state = DeliveryState::Dead;
                delivery.last_error = Some(
                    match (subscription, event) {
                        (Some(_), Some(_)) => "the subscription is disabled",
                        _ => "the subscription or the event is gone",
                    }
                    .to_owned(),
                );
                let mut tx = self.inner.db.begin().await?;
                db::update_delivery(&mut tx, &delivery).await?;
                tx.commit().await?;
                return Ok(());
            }
        };

        let body = payload(&event);
        let sent_at = SystemTime::now();
        let timestamp = sent_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = self
            .signature(&subscription, &delivery.id, timestamp, &body)
            .await;
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("webhook-id".to_owned(), delivery.id.clone()),
            ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ];
        let started = Instant::now();
        let outcome = match signature {
            Ok(signature) => {
                headers.push(("webhook-signature".to_owned(), signature));
                self.inner
                    .delivery
                    .post(OutboundRequest {
                        url: subscription.url.clone(),
                        headers: headers.clone(),
                        body,
                        timeout: subscription.timeout,
                    })
                    .await
            }
            Err(err) => Err(err),
        };
        let latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        delivery.attempt_count += 1;
        let attempt = Attempt {
            delivery: delivery.id.clone(),
            number: delivery.attempt_count,
            start_time: micros(sent_at),
            latency_us,
            status: outcome.as_ref().map_or(0, |r| i32::from(r.status)),
            error: outcome.as_ref().err().cloned(),
            request_headers: headers,
            response_body: outcome.as_ref().map(|r| r.body.clone()).unwrap_or_default(),
        };
        delivery.last_status = attempt.status;
        delivery.last_error = attempt.error.clone();
        let now = micros(SystemTime::now());
        let mut disable = None;
        let failed_at = match &outcome {
            Ok(response) if (200..300).contains(&response.status) => {
                delivery.state = DeliveryState::Succeeded;
                None
            }
            Ok(response) if response.status == 410 => {
                delivery.state = DeliveryState::Dead;
                disable = Some("the destination answered 410 Gone".to_owned());
                Some(now)
            }
            failure => {
                let retry_after = failure.as_ref().ok().and_then(|r| r.retry_after);
                let step = usize::try_from(delivery.schedule_step).unwrap_or(usize::MAX);
                match next_wait(&subscription.retry_schedule, step, retry_after) {
                    Some(wait) => {
                        delivery.schedule_step += 1;
                        delivery.next_attempt_at =
                            now + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
                    }
                    None => delivery.state = DeliveryState::Dead,
                }
                let disable_after =
                    i64::try_from(self.inner.delivery_config.disable_after.as_micros())
                        .unwrap_or(i64::MAX);
                if subscription
                    .failing_since
                    .is_some_and(|since| now - since > disable_after)
                {
                    disable = Some(format!(
                        "every attempt failed for more than {}",
                        humantime::format_duration(self.inner.delivery_config.disable_after)
                    ));
                }
                Some(now)
            }
        };
        metrics::counter!(
            "switchyard_webhook_deliveries_total",
            "outcome" => match delivery.state {
                DeliveryState::Succeeded => "succeeded",
                DeliveryState::Pending => "retrying",
                DeliveryState::Dead => "dead",
            }
        )
        .increment(1);
        let mut tx = self.inner.db.begin().await?;
        db::finish_attempt(&mut tx, &delivery, &attempt).await?;
        db::record_health(&mut tx, &subscription.id, failed_at).await?;
        if let Some(reason) = &disable
            && !db::set_subscription_state(
                &mut tx,
                &subscription.id,
                SubscriptionState::Disabled,
                Some(reason),
            )
            .await?
        {
            // Another attempt disabled it first and said so.
            disable = None;
        }
        if let Some(reason) = &disable {
            // An operational event, delivered to whoever subscribes to it.
            let event = self.switchyard_event(
                &subscription.tenant,
                "subscription.disabled",
                &format!("subscriptions/{}", subscription.id),
                serde_json::json!({ "subscription": format!("subscriptions/{}", subscription.id), "reason": reason }),
            );
            store::insert_event(&mut tx, &event).await?;
            fan_out(&mut tx, &event).await?;
        }
        tx.commit().await?;
        if let Some(reason) = disable {
            tracing::warn!(tenant = %subscription.tenant, subscription = %subscription.id, reason, "subscription disabled");
        }
        Ok(())
    }

    /// `webhook-signature`: a `v1` signature with every secret of the subscription's credential.
    async fn signature(
        &self,
        subscription: &Subscription,
        id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Result<String, String> {
        let material = self
            .key(&subscription.tenant, &subscription.signing_credential)
            .await
            .map_err(|_| "the signing secret could not be read".to_owned())?;
        let mut signatures = Vec::new();
        for line in material.expose_secret().lines().map(str::trim) {
            if line.is_empty() {
                continue;
            }
            let key = Key::parse(line)
                .map_err(|_| "the signing credential holds no whsec_ secret".to_owned())?;
            signatures.extend(key.sign(id, timestamp, body));
        }
        if signatures.is_empty() {
            return Err("the signing credential is empty".to_owned());
        }
        Ok(signatures.join(" "))
    }
}

/// Delivers due deliveries until `shutdown`: woken by new deliveries, and at least every
/// `poll_interval` for retries that come due.
pub async fn run(gateway: Gateway, shutdown: CancellationToken) {
    let poll = gateway.inner.delivery_config.poll_interval;
    loop {
        // Checked here too: with a backlog the loop never waits below.
        if shutdown.is_cancelled() {
            return;
        }
        match gateway.deliver_due().await {
            Ok(attempted) if attempted > 0 => continue,
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "claiming deliveries failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = gateway.inner.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns() {
        assert!(type_matches("*", "push"));
        assert!(type_matches("push", "push"));
        assert!(!type_matches("push", "push.x"));
        assert!(type_matches("pull_request.*", "pull_request.opened"));
        assert!(!type_matches("pull_request.*", "pull_request"));
    }

    #[test]
    fn waits_follow_the_schedule_with_jitter_and_honour_retry_after() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..100 {
            let wait = next_wait(&schedule, 0, None).expect("a wait");
            assert!(wait >= Duration::from_secs(9) && wait <= Duration::from_secs(11));
        }
        let asked = next_wait(&schedule, 1, Some(Duration::from_secs(3600))).expect("a wait");
        assert_eq!(asked, Duration::from_secs(3600));
        let capped = next_wait(&schedule, 0, Some(Duration::from_secs(10 * 24 * 3600)));
        assert_eq!(capped, Some(MAX_RETRY_AFTER));
        assert_eq!(next_wait(&schedule, 2, None), None);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            None,
            "in the past"
        );
        assert_eq!(
            httpdate_seconds("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn event(data: serde_json::Value) -> Event {
        Event {
            id: "e".into(),
            tenant: "acme".into(),
            endpoint: "ep".into(),
            source: EventSource::Webhook(switchyard_webhooks::Source::GitHub),
            event_type: "push".into(),
            subject: Some("acme/app".into()),
            time: 0,
            receive_time: 0,
            delivery_id: "d".into(),
            data,
            headers: vec![("x-github-event".into(), "push".into())],
            content_type: "application/json".into(),
            raw_body: Vec::new(),
        }
    }

    fn matches_filter(filter: &str, event: &Event) -> bool {
        Filter::new(filter).matches(event)
    }

    #[test]
    fn cel_filters_see_the_envelope() {
        let push = event(serde_json::json!({"ref": "refs/heads/main", "commits": [1, 2]}));
        assert!(matches_filter("", &push));
        assert!(matches_filter(r#"data.ref == "refs/heads/main""#, &push));
        assert!(matches_filter(
            r#"source == "github" && subject == "acme/app""#,
            &push
        ));
        assert!(matches_filter("size(data.commits) == 2", &push));
        assert!(matches_filter(
            r#"headers["x-github-event"] == "push""#,
            &push
        ));
        assert!(!matches_filter(r#"data.ref == "refs/heads/dev""#, &push));
        assert!(
            !matches_filter("data.missing.field == 1", &push),
            "an error is no match"
        );
        assert!(!matches_filter("1 +", &push));
        // Malformed filters are refused, never a panic.
        for malformed in [
            "(", ")", "a.", "[1,", "{", "\"open", "a[", "a ? b", "!!!!", "1..2", "a.b(", "@",
        ] {
            assert!(
                cel_interpreter::Program::compile(malformed).is_err(),
                "{malformed}"
            );
            assert!(!matches_filter(malformed, &push));
        }
    }
}
