//! Subscriptions, deliveries and their attempts.

use std::time::Duration;

use switchyard_store::{Db, Params, Row, StoreError, Tx, Value};

use crate::domain::EventSource;
use crate::domain::delivery::{Attempt, Delivery, DeliveryState, Subscription, SubscriptionState};

/// The tables, in the subset both stores take (SQLite reads `BIGINT` as `INTEGER`).
pub(super) const MIGRATION: &str = "
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        display_name TEXT NOT NULL,
        event_types TEXT NOT NULL,
        sources TEXT NOT NULL,
        filter TEXT NOT NULL,
        url TEXT NOT NULL,
        signing_credential TEXT NOT NULL,
        retry_schedule TEXT NOT NULL,
        timeout_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        disabled_reason TEXT,
        failing_since BIGINT,
        create_time BIGINT NOT NULL,
        delete_time BIGINT,
        request_id TEXT
    );
    CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant, id);
    CREATE UNIQUE INDEX subscriptions_by_request_id ON subscriptions (tenant, request_id);
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        subscription TEXT NOT NULL,
        event TEXT NOT NULL,
        event_type TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt_count INTEGER NOT NULL,
        schedule_step INTEGER NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        lease_until BIGINT,
        last_status INTEGER NOT NULL,
        last_error TEXT,
        create_time BIGINT NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
    CREATE INDEX deliveries_by_subscription ON deliveries (subscription, id);
    CREATE TABLE attempts (
        delivery TEXT NOT NULL,
        number INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        start_time BIGINT NOT NULL,
        latency_us BIGINT NOT NULL,
        status INTEGER NOT NULL,
        error TEXT,
        request_headers TEXT NOT NULL,
        response_body TEXT NOT NULL,
        PRIMARY KEY (delivery, number)
    );
";

fn decode(column: usize, what: &str) -> StoreError {
    StoreError::Decode {
        column,
        message: format!("not a valid {what}"),
    }
}

fn json<T: serde::de::DeserializeOwned>(
    row: &Row,
    column: usize,
    what: &str,
) -> Result<T, StoreError> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text).map_err(|_| decode(column, what))
}

const SUBSCRIPTION_COLUMNS: &str = "id, tenant, display_name, event_types, sources, filter, url, \
    signing_credential, retry_schedule, timeout_ms, state, disabled_reason, failing_since, create_time";

fn subscription_from(row: &Row) -> Result<Subscription, StoreError> {
    let sources: Vec<String> = json(row, 4, "source list")?;
    let schedule: Vec<u64> = json(row, 8, "retry schedule")?;
    let timeout: i64 = row.get(9)?;
    let state: String = row.get(10)?;
    Ok(Subscription {
        id: row.get(0)?,
        tenant: row.get(1)?,
        display_name: row.get(2)?,
        event_types: json(row, 3, "event type list")?,
        sources: sources
            .iter()
            .map(|name| EventSource::parse(name).ok_or_else(|| decode(4, "source")))
            .collect::<Result<_, _>>()?,
        filter: row.get(5)?,
        url: row.get(6)?,
        signing_credential: row.get(7)?,
        retry_schedule: schedule.into_iter().map(Duration::from_millis).collect(),
        timeout: Duration::from_millis(timeout.max(0).unsigned_abs()),
        state: match state.as_str() {
            "active" => SubscriptionState::Active,
            "disabled" => SubscriptionState::Disabled,
            _ => return Err(decode(10, "subscription state")),
        },
        disabled_reason: row.get(11)?,
        failing_since: row.get(12)?,
        create_time: row.get(13)?,
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) async fn insert_subscription(
    db: &Db,
    subscription: &Subscription,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    let sources: Vec<&str> = subscription.sources.iter().map(|s| s.as_str()).collect();
    let schedule: Vec<i64> = subscription
        .retry_schedule
        .iter()
        .map(|d| millis(*d))
        .collect();
    db.execute(
        &format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, request_id) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', NULL, NULL, $11, $12)"
        ),
        &[
            subscription.id.as_str().into(),
            subscription.tenant.as_str().into(),
            subscription.display_name.as_str().into(),
            Value::Text(serde_json::json!(subscription.event_types).to_string()),
            Value::Text(serde_json::json!(sources).to_string()),
            subscription.filter.as_str().into(),
            subscription.url.as_str().into(),
            subscription.signing_credential.as_str().into(),
            Value::Text(serde_json::json!(schedule).to_string()),
            millis(subscription.timeout).into(),
            subscription.create_time.into(),
            request_id.map_or(Value::Null, Value::from),
        ],
    )
    .await?;
    Ok(())
}

