//! The gateway's tables: inbound endpoints and the event log; [`delivery`] the outbound side.

pub mod apikeys;
pub mod delivery;
pub mod oauth;

use std::time::Duration;

use switchyard_store::{Db, Migration, Params, Row, StoreError, Tx, Value};
use switchyard_webhooks::Source;

use crate::domain::{Endpoint, Event, EventFilter, EventSource};

const REQUEST_IDS: &str = "
    ALTER TABLE inbound_endpoints ADD COLUMN request_id TEXT;
    CREATE UNIQUE INDEX inbound_endpoints_by_request_id ON inbound_endpoints (tenant, request_id);
";

/// The gateway's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "inbound endpoints and events",
        postgres: "
        CREATE TABLE inbound_endpoints (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            source TEXT NOT NULL,
            credential TEXT,
            display_name TEXT NOT NULL,
            tolerance_ms BIGINT,
            sns_topic_arn TEXT,
            create_time BIGINT NOT NULL,
            delete_time BIGINT
        );
        CREATE INDEX inbound_endpoints_by_tenant ON inbound_endpoints (tenant, id);
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            source TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            type TEXT NOT NULL,
            subject TEXT,
            time BIGINT NOT NULL,
            receive_time BIGINT NOT NULL,
            data TEXT NOT NULL,
            headers TEXT NOT NULL,
            content_type TEXT NOT NULL,
            raw_body BYTEA NOT NULL,
            UNIQUE (endpoint, delivery_id)
        );
        CREATE INDEX events_by_tenant ON events (tenant, id);
    ",
        sqlite: "
        CREATE TABLE inbound_endpoints (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            source TEXT NOT NULL,
            credential TEXT,
            display_name TEXT NOT NULL,
            tolerance_ms INTEGER,
            sns_topic_arn TEXT,
            create_time INTEGER NOT NULL,
            delete_time INTEGER
        );
        CREATE INDEX inbound_endpoints_by_tenant ON inbound_endpoints (tenant, id);
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            source TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            type TEXT NOT NULL,
            subject TEXT,
            time INTEGER NOT NULL,
            receive_time INTEGER NOT NULL,
            data TEXT NOT NULL,
            headers TEXT NOT NULL,
            content_type TEXT NOT NULL,
            raw_body BLOB NOT NULL,
            UNIQUE (endpoint, delivery_id)
        );
        CREATE INDEX events_by_tenant ON events (tenant, id);
    ",
    },
    Migration {
        version: 2,
        name: "idempotent endpoint creation",
        postgres: REQUEST_IDS,
        sqlite: REQUEST_IDS,
    },
    Migration {
        version: 3,
        name: "subscriptions, deliveries and attempts",
        postgres: delivery::MIGRATION,
        sqlite: delivery::MIGRATION,
    },
    Migration {
        version: 4,
        name: "oauth clients, states and connections",
        postgres: oauth::MIGRATION,
        sqlite: oauth::MIGRATION,
    },
    Migration {
        version: 5,
        name: "connection refresh leases",
        postgres: oauth::REFRESH_LEASES,
        sqlite: oauth::REFRESH_LEASES,
    },
    Migration {
        version: 6,
        name: "single sign-on states",
        postgres: oauth::SSO_STATES,
        sqlite: oauth::SSO_STATES,
    },
    Migration {
        version: 7,
        name: "API keys",
        postgres: apikeys::MIGRATION,
        sqlite: apikeys::MIGRATION,
    },
    Migration {
        version: 8,
        name: "connection refresh back-off",
        postgres: oauth::REFRESH_RETRY,
        sqlite: oauth::REFRESH_RETRY,
    },
];

fn optional(text: Option<&str>) -> Value {
    text.map_or(Value::Null, Value::from)
}

fn corrupt(column: usize, what: &str) -> StoreError {
    StoreError::Decode {
        column,
        message: format!("not a valid {what}"),
    }
}

const ENDPOINT_COLUMNS: &str =
    "id, tenant, source, credential, display_name, tolerance_ms, sns_topic_arn, create_time";

fn endpoint_from(row: &Row) -> Result<Endpoint, StoreError> {
    let source: String = row.get(2)?;
    let tolerance: Option<i64> = row.get(5)?;
    Ok(Endpoint {
        id: row.get(0)?,
        tenant: row.get(1)?,
        source: Source::parse(&source).ok_or_else(|| corrupt(2, "source"))?,
        credential: row.get(3)?,
        display_name: row.get(4)?,
        tolerance: tolerance.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
        sns_topic_arn: row.get(6)?,
        create_time: row.get(7)?,
    })
}

