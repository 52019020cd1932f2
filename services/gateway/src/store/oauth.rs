//! OAuth clients, pending authorizations (states) and connections.

use switchyard_oauth::Provider;
use switchyard_store::{Db, Row, StoreError, Value};

use crate::domain::oauth::{Connection, ConnectionState, OAuthClient};

/// The tables, in the subset both stores take.
pub(super) const MIGRATION: &str = "
    CREATE TABLE oauth_clients (
        tenant TEXT NOT NULL,
        provider TEXT NOT NULL,
        client_id TEXT NOT NULL,
        secret_credential TEXT NOT NULL,
        base_url TEXT,
        create_time BIGINT NOT NULL,
        PRIMARY KEY (tenant, provider)
    );
    CREATE TABLE oauth_states (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        provider TEXT NOT NULL,
        verifier TEXT NOT NULL,
        scopes TEXT NOT NULL,
        expire_time BIGINT NOT NULL,
        consumed BOOLEAN NOT NULL
    );
    CREATE TABLE connections (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        provider TEXT NOT NULL,
        account_id TEXT NOT NULL,
        account_name TEXT NOT NULL,
        requested_scopes TEXT NOT NULL,
        granted_scopes TEXT NOT NULL,
        state TEXT NOT NULL,
        token_credential TEXT NOT NULL,
        expire_time BIGINT,
        create_time BIGINT NOT NULL,
        update_time BIGINT NOT NULL,
        UNIQUE (tenant, provider, account_id)
    );
";

/// When the background refresher may look at a connection again after failing to refresh it.
pub(super) const REFRESH_RETRY: &str = "
    ALTER TABLE connections ADD COLUMN refresh_retry_at BIGINT;
";

/// Pending single sign-on logins.
pub(super) const SSO_STATES: &str = "
    CREATE TABLE sso_states (
        id TEXT PRIMARY KEY,
        verifier TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expire_time BIGINT NOT NULL,
        consumed BOOLEAN NOT NULL
    );
";

/// Who is refreshing a connection, and until when: one replica at a time.
pub(super) const REFRESH_LEASES: &str = "
    ALTER TABLE connections ADD COLUMN refresh_lease_until BIGINT;
    CREATE INDEX connections_by_expiry ON connections (state, expire_time);
";

fn decode(column: usize, what: &str) -> StoreError {
    StoreError::Decode {
        column,
        message: format!("not a valid {what}"),
    }
}

fn provider(row: &Row, column: usize) -> Result<Provider, StoreError> {
    let name: String = row.get(column)?;
    Provider::parse(&name).ok_or_else(|| decode(column, "provider"))
}

fn list(row: &Row, column: usize) -> Result<Vec<String>, StoreError> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text).map_err(|_| decode(column, "scope list"))
}

fn json_list(items: &[String]) -> Value {
    Value::Text(serde_json::json!(items).to_string())
}

pub(crate) async fn upsert_client(db: &Db, client: &OAuthClient) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO oauth_clients (tenant, provider, client_id, secret_credential, base_url, create_time) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, provider) DO UPDATE SET \
         client_id = excluded.client_id, secret_credential = excluded.secret_credential, \
         base_url = excluded.base_url",
        &[
            client.tenant.as_str().into(),
            client.provider.as_str().into(),
            client.client_id.as_str().into(),
            client.secret_credential.as_str().into(),
            client.base_url.as_deref().map_or(Value::Null, Value::from),
            switchyard_store::now_micros().into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn client(
    db: &Db,
    tenant: &str,
    provider: Provider,
) -> Result<Option<OAuthClient>, StoreError> {
    let Some(row) = db
        .query_opt(
            "SELECT tenant, provider, client_id, secret_credential, base_url FROM oauth_clients \
             WHERE tenant = $1 AND provider = $2",
            &[tenant.into(), provider.as_str().into()],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(OAuthClient {
        tenant: row.get(0)?,
        provider: self::provider(&row, 1)?,
        client_id: row.get(2)?,
        secret_credential: row.get(3)?,
        base_url: row.get(4)?,
    }))
}

/// A pending authorization: what the callback needs besides the signed state.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub tenant: String,
    pub provider: Provider,
    pub verifier: String,
    pub scopes: Vec<String>,
}