/// A live subscription of `tenant`.
pub(crate) async fn subscription(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
) -> Result<Option<Subscription>, StoreError> {
    tx.query_opt(
        &format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
             WHERE tenant = $1 AND id = $2 AND delete_time IS NULL"
        ),
        &[tenant.into(), id.into()],
    )
    .await?
    .as_ref()
    .map(subscription_from)
    .transpose()
}

pub(crate) async fn subscription_by_request_id(
    db: &Db,
    tenant: &str,
    request_id: &str,
) -> Result<Option<Subscription>, StoreError> {
    db.query_opt(
        &format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant = $1 AND request_id = $2"
        ),
        &[tenant.into(), request_id.into()],
    )
    .await?
    .as_ref()
    .map(subscription_from)
    .transpose()
}

/// The tenant's active subscriptions: the candidates for a new event.
pub(crate) async fn active_subscriptions(
    tx: &mut Tx,
    tenant: &str,
) -> Result<Vec<Subscription>, StoreError> {
    tx.query(
        &format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
             WHERE tenant = $1 AND state = 'active' AND delete_time IS NULL ORDER BY id"
        ),
        &[tenant.into()],
    )
    .await?
    .iter()
    .map(subscription_from)
    .collect()
}

pub(crate) async fn list_subscriptions(
    db: &Db,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Subscription>, StoreError> {
    let condition = " AND delete_time IS NULL";
    super::rows_by_id(
        db,
        SUBSCRIPTION_COLUMNS,
        "subscriptions",
        condition,
        tenant,
        after,
        limit,
    )
    .await?
    .iter()
    .map(subscription_from)
    .collect()
}

/// Marks a subscription deleted; its pending deliveries go to the dead-letter queue.
pub(crate) async fn delete_subscription(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let deleted = tx
        .execute(
            "UPDATE subscriptions SET delete_time = $1 \
             WHERE tenant = $2 AND id = $3 AND delete_time IS NULL",
            &[now.into(), tenant.into(), id.into()],
        )
        .await?;
    Ok(deleted > 0)
}

/// Moves a subscription to `state`; returns whether it changed, so that concurrent attempts that
/// all decide to disable it record one `subscription.disabled`, not one each.
pub(crate) async fn set_subscription_state(
    tx: &mut Tx,
    id: &str,
    state: SubscriptionState,
    reason: Option<&str>,
) -> Result<bool, StoreError> {
    let state = match state {
        SubscriptionState::Active => "active",
        SubscriptionState::Disabled => "disabled",
    };
    let changed = tx
        .execute(
            "UPDATE subscriptions SET state = $1, disabled_reason = $2, failing_since = NULL \
             WHERE id = $3 AND state <> $1",
            &[state.into(), reason.into(), id.into()],
        )
        .await?;
    Ok(changed == 1)
}

/// Records whether the subscription's last attempt failed: the start of a failing stretch is
/// kept until an attempt succeeds.
pub(crate) async fn record_health(
    tx: &mut Tx,
    id: &str,
    failed_at: Option<i64>,
) -> Result<(), StoreError> {
    match failed_at {
        Some(at) => {
            tx.execute(
                "UPDATE subscriptions SET failing_since = $1 WHERE id = $2 AND failing_since IS NULL",
                &[at.into(), id.into()],
            )
            .await?
        }
        None => {
            tx.execute(
                "UPDATE subscriptions SET failing_since = NULL WHERE id = $1",
                &[id.into()],
            )
            .await?
        }
    };
    Ok(())
}

const DELIVERY_COLUMNS: &str = "id, tenant, subscription, event, event_type, state, attempt_count, \
    schedule_step, next_attempt_at, last_status, last_error, create_time";

fn delivery_from(row: &Row) -> Result<Delivery, StoreError> {
    let state: String = row.get(5)?;
    Ok(Delivery {
        id: row.get(0)?,
        tenant: row.get(1)?,
        subscription: row.get(2)?,
        event: row.get(3)?,
        event_type: row.get(4)?,
        state: match state.as_str() {
            "pending" => DeliveryState::Pending,
            "succeeded" => DeliveryState::Succeeded,
            "dead" => DeliveryState::Dead,
            _ => return Err(decode(5, "delivery state")),
        },
        attempt_count: row.get(6)?,
        schedule_step: row.get(7)?,
        next_attempt_at: row.get(8)?,
        last_status: row.get(9)?,
        last_error: row.get(10)?,
        create_time: row.get(11)?,
    })
}

fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Succeeded => "succeeded",
        DeliveryState::Dead => "dead",
    }
}

