//! The credentials repository: every SQL statement of the service, written once for both
//! backends of [`switchyard_store`]. Functions take a transaction so callers decide what is
//! atomic.

use switchyard_store::{Migration, Params, Row, StoreError, Tx, Value};

use crate::domain::error::{CredentialError, Result};
use crate::domain::model::{
    AuditEvent, AuditFilter, Credential, CredentialSpec, Kind, ListFilter, Micros, Origin,
    RotationPolicy, State, Version, VersionState,
};

/// The service's schema history.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "credentials, versions, labels and audit events",
        postgres: include_str!("../migrations/postgres/0001_credentials.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_credentials.sql"),
    },
    Migration {
        version: 2,
        name: "queue of secret material to destroy",
        postgres: include_str!("../migrations/postgres/0002_secret_garbage.sql"),
        sqlite: include_str!("../migrations/sqlite/0002_secret_garbage.sql"),
    },
];

const CREDENTIAL_COLUMNS: &str = "tenant, id, kind, display_name, provider, labels, expire_time, \
    rotation_period_secs, retained_versions, allowed_subjects, state, current_version, \
    create_time, update_time, delete_time, purge_time, next_rotation_time, revision";

fn corrupt(what: &str) -> CredentialError {
    CredentialError::Store(StoreError::Decode {
        column: 0,
        message: format!("unexpected stored {what}"),
    })
}

fn credential_from_row(row: &Row) -> Result<Credential> {
    let labels: String = row.get(5)?;
    let subjects: String = row.get(9)?;
    Ok(Credential {
        tenant: row.get(0)?,
        id: row.get(1)?,
        kind: Kind::parse(&row.get::<String>(2)?).ok_or_else(|| corrupt("kind"))?,
        spec: CredentialSpec {
            display_name: row.get(3)?,
            provider: row.get(4)?,
            labels: serde_json::from_str(&labels).map_err(|_| corrupt("labels"))?,
            expire_time: row.get(6)?,
            rotation: RotationPolicy {
                rotation_period_secs: row.get(7)?,
                retained_versions: row.get(8)?,
            },
            allowed_subjects: serde_json::from_str(&subjects).map_err(|_| corrupt("subjects"))?,
        },
        state: State::parse(&row.get::<String>(10)?).ok_or_else(|| corrupt("state"))?,
        current_version: row.get(11)?,
        create_time: row.get(12)?,
        update_time: row.get(13)?,
        delete_time: row.get(14)?,
        purge_time: row.get(15)?,
        next_rotation_time: row.get(16)?,
        revision: row.get(17)?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    // Maps and vectors of strings always serialize.
    Value::Text(serde_json::to_string(value).unwrap_or_default())
}

/// Inserts a new credential and its labels. A duplicate id is `AlreadyExists`.
pub async fn insert_credential(
    tx: &mut Tx,
    credential: &Credential,
    request_id: Option<&str>,
) -> Result<()> {
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO credentials ({CREDENTIAL_COLUMNS}, request_id) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
            ),
            &credential_params(credential, request_id),
        )
        .await;
    match inserted {
        Err(err) if err.is_unique_violation() => {
            return Err(CredentialError::AlreadyExists(credential.name()));
        }
        other => other?,
    };
    replace_labels(tx, credential).await
}

fn credential_params(c: &Credential, request_id: Option<&str>) -> Vec<Value> {
    vec![
        c.tenant.as_str().into(),
        c.id.as_str().into(),
        c.kind.as_str().into(),
        c.spec.display_name.as_str().into(),
        c.spec.provider.as_str().into(),
        json(&c.spec.labels),
        c.spec.expire_time.into(),
        c.spec.rotation.rotation_period_secs.into(),
        c.spec.rotation.retained_versions.into(),
        json(&c.spec.allowed_subjects),
        c.state.as_str().into(),
        c.current_version.into(),
        c.create_time.into(),
        c.update_time.into(),
        c.delete_time.into(),
        c.purge_time.into(),
        c.next_rotation_time.into(),
        c.revision.into(),
        request_id.into(),
    ]
}

