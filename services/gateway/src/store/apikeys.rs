//! API keys: metadata and the SHA-256 of the secret, never the secret.

use switchyard_store::{Db, Row, StoreError, Value};

use crate::domain::apikeys::ApiKey;

pub(super) const MIGRATION: &str = "
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        display_name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        creator TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        expire_time BIGINT,
        revoke_time BIGINT
    );
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant, create_time, id);
";

const COLUMNS: &str =
    "id, tenant, display_name, scopes, creator, create_time, expire_time, revoke_time";

fn key_from(row: &Row) -> Result<ApiKey, StoreError> {
    let scopes: String = row.get(3)?;
    Ok(ApiKey {
        id: row.get(0)?,
        tenant: row.get(1)?,
        display_name: row.get(2)?,
        scopes: serde_json::from_str(&scopes).map_err(|_| StoreError::Decode {
            column: 3,
            message: "not a valid scope list".to_owned(),
        })?,
        creator: row.get(4)?,
        create_time: row.get(5)?,
        expire_time: row.get(6)?,
        revoke_time: row.get(7)?,
    })
}

pub(crate) async fn insert(db: &Db, key: &ApiKey, secret_sha256: &str) -> Result<(), StoreError> {
    db.execute(
        &format!("INSERT INTO api_keys ({COLUMNS}, secret_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        &[
            key.id.as_str().into(),
            key.tenant.as_str().into(),
            key.display_name.as_str().into(),
            Value::Text(serde_json::json!(key.scopes).to_string()),
            key.creator.as_str().into(),
            key.create_time.into(),
            key.expire_time.map_or(Value::Null, Value::from),
            Value::Null,
            secret_sha256.into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn get(db: &Db, tenant: &str, id: &str) -> Result<Option<ApiKey>, StoreError> {
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 AND id = $2"),
        &[tenant.into(), id.into()],
    )
    .await?
    .as_ref()
    .map(key_from)
    .transpose()
}

/// A key by id, whatever its tenant, with the digest of its secret: the gateway's lookup.
pub(crate) async fn by_id(db: &Db, id: &str) -> Result<Option<(ApiKey, String)>, StoreError> {
    let Some(row) = db
        .query_opt(
            &format!("SELECT {COLUMNS}, secret_sha256 FROM api_keys WHERE id = $1"),
            &[id.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((key_from(&row)?, row.get(8)?)))
}

/// Newest first, after the keyset cursor `(create_time, id)` if given.
pub(crate) async fn list(
    db: &Db,
    tenant: &str,
    after: Option<&(i64, String)>,
    limit: usize,
) -> Result<Vec<ApiKey>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match after {
        None => {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 \
                     ORDER BY create_time DESC, id DESC LIMIT $2"
                ),
                &[tenant.into(), limit.into()],
            )
            .await?
        }
        Some((time, id)) => {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 \
                     AND (create_time < $2 OR (create_time = $2 AND id < $3)) \
                     ORDER BY create_time DESC, id DESC LIMIT $4"
                ),
                &[
                    tenant.into(),
                    (*time).into(),
                    id.as_str().into(),
                    limit.into(),
                ],
            )
            .await?
        }
    };
    rows.iter().map(key_from).collect()
}

/// Sets the revocation time of a live key; a revoked key keeps its first.
pub(crate) async fn revoke(db: &Db, tenant: &str, id: &str, now: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE api_keys SET revoke_time = $3 WHERE tenant = $1 AND id = $2 AND revoke_time IS NULL",
        &[tenant.into(), id.into(), now.into()],
    )
    .await?;
    Ok(())
}
