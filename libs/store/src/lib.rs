//! Record storage for Switchyard services.
//!
//! A service writes its repository once against [`Db`] and [`Tx`], and runs unchanged on
//! PostgreSQL (production, through deadpool-postgres) and on embedded SQLite (the all-in-one
//! default). SQL is written in the common subset of both dialects with `$1`-style placeholders;
//! the few differences (row locks, advisory locks) are methods here, and DDL lives in per-backend
//! migration files (see [`Migration`]).
//!
//! Each service owns its data: on PostgreSQL a schema of its own, on SQLite a file of its own.

mod db;
mod error;
mod migrate;
pub mod page;
pub mod testing;
mod value;

pub use db::{DEFAULT_POOL_SIZE, Db, Dialect, Tx};
pub use error::StoreError;
pub use migrate::Migration;
pub use value::{FromValue, Params, Row, Value};

/// Current time as microseconds since the Unix epoch, the representation of every timestamp column.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