async fn replace_labels(tx: &mut Tx, credential: &Credential) -> Result<()> {
    tx.execute(
        "DELETE FROM credential_labels WHERE tenant = $1 AND credential_id = $2",
        &[
            credential.tenant.as_str().into(),
            credential.id.as_str().into(),
        ],
    )
    .await?;
    for (key, value) in &credential.spec.labels {
        tx.execute(
            "INSERT INTO credential_labels (tenant, credential_id, key, value) VALUES ($1, $2, $3, $4)",
            &[
                credential.tenant.as_str().into(),
                credential.id.as_str().into(),
                key.as_str().into(),
                value.as_str().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Writes every field of an existing credential back, and its labels.
pub async fn update_credential(tx: &mut Tx, credential: &Credential) -> Result<()> {
    let c = credential;
    tx.execute(
        "UPDATE credentials SET display_name = $3, provider = $4, labels = $5, expire_time = $6, \
         rotation_period_secs = $7, retained_versions = $8, allowed_subjects = $9, state = $10, \
         current_version = $11, update_time = $12, delete_time = $13, purge_time = $14, \
         next_rotation_time = $15, revision = $16 WHERE tenant = $1 AND id = $2",
        &[
            c.tenant.as_str().into(),
            c.id.as_str().into(),
            c.spec.display_name.as_str().into(),
            c.spec.provider.as_str().into(),
            json(&c.spec.labels),
            c.spec.expire_time.into(),
            c.spec.rotation.rotation_period_secs.into(),
            c.spec.rotation.retained_versions.into(),
            json(&c.spec.allowed_subjects),
            c.state.as_str().into(),
            c.current_version.into(),
            c.update_time.into(),
            c.delete_time.into(),
            c.purge_time.into(),
            c.next_rotation_time.into(),
            c.revision.into(),
        ],
    )
    .await?;
    replace_labels(tx, credential).await
}

/// Reads a credential; `lock` holds its row until the transaction ends.
pub async fn get_credential(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<Option<Credential>> {
    let lock = if lock { tx.for_update() } else { "" };
    let row = tx
        .query_opt(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = $1 AND id = $2{lock}"
            ),
            &[tenant.into(), id.into()],
        )
        .await?;
    row.as_ref().map(credential_from_row).transpose()
}

/// The credential a Create with this request id made, if any.
pub async fn credential_by_request_id(
    tx: &mut Tx,
    tenant: &str,
    request_id: &str,
) -> Result<Option<Credential>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = $1 AND request_id = $2"
            ),
            &[tenant.into(), request_id.into()],
        )
        .await?;
    row.as_ref().map(credential_from_row).transpose()
}

/// Deletes a credential, its labels and its versions' rows.
pub async fn delete_credential(tx: &mut Tx, tenant: &str, id: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM credentials WHERE tenant = $1 AND id = $2",
        &[tenant.into(), id.into()],
    )
    .await?;
    Ok(())
}

/// The stored names of the kinds Switchyard generates, as an SQL list: `'a', 'b'`.
fn generatable_kinds() -> String {
    Kind::ALL
        .into_iter()
        .filter(|kind| kind.is_generatable())
        .map(|kind| format!("'{}'", kind.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One page of a tenant's credentials, by id, after `after`.
pub async fn list_credentials(
    tx: &mut Tx,
    tenant: &str,
    filter: &ListFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Credential>> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE c.tenant = {}",
        params.bind(tenant)
    );
    if let Some(after) = after {
        sql += &format!(" AND c.id > {}", params.bind(after));
    }
    if let Some(provider) = &filter.provider {
        sql += &format!(" AND c.provider = {}", params.bind(provider.as_str()));
    }
    match (filter.state, filter.show_deleted) {
        (Some(state), _) => sql += &format!(" AND c.state = {}", params.bind(state.as_str())),
        (None, false) => sql += &format!(" AND c.state = {}", params.bind(State::Active.as_str())),
        (None, true) => {}
    }
    for (key, value) in &filter.labels {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM credential_labels l WHERE l.tenant = c.tenant \
             AND l.credential_id = c.id AND l.key = {} AND l.value = {})",
            params.bind(key.as_str()),
            params.bind(value.as_str())
        );
    }
    sql += &format!(" ORDER BY c.id LIMIT {}", params.bind(limit as i64));
    let rows = tx.query(&sql, &params.0).await?;
    rows.iter().map(credential_from_row).collect()
}

/// Active credentials of a tenant expiring before `before`, by expiry then id, after a cursor.
pub async fn list_expiring(
    tx: &mut Tx,
    tenant: &str,
    before: Micros,
    after: Option<(Micros, String)>,
    limit: usize,
) -> Result<Vec<Credential>> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = {} AND state = 'active' \
         AND expire_time IS NOT NULL AND expire_time <= {}",
        params.bind(tenant),
        params.bind(before)
    );
    if let Some((time, id)) = after {
        let (t1, t2, i) = (params.bind(time), params.bind(time), params.bind(id));
        sql += &format!(" AND (expire_time > {t1} OR (expire_time = {t2} AND id > {i}))");
    }
    sql += &format!(
        " ORDER BY expire_time, id LIMIT {}",
        params.bind(limit as i64)
    );
    let rows = tx.query(&sql, &params.0).await?;
    rows.iter().map(credential_from_row).collect()
}

