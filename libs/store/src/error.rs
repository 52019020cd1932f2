use thiserror::Error;

/// Errors of the record store. They carry driver context for the log, and a PostgreSQL error's
/// detail can quote a value that violated a constraint: they are for logs, never for callers.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL or schema name is not usable.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// A connection could not be taken from the PostgreSQL pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// PostgreSQL rejected a statement.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// SQLite rejected a statement.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A column held a value of another type than the one asked for.
    #[error("decoding column {column}: {message}")]
    Decode {
        /// Zero-based column index.
        column: usize,
        /// What was found instead.
        message: String,
    },
    /// The transaction was used after it ended.
    #[error("the transaction has ended")]
    Finished,
    /// A blocking database call could not complete (its thread panicked or was cancelled).
    #[error("database call interrupted: {0}")]
    Interrupted(String),
    /// A statement returned no row where one was required.
    #[error("no row returned")]
    NoRow,
    /// A migration could not be applied, or an applied one has changed.
    #[error("migration: {0}")]
    Migration(String),
}

impl StoreError {
    /// True when the statement violated a unique or primary-key constraint, which repositories
    /// turn into "already exists".
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Postgres(err) => {
                err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => matches!(
                err.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }
}
