//! Usage records: one per call to a provider, written off the request path.
//!
//! Handlers hand records to a bounded buffer and return at once; a writer task commits them in
//! batches (group commit), at least every `ai.usage_flush_interval`, and flushes everything left
//! when the process shuts down. A crash can lose what arrived since the last flush, at most one
//! interval. When the buffer is full, records are dropped, counted in
//! `switchyard_ai_usage_dropped_total` and logged: a response never waits for its record.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_store::{Db, Migration, Row, Tx, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::error::Result;
use crate::domain::model::Usage;

/// The service's schema history.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "usage records",
    postgres: include_str!("../migrations/postgres/0001_usage.sql"),
    sqlite: include_str!("../migrations/sqlite/0001_usage.sql"),
}];

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 500;

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// Its id.
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// Start, microseconds since the epoch.
    pub time: i64,
    /// The caller.
    pub principal: String,
    /// The request's tags.
    pub tags: BTreeMap<String, String>,
    /// The provider.
    pub provider: String,
    /// The catalogue model.
    pub model: String,
    /// The deployment.
    pub deployment: String,
    /// Tokens.
    pub usage: Usage,
    /// Cost in micro-USD.
    pub cost_micros: i64,
    /// Wall time.
    pub latency: Duration,
    /// Time to the first streamed output.
    pub time_to_first_token: Option<Duration>,
    /// "OK" or a gRPC code name.
    pub result_code: String,
    /// The failure's reason.
    pub error_reason: String,
    /// The end user.
    pub end_user_id: String,
    /// Which try of its request, from 1.
    pub attempt: u32,
    /// The request (completion id).
    pub request_id: String,
}

/// Hands records to the writer.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    sender: mpsc::Sender<UsageRecord>,
}

impl UsageRecorder {
    /// Queues a record; never waits.
    pub fn record(&self, record: UsageRecord) {
        if let Err(err) = self.sender.try_send(record) {
            metrics::counter!("switchyard_ai_usage_dropped_total").increment(1);
            tracing::error!(error = %err, "usage record dropped: the write buffer is full or closed");
        }
    }
}

/// Starts the writer; it stops, after flushing, when `shutdown` is cancelled.
pub fn start(
    db: Db,
    flush_interval: Duration,
    buffer: usize,
    shutdown: CancellationToken,
) -> (UsageRecorder, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(buffer);
    let writer = tokio::spawn(write_loop(db, receiver, flush_interval, shutdown));
    (UsageRecorder { sender }, writer)
}

async fn write_loop(
    db: Db,
    mut receiver: mpsc::Receiver<UsageRecord>,
    flush_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<UsageRecord> = Vec::new();
    let mut ticker = tokio::time::interval(flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => flush(&db, &mut pending).await,
            received = receiver.recv() => match received {
                Some(record) => {
                    pending.push(record);
                    if pending.len() >= MAX_BATCH {
                        flush(&db, &mut pending).await;
                    }
                }
                None => break,
            },
        }
    }
    // Shutdown: take whatever is still buffered, then write it all.
    receiver.close();
    while let Some(record) = receiver.recv().await {
        pending.push(record);
    }
    while !pending.is_empty() {
        let before = pending.len();
        flush(&db, &mut pending).await;
        if pending.len() == before {
            tracing::error!(
                lost = before,
                "usage records could not be written at shutdown"
            );
            return;
        }
    }
}

async fn flush(db: &Db, pending: &mut Vec<UsageRecord>) {
    while !pending.is_empty() {
        let take = pending.len().min(MAX_BATCH);
        let batch: Vec<UsageRecord> = pending.drain(..take).collect();
        match write_batch(db, &batch).await {
            Ok(()) => {
                metrics::counter!("switchyard_ai_usage_written_total").increment(batch.len() as u64)
            }
            Err(err) => {
                // Kept for the next flush: the store may be back by then.
                tracing::error!(error = %err, records = batch.len(), "writing usage records failed");
                pending.splice(0..0, batch);
                return;
            }
        }
    }
}

