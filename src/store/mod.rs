//! Database access: small functions over sea-orm, one module per table. Nothing here knows HTTP.

pub mod api_keys;
pub mod users;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};

use crate::domain::Cursor;
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbErr,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

/// Opens the pool. For SQLite: the file is created if missing, WAL lets readers proceed
/// beside the single writer, `synchronous=FULL` makes every acknowledged commit durable
/// (even across power loss), the busy timeout queues writers instead of failing them, and
/// foreign keys are enforced as on other backends.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    Database::connect(options).await
}

/// Brings the schema up to date; safe to run on every start.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// One page of a listing in id order, and where the next one starts if there is one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows: the extra row only tells that another page exists, which
    /// spares a COUNT.
    pub fn from_rows(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> Self {
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|last| Cursor { after_id: id(last) })
        } else {
            None
        };
        Page { items: rows, next }
    }
}

/// The current time at the precision every backend stores, so what a write returns equals
/// what a later read returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
