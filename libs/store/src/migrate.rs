use sha2::{Digest, Sha256};

use crate::{Db, Dialect, StoreError, Value};

/// One versioned schema change, written once per backend because DDL differs between them.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing from 1 without gaps.
    pub version: i64,
    /// A short description, recorded with the version.
    pub name: &'static str,
    /// DDL for PostgreSQL.
    pub postgres: &'static str,
    /// DDL for SQLite.
    pub sqlite: &'static str,
}

impl Migration {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::Sqlite => self.sqlite,
        }
    }
}

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)";

impl Db {
    /// Applies the migrations of `component` that this database has not seen, in order, each in
    /// its own transaction, and returns how many were applied. Replicas starting together
    /// serialize on a lock, so each migration runs once. A migration that was applied and has
    /// since been edited is an error: its checksum no longer matches.
    pub async fn migrate(
        &self,
        component: &str,
        migrations: &[Migration],
    ) -> Result<usize, StoreError> {
        for (index, migration) in migrations.iter().enumerate() {
            if migration.version != index as i64 + 1 {
                return Err(StoreError::Migration(format!(
                    "{component}: migration {} is out of sequence (expected version {})",
                    migration.name,
                    index + 1
                )));
            }
        }

        let mut applied = 0;
        for migration in migrations {
            let mut tx = self.begin().await?;
            tx.lock(&format!("schema_migrations:{component}")).await?;
            tx.batch(CREATE_LEDGER).await?;
            let sql = migration.sql(tx.dialect());
            let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
            let recorded = tx
                .query_opt(
                    "SELECT checksum FROM schema_migrations WHERE component = $1 AND version = $2",
                    &[component.into(), migration.version.into()],
                )
                .await?;
            match recorded {
                Some(row) => {
                    let recorded: String = row.get(0)?;
                    if recorded != checksum {
                        return Err(StoreError::Migration(format!(
                            "{component}: migration {} ({}) was changed after it was applied",
                            migration.version, migration.name
                        )));
                    }
                    tx.rollback().await?;
                }
                None => {
                    tx.batch(sql).await.map_err(|err| {
                        StoreError::Migration(format!(
                            "{component}: migration {} ({}) failed: {err}",
                            migration.version, migration.name
                        ))
                    })?;
                    tx.execute(
                        "INSERT INTO schema_migrations (component, version, name, checksum, applied_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            component.into(),
                            migration.version.into(),
                            migration.name.into(),
                            Value::Text(checksum),
                            crate::now_micros().into(),
                        ],
                    )
                    .await?;
                    tx.commit().await?;
                    tracing::info!(
                        component,
                        version = migration.version,
                        name = migration.name,
                        "applied migration"
                    );
                    applied += 1;
                }
            }
        }
        Ok(applied)
    }
}
