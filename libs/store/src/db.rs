use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::types::{ToSql, Type};

use crate::{Row, StoreError, Value};

/// Which SQL dialect a [`Db`] speaks, for the rare statement that must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL through deadpool-postgres.
    Postgres,
    /// Embedded SQLite through rusqlite.
    Sqlite,
}

/// A handle to one service's records. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    backend: Arc<Backend>,
}

enum Backend {
    Postgres {
        pool: Pool,
        schema: String,
    },
    // One connection behind an async mutex: SQLite allows a single writer anyway, and statements on
    // the embedded store take microseconds, so they run on the calling task.
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        path: String,
    },
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.backend {
            Backend::Postgres { schema, .. } => f
                .debug_struct("Db")
                .field("backend", &"postgres")
                .field("schema", schema)
                .finish(),
            Backend::Sqlite { path, .. } => f
                .debug_struct("Db")
                .field("backend", &"sqlite")
                .field("path", path)
                .finish(),
        }
    }
}

/// Largest PostgreSQL pool a service opens unless configured otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

impl Db {
    /// Opens the database named by `url`:
    /// - `postgres://user@host:port/database` (any libpq-style URL): the service's tables live in
    ///   `schema`, created if missing;
    /// - `sqlite://path/to/file.db`: created with mode 0600 if missing;
    /// - `sqlite::memory:`: a private in-memory database, for tests.
    pub async fn connect(url: &str, schema: &str, pool_size: usize) -> Result<Db, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Self::open_sqlite(path);
        }
        if url == "sqlite::memory:" {
            return Self::open_sqlite(":memory:");
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url, schema, pool_size).await;
        }
        Err(StoreError::Config(
            "the database URL must start with postgres://, postgresql:// or sqlite://".to_owned(),
        ))
    }

    fn open_sqlite(path: &str) -> Result<Db, StoreError> {
        if path != ":memory:" {
            create_private_file(Path::new(path))?;
        }
        let conn = rusqlite::Connection::open(path)?;
        // WAL with synchronous=FULL: a commit is on disk before it is acknowledged.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        Ok(Db {
            backend: Arc::new(Backend::Sqlite {
                conn: Arc::new(Mutex::new(conn)),
                path: path.to_owned(),
            }),
        })
    }

    async fn open_postgres(url: &str, schema: &str, pool_size: usize) -> Result<Db, StoreError> {
        validate_schema_name(schema)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|err| StoreError::Config(format!("invalid PostgreSQL URL: {err}")))?;
        config.options(format!("-c search_path={schema}"));
        if config.get_application_name().is_none() {
            config.application_name("switchyard");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|err| StoreError::Config(format!("building the PostgreSQL pool: {err}")))?;
        let client = pool.get().await?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        if let Err(err) = client.batch_execute(&create).await {
            // Two replicas creating the schema at once: one of them loses the race, harmlessly.
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .await?
                .is_some();
            if !exists {
                return Err(err.into());
            }
        }
        Ok(Db {
            backend: Arc::new(Backend::Postgres {
                pool,
                schema: schema.to_owned(),
            }),
        })
    }

    /// The dialect of this database.
    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Postgres { .. } => Dialect::Postgres,
            Backend::Sqlite { .. } => Dialect::Sqlite,
        }
    }

    /// Starts a transaction. It rolls back unless [`Tx::commit`] is called.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let inner = match &*self.backend {
            Backend::Postgres { pool, .. } => {
                let client = pool.get().await?;
                client.batch_execute("BEGIN").await?;
                TxInner::Postgres(Some(client))
            }
            Backend::Sqlite { conn, .. } => {
                let guard = conn.clone().lock_owned().await;
                // A transaction left open by a cancelled task is rolled back by Tx's Drop; this
                // is a second line of defence.
                if !guard.is_autocommit() {
                    guard.execute_batch("ROLLBACK")?;
                }
                guard.execute_batch("BEGIN IMMEDIATE")?;
                TxInner::Sqlite(Some(guard))
            }
        };
        Ok(Tx {
            inner,
            finished: false,
            wrote: false,
        })
    }

    /// Runs one statement in its own transaction; returns the number of rows affected.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let affected = tx.execute(sql, params).await?;
        tx.commit().await?;
        Ok(affected)
    }

    /// Runs one query outside any explicit transaction.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match &*self.backend {
            Backend::Postgres { pool, .. } => {
                let client = pool.get().await?;
                postgres_query(&client, sql, params).await
            }
            Backend::Sqlite { conn, .. } => {
                let guard = conn.lock().await;
                sqlite_query(&guard, sql, params)
            }
        }
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Checks that the database answers, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(|_| ())
    }
}