pub(crate) async fn insert_delivery(tx: &mut Tx, delivery: &Delivery) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ),
        &[
            delivery.id.as_str().into(),
            delivery.tenant.as_str().into(),
            delivery.subscription.as_str().into(),
            delivery.event.as_str().into(),
            delivery.event_type.as_str().into(),
            state_name(delivery.state).into(),
            delivery.attempt_count.into(),
            delivery.schedule_step.into(),
            delivery.next_attempt_at.into(),
            delivery.last_status.into(),
            delivery
                .last_error
                .as_deref()
                .map_or(Value::Null, Value::from),
            delivery.create_time.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries until `lease_until`: rows another replica holds (locked,
/// or leased and not expired) are skipped, so no two workers attempt the same delivery at once,
/// and a worker that died releases its claims when the lease runs out.
pub(crate) async fn claim_due(
    db: &Db,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut tx = db.begin().await?;
    let skip_locked = tx.skip_locked();
    let due = tx
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending' \
                 AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $2) \
                 ORDER BY next_attempt_at LIMIT $3{skip_locked}"
            ),
            &[now.into(), now.into(), (limit as i64).into()],
        )
        .await?
        .iter()
        .map(delivery_from)
        .collect::<Result<Vec<_>, _>>()?;
    for delivery in &due {
        tx.execute(
            "UPDATE deliveries SET lease_until = $1 WHERE id = $2",
            &[lease_until.into(), delivery.id.as_str().into()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(due)
}

/// The outcome of an attempt: the delivery's new state, and the attempt's record.
pub(crate) async fn finish_attempt(
    tx: &mut Tx,
    delivery: &Delivery,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO attempts (delivery, number, tenant, start_time, latency_us, status, error, \
         request_headers, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            attempt.delivery.as_str().into(),
            attempt.number.into(),
            delivery.tenant.as_str().into(),
            attempt.start_time.into(),
            attempt.latency_us.into(),
            attempt.status.into(),
            attempt.error.as_deref().map_or(Value::Null, Value::from),
            Value::Text(serde_json::json!(attempt.request_headers).to_string()),
            attempt.response_body.as_str().into(),
        ],
    )
    .await?;
    update_delivery(tx, delivery).await
}

/// Writes a delivery's state and releases its lease.
pub(crate) async fn update_delivery(tx: &mut Tx, delivery: &Delivery) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE deliveries SET state = $1, attempt_count = $2, schedule_step = $3, \
         next_attempt_at = $4, last_status = $5, last_error = $6, lease_until = NULL WHERE id = $7",
        &[
            state_name(delivery.state).into(),
            delivery.attempt_count.into(),
            delivery.schedule_step.into(),
            delivery.next_attempt_at.into(),
            delivery.last_status.into(),
            delivery
                .last_error
                .as_deref()
                .map_or(Value::Null, Value::from),
            delivery.id.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn delivery(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<Delivery>, StoreError> {
    db.query_opt(
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = $1 AND id = $2"),
        &[tenant.into(), id.into()],
    )
    .await?
    .as_ref()
    .map(delivery_from)
    .transpose()
}

pub(crate) async fn list_deliveries(
    db: &Db,
    tenant: &str,
    subscription: &str,
    state: Option<DeliveryState>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = {} AND subscription = {}",
        params.bind(tenant),
        params.bind(subscription)
    );
    if let Some(state) = state {
        sql += &format!(" AND state = {}", params.bind(state_name(state)));
    }
    if let Some(before) = before {
        sql += &format!(" AND id < {}", params.bind(before));
    }
    sql += &format!(" ORDER BY id DESC LIMIT {}", params.bind(limit as i64));
    db.query(&sql, &params.0)
        .await?
        .iter()
        .map(delivery_from)
        .collect()
}

const ATTEMPT_COLUMNS: &str =
    "delivery, number, start_time, latency_us, status, error, request_headers, response_body";

fn attempt_from(row: &Row) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        delivery: row.get(0)?,
        number: row.get(1)?,
        start_time: row.get(2)?,
        latency_us: row.get(3)?,
        status: row.get(4)?,
        error: row.get(5)?,
        request_headers: json(row, 6, "header list")?,
        response_body: row.get(7)?,
    })
}