/// Inserts `endpoint`; a unique violation means `request_id` was used by a concurrent call.
pub(crate) async fn insert_endpoint(
    db: &Db,
    endpoint: &Endpoint,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    let tolerance = endpoint.tolerance.map_or(Value::Null, |t| {
        Value::Int(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
    });
    db.execute(
        &format!(
            "INSERT INTO inbound_endpoints ({ENDPOINT_COLUMNS}, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        &[
            endpoint.id.as_str().into(),
            endpoint.tenant.as_str().into(),
            endpoint.source.as_str().into(),
            optional(endpoint.credential.as_deref()),
            endpoint.display_name.as_str().into(),
            tolerance,
            optional(endpoint.sns_topic_arn.as_deref()),
            endpoint.create_time.into(),
            optional(request_id),
        ],
    )
    .await?;
    Ok(())
}

/// The endpoint `request_id` created for `tenant`, deleted or not.
pub(crate) async fn endpoint_by_request_id(
    db: &Db,
    tenant: &str,
    request_id: &str,
) -> Result<Option<Endpoint>, StoreError> {
    db.query_opt(
        &format!(
            "SELECT {ENDPOINT_COLUMNS} FROM inbound_endpoints WHERE tenant = $1 AND request_id = $2"
        ),
        &[tenant.into(), request_id.into()],
    )
    .await?
    .as_ref()
    .map(endpoint_from)
    .transpose()
}

/// A live endpoint by id, whatever its tenant: the receiver's lookup.
pub(crate) async fn endpoint(db: &Db, id: &str) -> Result<Option<Endpoint>, StoreError> {
    db.query_opt(
        &format!(
            "SELECT {ENDPOINT_COLUMNS} FROM inbound_endpoints WHERE id = $1 AND delete_time IS NULL"
        ),
        &[id.into()],
    )
    .await?
    .as_ref()
    .map(endpoint_from)
    .transpose()
}

/// The rows of `tenant` in `table`, in id order after `after`, that meet `condition`: the
/// keyset page every List of this service reads.
pub(crate) async fn rows_by_id(
    db: &Db,
    columns: &str,
    table: &str,
    condition: &str,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {columns} FROM {table} WHERE tenant = {}{condition}",
        params.bind(tenant)
    );
    if let Some(after) = after {
        sql += &format!(" AND id > {}", params.bind(after));
    }
    sql += &format!(" ORDER BY id LIMIT {}", params.bind(limit as i64));
    db.query(&sql, &params.0).await
}