pub(crate) async fn insert_state(
    db: &Db,
    id: &str,
    pending: &Pending,
    expire_time: i64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO oauth_states (id, tenant, provider, verifier, scopes, expire_time, consumed) \
         VALUES ($1, $2, $3, $4, $5, $6, FALSE)",
        &[
            id.into(),
            pending.tenant.as_str().into(),
            pending.provider.as_str().into(),
            pending.verifier.as_str().into(),
            json_list(&pending.scopes),
            expire_time.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Marks row `id` of `table` (a pending authorization or login) consumed and returns its
/// `columns` the first time, `None` ever after; expired rows are deleted on the way.
async fn consume(
    db: &Db,
    table: &str,
    columns: &str,
    id: &str,
    now: i64,
) -> Result<Option<Row>, StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(
        &format!("DELETE FROM {table} WHERE expire_time < $1"),
        &[now.into()],
    )
    .await?;
    let consumed = tx
        .execute(
            &format!("UPDATE {table} SET consumed = TRUE WHERE id = $1 AND consumed = FALSE"),
            &[id.into()],
        )
        .await?;
    let row = tx
        .query_opt(
            &format!("SELECT {columns} FROM {table} WHERE id = $1"),
            &[id.into()],
        )
        .await?;
    tx.commit().await?;
    Ok(row.filter(|_| consumed == 1))
}

/// Consumes a state: its pending authorization the first time, `None` ever after.
pub(crate) async fn consume_state(
    db: &Db,
    id: &str,
    now: i64,
) -> Result<Option<Pending>, StoreError> {
    let Some(row) = consume(
        db,
        "oauth_states",
        "tenant, provider, verifier, scopes",
        id,
        now,
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Pending {
        tenant: row.get(0)?,
        provider: provider(&row, 1)?,
        verifier: row.get(2)?,
        scopes: list(&row, 3)?,
    }))
}

const CONNECTION_COLUMNS: &str = "id, tenant, provider, account_id, account_name, \
    requested_scopes, granted_scopes, state, token_credential, expire_time, create_time, update_time";

fn connection_from(row: &Row) -> Result<Connection, StoreError> {
    let state: String = row.get(7)?;
    Ok(Connection {
        id: row.get(0)?,
        tenant: row.get(1)?,
        provider: provider(row, 2)?,
        account_id: row.get(3)?,
        account_name: row.get(4)?,
        requested_scopes: list(row, 5)?,
        granted_scopes: list(row, 6)?,
        state: match state.as_str() {
            "active" => ConnectionState::Active,
            "needs_reauth" => ConnectionState::NeedsReauth,
            _ => return Err(decode(7, "connection state")),
        },
        token_credential: row.get(8)?,
        expire_time: row.get(9)?,
        create_time: row.get(10)?,
        update_time: row.get(11)?,
    })
}

fn state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Active => "active",
        ConnectionState::NeedsReauth => "needs_reauth",
    }
}

/// Inserts `connection`, or, for an account already connected, updates that one (keeping its
/// id); returns the connection as stored.
pub(crate) async fn upsert_connection(
    db: &Db,
    connection: &Connection,
) -> Result<Connection, StoreError> {
    db.execute(
        &format!(
            "INSERT INTO connections ({CONNECTION_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (tenant, provider, account_id) DO UPDATE SET \
             account_name = excluded.account_name, requested_scopes = excluded.requested_scopes, \
             granted_scopes = excluded.granted_scopes, state = excluded.state, \
             token_credential = excluded.token_credential, expire_time = excluded.expire_time, \
             update_time = excluded.update_time"
        ),
        &connection_values(connection),
    )
    .await?;
    db.query_opt(
        &format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections \
             WHERE tenant = $1 AND provider = $2 AND account_id = $3"
        ),
        &[
            connection.tenant.as_str().into(),
            connection.provider.as_str().into(),
            connection.account_id.as_str().into(),
        ],
    )
    .await?
    .as_ref()
    .map(connection_from)
    .transpose()?
    .ok_or(StoreError::NoRow)
}

fn connection_values(connection: &Connection) -> Vec<Value> {
    vec![
        connection.id.as_str().into(),
        connection.tenant.as_str().into(),
        connection.provider.as_str().into(),
        connection.account_id.as_str().into(),
        connection.account_name.as_str().into(),
        json_list(&connection.requested_scopes),
        json_list(&connection.granted_scopes),
        state_name(connection.state).into(),
        connection.token_credential.as_str().into(),
        connection.expire_time.map_or(Value::Null, Value::from),
        connection.create_time.into(),
        connection.update_time.into(),
    ]
}