/// A transaction on one connection. Dropping it without `commit` rolls it back.
pub struct Tx {
    inner: TxInner,
    finished: bool,
    /// Whether a statement that can write ran: only then does a SQLite COMMIT touch the disk.
    wrote: bool,
}

// A transaction lives on its task's stack; boxing the larger variant would cost an allocation
// per transaction for no gain.
#[allow(clippy::large_enum_variant)]
enum TxInner {
    // The Option lets Drop detach a connection whose transaction was abandoned.
    Postgres(Option<deadpool_postgres::Object>),
    // None once COMMIT has taken the connection to a blocking thread.
    Sqlite(Option<OwnedMutexGuard<rusqlite::Connection>>),
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("dialect", &self.dialect())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Tx {
    /// The dialect of the underlying database.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            TxInner::Postgres(_) => Dialect::Postgres,
            TxInner::Sqlite(_) => Dialect::Sqlite,
        }
    }

    fn sqlite(&self) -> Result<&rusqlite::Connection, StoreError> {
        match &self.inner {
            TxInner::Sqlite(Some(conn)) => Ok(conn),
            _ => Err(StoreError::Finished),
        }
    }

    fn postgres(&self) -> &deadpool_postgres::Object {
        match &self.inner {
            TxInner::Postgres(Some(client)) => client,
            // Only Drop takes the client out, after which no method can be called.
            _ => unreachable!("postgres() called on a non-postgres transaction"),
        }
    }

    /// Runs a statement; returns the number of rows affected.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.wrote = true;
        match &self.inner {
            TxInner::Postgres(_) => {
                let client = self.postgres();
                let statement = client.prepare_cached(sql).await?;
                Ok(client
                    .execute(&statement, &as_postgres_params(params))
                    .await?)
            }
            TxInner::Sqlite(_) => {
                let mut statement = self.sqlite()?.prepare_cached(&sqlite_placeholders(sql))?;
                let affected = statement.execute(rusqlite::params_from_iter(params.iter()))?;
                Ok(affected as u64)
            }
        }
    }

    /// Runs several statements without parameters (DDL, in migrations).
    pub async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.wrote = true;
        match &self.inner {
            TxInner::Postgres(_) => Ok(self.postgres().batch_execute(sql).await?),
            TxInner::Sqlite(_) => Ok(self.sqlite()?.execute_batch(sql)?),
        }
    }

    /// Runs a query and returns every row.
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match &self.inner {
            TxInner::Postgres(_) => postgres_query(self.postgres(), sql, params).await,
            TxInner::Sqlite(_) => sqlite_query(self.sqlite()?, sql, params),
        }
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs a query that must return a row.
    pub async fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params).await?.ok_or(StoreError::NoRow)
    }

    /// Waits for an exclusive lock named `key`, held until the transaction ends, so that replicas
    /// serialize on it (a PostgreSQL advisory lock). On SQLite the transaction already excludes
    /// every other writer.
    pub async fn lock(&mut self, key: &str) -> Result<(), StoreError> {
        if let TxInner::Postgres(_) = self.inner {
            self.execute("SELECT pg_advisory_xact_lock($1)", &[lock_id(key).into()])
                .await?;
        }
        Ok(())
    }

    /// Takes the lock named `key` if it is free and returns whether it did: for work that one
    /// replica should do while the others skip it.
    pub async fn try_lock(&mut self, key: &str) -> Result<bool, StoreError> {
        match self.inner {
            TxInner::Postgres(_) => {
                let row = self
                    .query_one(
                        "SELECT pg_try_advisory_xact_lock($1)",
                        &[lock_id(key).into()],
                    )
                    .await?;
                row.get(0)
            }
            TxInner::Sqlite(_) => Ok(true),
        }
    }

    /// The clause that makes a `SELECT` claim its rows and skip the ones another replica has
    /// claimed: `FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite.
    pub fn skip_locked(&self) -> &'static str {
        match self.inner {
            TxInner::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            TxInner::Sqlite(_) => "",
        }
    }

    /// The clause that locks the selected rows until the transaction ends.
    pub fn for_update(&self) -> &'static str {
        match self.inner {
            TxInner::Postgres(_) => " FOR UPDATE",
            TxInner::Sqlite(_) => "",
        }
    }

    /// Commits.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.wrote
            && let TxInner::Sqlite(conn) = &mut self.inner
            && let Some(conn) = conn.take()
        {
            // The COMMIT of a write waits for the disk (synchronous=FULL): it runs on a blocking
            // thread so that it does not stall an async worker. The connection's lock is released
            // there. A read-only transaction commits in place: it writes nothing.
            self.finished = true;
            return tokio::task::spawn_blocking(move || {
                let committed = conn.execute_batch("COMMIT");
                if committed.is_err() && !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                committed
            })
            .await
            .map_err(|err| StoreError::Interrupted(err.to_string()))?
            .map_err(Into::into);
        }
        self.finish("COMMIT").await
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        self.finish("ROLLBACK").await
    }

    async fn finish(&mut self, statement: &str) -> Result<(), StoreError> {
        let result = self.batch(statement).await;
        // Whatever the outcome, the transaction is over: a failed COMMIT has rolled back.
        self.finished = result.is_ok();
        result
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match &mut self.inner {
            // Early returns end most transactions this way (a NOT_FOUND, a failed check), so the
            // connection is rolled back in the background and then returned to the pool. Without
            // a runtime to do that, it is detached and closed instead, which makes the server
            // roll back; either way no one is handed an open transaction.
            TxInner::Postgres(client) => {
                let Some(client) = client.take() else { return };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            if client.batch_execute("ROLLBACK").await.is_err() {
                                drop(deadpool_postgres::Object::take(client));
                            }
                        });
                    }
                    Err(_) => drop(deadpool_postgres::Object::take(client)),
                }
            }
            TxInner::Sqlite(Some(conn)) => {
                if !conn.is_autocommit()
                    && let Err(err) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %err, "rolling back an abandoned sqlite transaction");
                }
            }
            TxInner::Sqlite(None) => {}
        }
    }
}