/// Per tenant: live credentials expiring before `before`, and live ones whose rotation is due
/// but that Switchyard cannot rotate itself.
pub async fn attention_counts(
    tx: &mut Tx,
    before: Micros,
    now: Micros,
) -> Result<Vec<(String, i64, i64)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT tenant, \
                   SUM(CASE WHEN expire_time IS NOT NULL AND expire_time <= $1 THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN next_rotation_time IS NOT NULL AND next_rotation_time <= $2 \
                            AND kind NOT IN ({}) THEN 1 ELSE 0 END) \
                 FROM credentials WHERE state = 'active' GROUP BY tenant",
                generatable_kinds()
            ),
            &[before.into(), now.into()],
        )
        .await?;
    rows.iter()
        // SUM over an integer CASE is BIGINT on PostgreSQL and INTEGER on SQLite.
        .map(|row| Ok((row.get(0)?, sum(row, 1)?, sum(row, 2)?)))
        .collect()
}

fn sum(row: &Row, index: usize) -> Result<i64> {
    Ok(row.get::<Option<i64>>(index)?.unwrap_or(0))
}

/// Credentials that need a person's attention, for the structured log: (tenant, id, expiry,
/// rotation due).
pub async fn attention_list(
    tx: &mut Tx,
    before: Micros,
    now: Micros,
    limit: usize,
) -> Result<Vec<(String, String, Option<Micros>, Option<Micros>)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT tenant, id, expire_time, next_rotation_time FROM credentials \
                 WHERE state = 'active' AND ((expire_time IS NOT NULL AND expire_time <= $1) \
                   OR (next_rotation_time IS NOT NULL AND next_rotation_time <= $2 \
                       AND kind NOT IN ({}))) \
                 ORDER BY tenant, id LIMIT $3",
                generatable_kinds()
            ),
            &[before.into(), now.into(), (limit as i64).into()],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .collect()
}

// --- versions -----------------------------------------------------------------------------------

const VERSION_COLUMNS: &str =
    "credential_id, version, state, origin, create_time, destroy_time, secret_ref";

fn version_from_row(row: &Row) -> Result<(Version, Option<String>)> {
    Ok((
        Version {
            credential_id: row.get(0)?,
            version: row.get(1)?,
            state: VersionState::parse(&row.get::<String>(2)?)
                .ok_or_else(|| corrupt("version state"))?,
            origin: Origin::parse(&row.get::<String>(3)?).ok_or_else(|| corrupt("origin"))?,
            create_time: row.get(4)?,
            destroy_time: row.get(5)?,
        },
        row.get(6)?,
    ))
}

/// Inserts a version row pointing at its material.
pub async fn insert_version(
    tx: &mut Tx,
    tenant: &str,
    version: &Version,
    secret_ref: Option<&str>,
    request_id: Option<&str>,
) -> Result<()> {
    let inserted = tx
        .execute(
            "INSERT INTO credential_versions (tenant, credential_id, version, state, origin, \
             secret_ref, create_time, destroy_time, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                tenant.into(),
                version.credential_id.as_str().into(),
                version.version.into(),
                version.state.as_str().into(),
                version.origin.as_str().into(),
                secret_ref.into(),
                version.create_time.into(),
                version.destroy_time.into(),
                request_id.into(),
            ],
        )
        .await;
    match inserted {
        Err(err) if err.is_unique_violation() => {
            Err(CredentialError::AlreadyExists(version.name()))
        }
        other => other.map(drop).map_err(Into::into),
    }
}

/// Reads one version and its secret reference.
pub async fn get_version(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    version: i64,
) -> Result<Option<(Version, Option<String>)>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM credential_versions \
                 WHERE tenant = $1 AND credential_id = $2 AND version = $3"
            ),
            &[tenant.into(), id.into(), version.into()],
        )
        .await?;
    row.as_ref().map(version_from_row).transpose()
}

/// The version a Rotate with this request id made, if any.
pub async fn version_by_request_id(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    request_id: &str,
) -> Result<Option<Version>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM credential_versions \
                 WHERE tenant = $1 AND credential_id = $2 AND request_id = $3"
            ),
            &[tenant.into(), id.into(), request_id.into()],
        )
        .await?;
    Ok(row
        .as_ref()
        .map(version_from_row)
        .transpose()?
        .map(|(v, _)| v))
}