async fn write_batch(db: &Db, batch: &[UsageRecord]) -> Result<()> {
    let mut tx = db.begin().await?;
    for rows in batch.chunks(ROWS_PER_STATEMENT) {
        insert(&mut tx, rows).await?;
        // The embedded store runs statements on the calling worker: yielding between them keeps
        // a batch from stalling the requests that share the worker (docs/benchmarks.md).
        tokio::task::yield_now().await;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows per INSERT: one statement for many rows costs less than a statement a row, and 25 rows
/// of 22 columns stay far below both stores' limits on parameters.
const ROWS_PER_STATEMENT: usize = 25;

const COLUMNS: &str = "tenant, id, time, principal, tags, provider, model, deployment, \
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
    cost_micros, currency, latency_us, ttft_us, result_code, error_reason, end_user_id, attempt, \
    request_id";
const COLUMN_COUNT: usize = 22;

fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn micros(duration: Duration) -> Value {
    Value::Int(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX))
}

fn values(r: &UsageRecord) -> [Value; COLUMN_COUNT] {
    [
        r.tenant.as_str().into(),
        r.id.as_str().into(),
        r.time.into(),
        r.principal.as_str().into(),
        Value::Text(serde_json::to_string(&r.tags).unwrap_or_default()),
        r.provider.as_str().into(),
        r.model.as_str().into(),
        r.deployment.as_str().into(),
        int(r.usage.input_tokens),
        int(r.usage.output_tokens),
        int(r.usage.cache_read_tokens),
        int(r.usage.cache_write_tokens),
        int(r.usage.reasoning_tokens),
        r.cost_micros.into(),
        "USD".into(),
        micros(r.latency),
        r.time_to_first_token.map_or(Value::Null, micros),
        r.result_code.as_str().into(),
        r.error_reason.as_str().into(),
        r.end_user_id.as_str().into(),
        i64::from(r.attempt).into(),
        r.request_id.as_str().into(),
    ]
}

async fn insert(tx: &mut Tx, rows: &[UsageRecord]) -> Result<()> {
    let tuples: Vec<String> = (0..rows.len())
        .map(|row| {
            let placeholders: Vec<String> = (1..=COLUMN_COUNT)
                .map(|column| format!("${}", row * COLUMN_COUNT + column))
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    let params: Vec<Value> = rows.iter().flat_map(values).collect();
    // A retried batch may hold records already written by a flush whose commit was lost.
    tx.execute(
        &format!(
            "INSERT INTO usage_records ({COLUMNS}) VALUES {} ON CONFLICT (tenant, id) DO NOTHING",
            tuples.join(", ")
        ),
        &params,
    )
    .await?;
    Ok(())
}

fn from_row(row: &Row) -> Result<UsageRecord> {
    let tags: String = row.get(4)?;
    let unsigned =
        |index: usize| -> Result<u64> { Ok(u64::try_from(row.get::<i64>(index)?).unwrap_or(0)) };
    let duration = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
    Ok(UsageRecord {
        tenant: row.get(0)?,
        id: row.get(1)?,
        time: row.get(2)?,
        principal: row.get(3)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        provider: row.get(5)?,
        model: row.get(6)?,
        deployment: row.get(7)?,
        usage: Usage {
            input_tokens: unsigned(8)?,
            output_tokens: unsigned(9)?,
            cache_read_tokens: unsigned(10)?,
            cache_write_tokens: unsigned(11)?,
            reasoning_tokens: unsigned(12)?,
        },
        cost_micros: row.get(13)?,
        latency: duration(row.get(15)?),
        time_to_first_token: row.get::<Option<i64>>(16)?.map(duration),
        result_code: row.get(17)?,
        error_reason: row.get(18)?,
        end_user_id: row.get(19)?,
        attempt: u32::try_from(row.get::<i64>(20)?).unwrap_or(0),
        request_id: row.get(21)?,
    })
}

/// Filters of a usage listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Only this model.
    pub model: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// At or after (micros).
    pub start_time: Option<i64>,
    /// Before (micros).
    pub end_time: Option<i64>,
}

/// Records of a tenant, newest first, before the `(time, id)` cursor.
pub async fn list(
    tx: &mut Tx,
    tenant: &str,
    filter: &UsageFilter,
    before: Option<(i64, String)>,
    limit: usize,
) -> Result<Vec<UsageRecord>> {
    let mut params: Vec<Value> = vec![tenant.into()];
    let mut sql = format!("SELECT {COLUMNS} FROM usage_records WHERE tenant = $1");
    let bind = |value: Value, params: &mut Vec<Value>| {
        params.push(value);
        format!("${}", params.len())
    };
    if let Some(model) = &filter.model {
        sql += &format!(" AND model = {}", bind(model.as_str().into(), &mut params));
    }
    if let Some(provider) = &filter.provider {
        sql += &format!(
            " AND provider = {}",
            bind(provider.as_str().into(), &mut params)
        );
    }
    if let Some(start) = filter.start_time {
        sql += &format!(" AND time >= {}", bind(start.into(), &mut params));
    }
    if let Some(end) = filter.end_time {
        sql += &format!(" AND time < {}", bind(end.into(), &mut params));
    }
    if let Some((time, id)) = before {
        let (t1, t2, i) = (
            bind(time.into(), &mut params),
            bind(time.into(), &mut params),
            bind(id.into(), &mut params),
        );
        sql += &format!(" AND (time < {t1} OR (time = {t2} AND id < {i}))");
    }
    sql += &format!(
        " ORDER BY time DESC, id DESC LIMIT {}",
        bind((limit as i64).into(), &mut params)
    );
    let rows = tx.query(&sql, &params).await?;
    rows.iter().map(from_row).collect()
}

#[cfg(test)]
mod tests {
    use switchyard_store::testing;

    use super::*;

    fn record(n: usize) -> UsageRecord {
        UsageRecord {
            id: format!("chatcmpl-{n:03}"),
            tenant: "acme".into(),
            time: 1_700_000_000_000_000 + i64::try_from(n).unwrap(),
            principal: "alice".into(),
            tags: [("team".to_owned(), format!("t{}", n % 3))].into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            deployment: "openai-main".into(),
            usage: Usage {
                input_tokens: 10 + n as u64,
                output_tokens: 5,
                ..Usage::default()
            },
            cost_micros: 7,
            latency: Duration::from_millis(12),
            time_to_first_token: n.is_multiple_of(2).then(|| Duration::from_millis(3)),
            result_code: "OK".into(),
            error_reason: String::new(),
            end_user_id: String::new(),
            attempt: 1,
            request_id: format!("chatcmpl-{n:03}"),
        }
    }

    /// 60 records go in three statements (25, 25, 10 rows); written twice, as a flush retried
    /// after a lost commit would, they are stored once.
    async fn batches_are_written_in_multi_row_statements_once(db: Db) {
        db.migrate(crate::COMPONENT, MIGRATIONS).await.unwrap();
        let batch: Vec<UsageRecord> = (0..60).map(record).collect();
        write_batch(&db, &batch).await.unwrap();
        write_batch(&db, &batch).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let mut stored = list(&mut tx, "acme", &UsageFilter::default(), None, 100)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        stored.reverse();
        assert_eq!(stored, batch);
    }

    #[tokio::test]
    async fn sqlite() {
        let (db, _dir) = testing::sqlite_db().await.unwrap();
        batches_are_written_in_multi_row_statements_once(db).await;
    }

    #[tokio::test]
    async fn postgres() {
        batches_are_written_in_multi_row_statements_once(testing::postgres_db().await.unwrap())
            .await;
    }
}