pub(crate) async fn attempts(
    db: &Db,
    tenant: &str,
    delivery: &str,
    number: Option<i32>,
) -> Result<Vec<Attempt>, StoreError> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE tenant = {} AND delivery = {}",
        params.bind(tenant),
        params.bind(delivery)
    );
    if let Some(number) = number {
        sql += &format!(" AND number = {}", params.bind(number));
    }
    sql += " ORDER BY number";
    db.query(&sql, &params.0)
        .await?
        .iter()
        .map(attempt_from)
        .collect()
}

/// Sends dead deliveries back to pending, from the first step of the schedule.
pub(crate) async fn replay(
    db: &Db,
    tenant: &str,
    subscription: &str,
    delivery: Option<&str>,
    since: Option<i64>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut params = Params::default();
    let mut sql = format!(
        "UPDATE deliveries SET state = 'pending', schedule_step = 0, next_attempt_at = {}, \
         lease_until = NULL WHERE tenant = {} AND subscription = {} AND state = 'dead'",
        params.bind(now),
        params.bind(tenant),
        params.bind(subscription)
    );
    if let Some(delivery) = delivery {
        sql += &format!(" AND id = {}", params.bind(delivery));
    }
    if let Some(since) = since {
        sql += &format!(" AND create_time >= {}", params.bind(since));
    }
    db.execute(&sql, &params.0).await
}

/// Deletes dead deliveries (and their attempts) created before `before`.
pub(crate) async fn purge_dead(
    db: &Db,
    tenant: &str,
    subscription: &str,
    before: Option<i64>,
) -> Result<u64, StoreError> {
    let mut tx = db.begin().await?;
    let mut params = Params::default();
    let mut condition = format!(
        "tenant = {} AND subscription = {} AND state = 'dead'",
        params.bind(tenant),
        params.bind(subscription)
    );
    if let Some(before) = before {
        condition += &format!(" AND create_time < {}", params.bind(before));
    }
    tx.execute(
        &format!(
            "DELETE FROM attempts WHERE delivery IN (SELECT id FROM deliveries WHERE {condition})"
        ),
        &params.0,
    )
    .await?;
    let purged = tx
        .execute(
            &format!("DELETE FROM deliveries WHERE {condition}"),
            &params.0,
        )
        .await?;
    tx.commit().await?;
    Ok(purged)
}