/// Versions newest first, below `before`.
pub async fn list_versions(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<(Version, Option<String>)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM credential_versions \
                 WHERE tenant = $1 AND credential_id = $2 AND version < $3 \
                 ORDER BY version DESC LIMIT $4"
            ),
            &[
                tenant.into(),
                id.into(),
                before.unwrap_or(i64::MAX).into(),
                (limit as i64).into(),
            ],
        )
        .await?;
    rows.iter().map(version_from_row).collect()
}

/// Sets a version's state; destroying also forgets its secret reference.
pub async fn set_version_state(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    version: i64,
    state: VersionState,
    now: Micros,
) -> Result<()> {
    if state == VersionState::Destroyed {
        tx.execute(
            "UPDATE credential_versions SET state = $4, destroy_time = $5, secret_ref = NULL \
             WHERE tenant = $1 AND credential_id = $2 AND version = $3",
            &[
                tenant.into(),
                id.into(),
                version.into(),
                state.as_str().into(),
                now.into(),
            ],
        )
        .await?;
    } else {
        tx.execute(
            "UPDATE credential_versions SET state = $4 \
             WHERE tenant = $1 AND credential_id = $2 AND version = $3",
            &[
                tenant.into(),
                id.into(),
                version.into(),
                state.as_str().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Live (not destroyed) versions up to `through`, oldest first, with their references: the ones
/// a retention policy destroys.
pub async fn live_versions_through(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    through: i64,
) -> Result<Vec<(i64, Option<String>)>> {
    let rows = tx
        .query(
            "SELECT version, secret_ref FROM credential_versions WHERE tenant = $1 \
             AND credential_id = $2 AND version <= $3 AND state <> 'destroyed' ORDER BY version",
            &[tenant.into(), id.into(), through.into()],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.get(0)?, row.get(1)?)))
        .collect()
}

// --- background work ------------------------------------------------------------------------------

/// Credentials whose scheduled rotation is due and that Switchyard can rotate, soonest first.
pub async fn due_rotations(
    tx: &mut Tx,
    now: Micros,
    limit: usize,
) -> Result<Vec<(String, String, Kind)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT tenant, id, kind FROM credentials WHERE state = 'active' \
                 AND next_rotation_time IS NOT NULL AND next_rotation_time <= $1 \
                 AND kind IN ({}) ORDER BY next_rotation_time LIMIT $2",
                generatable_kinds()
            ),
            &[now.into(), (limit as i64).into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let kind = Kind::parse(&row.get::<String>(2)?).ok_or_else(|| corrupt("kind"))?;
            Ok((row.get(0)?, row.get(1)?, kind))
        })
        .collect()
}

/// Soft-deleted credentials past their purge time, oldest first.
pub async fn due_purges(tx: &mut Tx, now: Micros, limit: usize) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            "SELECT tenant, id FROM credentials WHERE state = 'deleted' \
             AND purge_time IS NOT NULL AND purge_time <= $1 ORDER BY purge_time LIMIT $2",
            &[now.into(), (limit as i64).into()],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.get(0)?, row.get(1)?)))
        .collect()
}

/// Every secret reference a credential's versions hold.
pub async fn secret_refs(tx: &mut Tx, tenant: &str, id: &str) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT secret_ref FROM credential_versions WHERE tenant = $1 AND credential_id = $2 \
             AND secret_ref IS NOT NULL ORDER BY version",
            &[tenant.into(), id.into()],
        )
        .await?;
    rows.iter().map(|row| Ok(row.get(0)?)).collect()
}

// --- audit --------------------------------------------------------------------------------------------

const AUDIT_COLUMNS: &str = "sequence, time, principal, action, resource, result_code, detail, \
    request_id, previous_hash, hash";