fn lock_id(key: &str) -> i64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

fn validate_schema_name(schema: &str) -> Result<(), StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "schema name {schema:?} must be 1-63 lowercase letters, digits or underscores"
        )))
    }
}

fn create_private_file(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|err| StoreError::Config(format!("creating {}: {err}", parent.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|err| StoreError::Config(format!("opening {}: {err}", path.display())))
}

fn as_postgres_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

async fn postgres_query(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    let rows = client
        .query(&statement, &as_postgres_params(params))
        .await?;
    rows.iter().map(postgres_row).collect()
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(index)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?.map(Value::Bool)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        } else {
            return Err(StoreError::Decode {
                column: index,
                message: format!("unsupported PostgreSQL type {ty}"),
            });
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row::new(values))
}

fn sqlite_query(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>, StoreError> {
    let mut statement = conn.prepare_cached(&sqlite_placeholders(sql))?;
    let columns = statement.column_count();
    let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for index in 0..columns {
            use rusqlite::types::ValueRef;
            values.push(match row.get_ref(index)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Value::Blob(v.to_vec()),
                ValueRef::Real(_) => {
                    return Err(StoreError::Decode {
                        column: index,
                        message: "REAL columns are not used by Switchyard".to_owned(),
                    });
                }
            });
        }
        out.push(Row::new(values));
    }
    Ok(out)
}

/// Rewrites PostgreSQL's `$1` placeholders to SQLite's `?1`, which binds by number too. Dollar
/// signs inside string literals are left alone.
fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '$' if !in_literal && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_literals() {
        assert_eq!(
            sqlite_placeholders("SELECT '$1', a FROM t WHERE b = $1 AND c = $12"),
            "SELECT '$1', a FROM t WHERE b = ?1 AND c = ?12"
        );
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(validate_schema_name("credentials").is_ok());
        assert!(validate_schema_name("t_0192abc").is_ok());
        assert!(validate_schema_name("Bad").is_err());
        assert!(validate_schema_name("x; DROP").is_err());
        assert!(validate_schema_name("").is_err());
    }
}