pub(crate) async fn list_endpoints(
    db: &Db,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Endpoint>, StoreError> {
    let condition = " AND delete_time IS NULL";
    rows_by_id(
        db,
        ENDPOINT_COLUMNS,
        "inbound_endpoints",
        condition,
        tenant,
        after,
        limit,
    )
    .await?
    .iter()
    .map(endpoint_from)
    .collect()
}

pub(crate) async fn delete_endpoint(db: &Db, tenant: &str, id: &str) -> Result<bool, StoreError> {
    let deleted = db
        .execute(
            "UPDATE inbound_endpoints SET delete_time = $1 WHERE id = $2 AND tenant = $3 AND delete_time IS NULL",
            &[switchyard_store::now_micros().into(), id.into(), tenant.into()],
        )
        .await?;
    Ok(deleted > 0)
}

/// What [`insert_event`] did.
#[derive(Debug)]
pub struct Stored {
    /// The event's id, or the first delivery's.
    pub event_id: String,
    /// Whether the delivery id had been stored before.
    pub duplicate: bool,
}

/// Inserts `event` unless its endpoint already has its delivery id.
pub(crate) async fn insert_event(tx: &mut Tx, event: &Event) -> Result<Stored, StoreError> {
    // A list of string pairs always serializes.
    let headers = serde_json::to_string(&event.headers).unwrap_or_default();
    let inserted = tx
        .execute(
            "INSERT INTO events (id, tenant, endpoint, source, delivery_id, type, subject, time, \
             receive_time, data, headers, content_type, raw_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (endpoint, delivery_id) DO NOTHING",
            &[
                event.id.as_str().into(),
                event.tenant.as_str().into(),
                event.endpoint.as_str().into(),
                event.source.as_str().into(),
                event.delivery_id.as_str().into(),
                event.event_type.as_str().into(),
                optional(event.subject.as_deref()),
                event.time.into(),
                event.receive_time.into(),
                Value::Text(event.data.to_string()),
                Value::Text(headers),
                event.content_type.as_str().into(),
                Value::Blob(event.raw_body.clone()),
            ],
        )
        .await?;
    if inserted > 0 {
        return Ok(Stored {
            event_id: event.id.clone(),
            duplicate: false,
        });
    }
    let first = tx
        .query_opt(
            "SELECT id FROM events WHERE endpoint = $1 AND delivery_id = $2",
            &[
                event.endpoint.as_str().into(),
                event.delivery_id.as_str().into(),
            ],
        )
        .await?
        .ok_or(StoreError::NoRow)?;
    Ok(Stored {
        event_id: first.get(0)?,
        duplicate: true,
    })
}

const EVENT_COLUMNS: &str = "id, tenant, endpoint, source, delivery_id, type, subject, time, \
    receive_time, data, headers, content_type";

fn event_from(row: &Row, raw_body: Vec<u8>) -> Result<Event, StoreError> {
    let source: String = row.get(3)?;
    let data: String = row.get(9)?;
    let headers: String = row.get(10)?;
    Ok(Event {
        id: row.get(0)?,
        tenant: row.get(1)?,
        endpoint: row.get(2)?,
        source: EventSource::parse(&source).ok_or_else(|| corrupt(3, "source"))?,
        delivery_id: row.get(4)?,
        event_type: row.get(5)?,
        subject: row.get(6)?,
        time: row.get(7)?,
        receive_time: row.get(8)?,
        data: serde_json::from_str(&data).map_err(|_| corrupt(9, "JSON value"))?,
        headers: serde_json::from_str(&headers).map_err(|_| corrupt(10, "header list"))?,
        content_type: row.get(11)?,
        raw_body,
    })
}

pub(crate) async fn list_events(
    db: &Db,
    tenant: &str,
    filter: &EventFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE tenant = {}",
        params.bind(tenant)
    );
    if let Some(endpoint) = &filter.endpoint {
        sql += &format!(" AND endpoint = {}", params.bind(endpoint.as_str()));
    }
    if let Some(source) = filter.source {
        sql += &format!(" AND source = {}", params.bind(source.as_str()));
    }
    if let Some(event_type) = &filter.event_type {
        let exact = params.bind(event_type.as_str());
        // A prefix match without LIKE, whose wildcards the type could contain.
        let prefix = params.bind(format!("{event_type}."));
        let length = params.bind(event_type.len() as i64 + 1);
        sql += &format!(" AND (type = {exact} OR substr(type, 1, {length}) = {prefix})");
    }
    if let Some(subject) = &filter.subject {
        sql += &format!(" AND subject = {}", params.bind(subject.as_str()));
    }
    if let Some(after) = filter.received_after {
        sql += &format!(" AND receive_time >= {}", params.bind(after));
    }
    if let Some(before) = filter.received_before {
        sql += &format!(" AND receive_time < {}", params.bind(before));
    }
    if let Some(before) = before {
        sql += &format!(" AND id < {}", params.bind(before));
    }
    sql += &format!(" ORDER BY id DESC LIMIT {}", params.bind(limit as i64));
    db.query(&sql, &params.0)
        .await?
        .iter()
        .map(|row| event_from(row, Vec::new()))
        .collect()
}

/// Events of `tenant` after the id `after`, received in `[since, before)`, oldest first,
/// without raw bodies.
pub(crate) async fn events_after(
    db: &Db,
    tenant: &str,
    after: &str,
    since: i64,
    before: i64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    db.query(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant = $1 AND id > $2 \
             AND receive_time >= $3 AND receive_time < $4 ORDER BY id LIMIT $5"
        ),
        &[
            tenant.into(),
            after.into(),
            since.into(),
            before.into(),
            (limit as i64).into(),
        ],
    )
    .await?
    .iter()
    .map(|row| event_from(row, Vec::new()))
    .collect()
}

pub(crate) async fn event(db: &Db, tenant: &str, id: &str) -> Result<Option<Event>, StoreError> {
    event_in(&mut db.begin().await?, tenant, id).await
}

/// An event with its raw body, read in `tx`.
pub(crate) async fn event_in(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
) -> Result<Option<Event>, StoreError> {
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {EVENT_COLUMNS}, raw_body FROM events WHERE tenant = $1 AND id = $2"),
            &[tenant.into(), id.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let raw_body: Vec<u8> = row.get(12)?;
    event_from(&row, raw_body).map(Some)
}