/// Writes a connection's token state after a refresh or a refusal.
pub(crate) async fn update_connection(db: &Db, connection: &Connection) -> Result<(), StoreError> {
    db.execute(
        "UPDATE connections SET granted_scopes = $1, state = $2, expire_time = $3, \
         update_time = $4 WHERE id = $5",
        &[
            json_list(&connection.granted_scopes),
            state_name(connection.state).into(),
            connection.expire_time.map_or(Value::Null, Value::from),
            connection.update_time.into(),
            connection.id.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn connection(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<Connection>, StoreError> {
    db.query_opt(
        &format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant = $1 AND id = $2"),
        &[tenant.into(), id.into()],
    )
    .await?
    .as_ref()
    .map(connection_from)
    .transpose()
}

/// The token set credential of the tenant's connection to `account_id`, if there is one.
pub(crate) async fn account_token_credential(
    db: &Db,
    tenant: &str,
    provider: Provider,
    account_id: &str,
) -> Result<Option<String>, StoreError> {
    db.query_opt(
        "SELECT token_credential FROM connections \
         WHERE tenant = $1 AND provider = $2 AND account_id = $3",
        &[tenant.into(), provider.as_str().into(), account_id.into()],
    )
    .await?
    .map(|row| row.get(0))
    .transpose()
}

pub(crate) async fn list_connections(
    db: &Db,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Connection>, StoreError> {
    super::rows_by_id(
        db,
        CONNECTION_COLUMNS,
        "connections",
        "",
        tenant,
        after,
        limit,
    )
    .await?
    .iter()
    .map(connection_from)
    .collect()
}

pub(crate) async fn delete_connection(db: &Db, tenant: &str, id: &str) -> Result<bool, StoreError> {
    Ok(db
        .execute(
            "DELETE FROM connections WHERE tenant = $1 AND id = $2",
            &[tenant.into(), id.into()],
        )
        .await?
        > 0)
}

/// Claims the right to refresh connection `id` until `until`; false if another holds it.
pub(crate) async fn claim_refresh(
    db: &Db,
    id: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    Ok(db
        .execute(
            "UPDATE connections SET refresh_lease_until = $1 WHERE id = $2 \
             AND (refresh_lease_until IS NULL OR refresh_lease_until < $3)",
            &[until.into(), id.into(), now.into()],
        )
        .await?
        == 1)
}

/// Gives the refresh of connection `id` up.
pub(crate) async fn release_refresh(db: &Db, id: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE connections SET refresh_lease_until = NULL WHERE id = $1",
        &[id.into()],
    )
    .await?;
    Ok(())
}

/// Keeps the background refresher away from a connection until `until`.
pub(crate) async fn defer_refresh(db: &Db, id: &str, until: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE connections SET refresh_retry_at = $1 WHERE id = $2",
        &[until.into(), id.into()],
    )
    .await?;
    Ok(())
}

/// Active connections, of every tenant, whose token expires before `before`, soonest first,
/// less those whose last background refresh failed within its back-off: otherwise a hundred
/// stuck connections would keep every other from being refreshed ahead.
pub(crate) async fn expiring_connections(
    db: &Db,
    now: i64,
    before: i64,
    limit: usize,
) -> Result<Vec<Connection>, StoreError> {
    db.query(
        &format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE state = 'active' \
             AND expire_time IS NOT NULL AND expire_time < $1 \
             AND (refresh_retry_at IS NULL OR refresh_retry_at < $3) \
             ORDER BY expire_time LIMIT $2"
        ),
        &[before.into(), (limit as i64).into(), now.into()],
    )
    .await?
    .iter()
    .map(connection_from)
    .collect()
}

pub(crate) async fn insert_sso_state(
    db: &Db,
    id: &str,
    verifier: &str,
    nonce: &str,
    expire_time: i64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO sso_states (id, verifier, nonce, expire_time, consumed) \
         VALUES ($1, $2, $3, $4, FALSE)",
        &[id.into(), verifier.into(), nonce.into(), expire_time.into()],
    )
    .await?;
    Ok(())
}

/// Consumes a login's state: its PKCE verifier and nonce the first time, `None` ever after.
pub(crate) async fn consume_sso_state(
    db: &Db,
    id: &str,
    now: i64,
) -> Result<Option<(String, String)>, StoreError> {
    match consume(db, "sso_states", "verifier, nonce", id, now).await? {
        Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
        None => Ok(None),
    }
}