fn audit_from_row(row: &Row) -> Result<AuditEvent> {
    Ok(AuditEvent {
        sequence: row.get(0)?,
        time: row.get(1)?,
        principal: row.get(2)?,
        action: row.get(3)?,
        resource: row.get(4)?,
        result_code: row.get(5)?,
        detail: row.get(6)?,
        request_id: row.get(7)?,
        previous_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}

/// Locks the tenant's audit chain until the transaction ends and returns its head (sequence and
/// hash of the last entry), so that appends are serialized across replicas.
pub async fn lock_audit_head(tx: &mut Tx, tenant: &str) -> Result<Option<(i64, String)>> {
    tx.lock(&format!("credentials:audit:{tenant}")).await?;
    let row = tx
        .query_opt(
            "SELECT sequence, hash FROM audit_events WHERE tenant = $1 ORDER BY sequence DESC LIMIT 1",
            &[tenant.into()],
        )
        .await?;
    row.map(|row| Ok((row.get(0)?, row.get(1)?))).transpose()
}

/// Appends an entry whose sequence and hashes the caller computed under the head lock.
pub async fn insert_audit(tx: &mut Tx, tenant: &str, event: &AuditEvent) -> Result<()> {
    tx.execute(
        &format!("INSERT INTO audit_events (tenant, {AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
        &[
            tenant.into(),
            event.sequence.into(),
            event.time.into(),
            event.principal.as_str().into(),
            event.action.as_str().into(),
            event.resource.as_str().into(),
            event.result_code.as_str().into(),
            event.detail.as_str().into(),
            event.request_id.as_str().into(),
            event.previous_hash.as_str().into(),
            event.hash.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}

/// One page of a tenant's audit log after (or before, newest first) a sequence number.
pub async fn list_audit(
    tx: &mut Tx,
    tenant: &str,
    filter: &AuditFilter,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEvent>> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant = {}",
        params.bind(tenant)
    );
    if let Some(after) = after {
        let op = if filter.newest_first { "<" } else { ">" };
        sql += &format!(" AND sequence {op} {}", params.bind(after));
    }
    if let Some(resource) = &filter.resource {
        let (exact, prefix) = (
            params.bind(resource.as_str()),
            params.bind(format!("{resource}/%")),
        );
        sql += &format!(" AND (resource = {exact} OR resource LIKE {prefix})");
    }
    for (column, value) in [
        ("action", &filter.action),
        ("principal", &filter.principal),
        ("result_code", &filter.result_code),
    ] {
        if let Some(value) = value {
            sql += &format!(" AND {column} = {}", params.bind(value.as_str()));
        }
    }
    if let Some(start) = filter.start_time {
        sql += &format!(" AND time >= {}", params.bind(start));
    }
    if let Some(end) = filter.end_time {
        sql += &format!(" AND time < {}", params.bind(end));
    }
    let order = if filter.newest_first { "DESC" } else { "ASC" };
    sql += &format!(
        " ORDER BY sequence {order} LIMIT {}",
        params.bind(limit as i64)
    );
    let rows = tx.query(&sql, &params.0).await?;
    rows.iter().map(audit_from_row).collect()
}

/// The chain in order, a batch at a time, for verification.
pub async fn audit_batch(
    tx: &mut Tx,
    tenant: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditEvent>> {
    let rows = tx
        .query(
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant = $1 AND sequence > $2 \
                 ORDER BY sequence LIMIT $3"
            ),
            &[tenant.into(), after.into(), (limit as i64).into()],
        )
        .await?;
    rows.iter().map(audit_from_row).collect()
}

/// The highest version number of a credential, 0 if it has none.
pub async fn max_version(tx: &mut Tx, tenant: &str, id: &str) -> Result<i64> {
    let row = tx
        .query_one(
            "SELECT MAX(version) FROM credential_versions WHERE tenant = $1 AND credential_id = $2",
            &[tenant.into(), id.into()],
        )
        .await?;
    Ok(row.get::<Option<i64>>(0)?.unwrap_or(0))
}

// --- material to destroy --------------------------------------------------------------------------

/// Queues material for destruction, in the transaction that drops its last reference.
pub async fn queue_garbage(tx: &mut Tx, tenant: &str, refs: &[String], now: Micros) -> Result<()> {
    for secret_ref in refs {
        tx.execute(
            "INSERT INTO secret_garbage (secret_ref, tenant, queued_at) VALUES ($1, $2, $3) \
             ON CONFLICT (secret_ref) DO NOTHING",
            &[secret_ref.as_str().into(), tenant.into(), now.into()],
        )
        .await?;
    }
    Ok(())
}

/// The oldest queued references, counting an attempt on each.
pub async fn garbage_batch(tx: &mut Tx, limit: usize) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT secret_ref FROM secret_garbage ORDER BY queued_at LIMIT $1",
            &[(limit as i64).into()],
        )
        .await?;
    let refs: Vec<String> = rows
        .iter()
        .map(|row| row.get(0))
        .collect::<Result<_, _>>()?;
    for secret_ref in &refs {
        tx.execute(
            "UPDATE secret_garbage SET attempts = attempts + 1 WHERE secret_ref = $1",
            &[secret_ref.as_str().into()],
        )
        .await?;
    }
    Ok(refs)
}

/// Forgets a reference whose material is destroyed.
pub async fn remove_garbage(tx: &mut Tx, secret_ref: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM secret_garbage WHERE secret_ref = $1",
        &[secret_ref.into()],
    )
    .await?;
    Ok(())
}
