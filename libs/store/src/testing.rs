//! Databases for tests: a private SQLite file or a fresh PostgreSQL schema per test, so that tests
//! can run in parallel against the real servers.

use crate::{Db, StoreError};

/// The PostgreSQL server tests use: `SWITCHYARD_TEST_POSTGRES_URL`, or the local one.
pub fn postgres_url() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Schemas older than this are left over from earlier runs and are dropped.
const STALE_SCHEMA_SECS: u64 = 3600;

/// A new, empty schema on the test PostgreSQL server. Leftovers of earlier runs are dropped, so
/// schemas do not accumulate.
pub async fn postgres_db() -> Result<Db, StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let admin = Db::connect(&postgres_url(), "public", 1).await?;
    let stale = admin
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'swtest\\_%'",
            &[],
        )
        .await?;
    for row in stale {
        let name: String = row.get(0)?;
        let created: Option<u64> = name.split('_').nth(1).and_then(|s| s.parse().ok());
        if created.is_some_and(|created| created + STALE_SCHEMA_SECS < now) {
            admin
                .execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"), &[])
                .await?;
        }
    }
    let schema = format!("swtest_{now}_{}", uuid::Uuid::new_v4().simple());
    Db::connect(&postgres_url(), &schema, 4).await
}

/// A new SQLite database in a temporary directory, deleted with the returned guard.
pub async fn sqlite_db() -> Result<(Db, tempfile::TempDir), StoreError> {
    let dir = tempfile::tempdir()
        .map_err(|err| StoreError::Config(format!("creating a temporary directory: {err}")))?;
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let db = Db::connect(&url, "test", 1).await?;
    Ok((db, dir))
}
