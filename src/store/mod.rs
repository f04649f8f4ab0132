//! Database access through sea-orm: one module per table, and one [`Store`] the layers above
//! use whatever the engine. What is specific to an engine lives under [`sqlite`] and
//! [`postgres`]. Nothing here knows HTTP.

pub mod api_keys;
pub mod events;
pub mod idempotency;
mod postgres;
pub mod rate_limits;
mod sqlite;
pub mod users;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    sqlx,
};

use crate::{domain::Cursor, error::AppError};

pub use self::events::{FeedBounds, UserEvent, UserSnapshot};
pub use self::sqlite::DataVersion;
pub use self::users::{Recorded, UserWrite, Written};

/// How to reach the database and how hard to try; built once from the configuration.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub url: String,
    /// Connections in the pool (on SQLite, plus the writer's own).
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503.
    pub acquire_timeout: Duration,
    /// PostgreSQL aborts statements running longer than this.
    pub statement_timeout: Option<Duration>,
    /// How long start-up keeps retrying a database that is not up yet.
    pub startup_wait: Duration,
    pub sqlite: SqliteSettings,
}

/// What only SQLite has.
#[derive(Debug, Clone)]
pub struct SqliteSettings {
    /// `synchronous=FULL` instead of `NORMAL`: survives power loss, not only a crash.
    pub sync_full: bool,
    /// The WAL is started over once it holds this many bytes; 0 leaves checkpoints to SQLite.
    pub wal_limit_bytes: u64,
    /// User writes committed in batches by one writer (see [`sqlite::writer`]); off, each is a
    /// transaction of its own on the pool.
    pub group_commit: bool,
}

/// The database, with whatever the engine needs beside the pool.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    /// Opened for a command (`migrate`, `keys`): the pool alone.
    Plain,
    /// Serving on SQLite: the writer and the change detector.
    Sqlite(Arc<sqlite::Serving>),
    /// Serving on PostgreSQL: the change feed's sequencer and listener.
    Postgres(Arc<postgres::Serving>),
}

impl Store {
    /// Connects, migrates, then runs `first_start` (first-start work such as minting the
    /// bootstrap key) under the migration lock. A database that is not up yet is retried with
    /// backoff until `startup_wait` runs out, each failure logged.
    pub async fn open<T>(
        settings: &DbSettings,
        first_start: impl AsyncFn(&Store) -> Result<T, AppError>,
    ) -> Result<(Store, T), AppError> {
        if settings.url.starts_with("sqlite:") {
            sqlite::check_path(&settings.url)?;
        }
        let deadline = Instant::now() + settings.startup_wait;
        let mut delay = Duration::from_millis(250);
        for attempt in 1.. {
            let outcome = match connect(settings).await {
                Ok(db) => {
                    let store = Store {
                        db,
                        engine: Engine::Plain,
                    };
                    store
                        .migrate(async |store| first_start(store).await)
                        .await
                        .map(|value| (store, value))
                }
                Err(err) => Err(AppError::from(err)),
            };
            match outcome {
                Err(AppError::Unavailable(reason)) if Instant::now() + delay < deadline => {
                    tracing::warn!(
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        %reason,
                        "database not reachable yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(AppError::Unavailable(reason)) => {
                    return Err(AppError::Unavailable(format!(
                        "gave up on the database after {attempt} attempts: {reason}"
                    )));
                }
                other => {
                    if attempt > 1 && other.is_ok() {
                        tracing::info!(attempt, "database reachable");
                    }
                    return other;
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The store as a server uses it: on SQLite, user writes go through one batching writer
    /// and the WAL is kept within its limit (see [`sqlite`]); on PostgreSQL, events are
    /// numbered and every instance hears of it (see [`postgres`]).
    pub async fn serve(self, settings: &DbSettings) -> Result<Store, AppError> {
        let engine = match self.backend() {
            DbBackend::Sqlite => {
                Engine::Sqlite(Arc::new(sqlite::Serving::start(&self.db, settings).await?))
            }
            DbBackend::Postgres => Engine::Postgres(Arc::new(postgres::Serving::start(&self.db))),
            _ => return Ok(self),
        };
        Ok(Store { engine, ..self })
    }

    /// After a user write committed outside the SQLite writer.
    fn wrote(&self) {
        match &self.engine {
            Engine::Sqlite(serving) => serving.wrote(),
            Engine::Postgres(serving) => serving.wrote(),
            Engine::Plain => {}
        }
    }

    /// Returns when events may have been added to the feed (by this process or another), or
    /// after at most `at_most`. One caller at a time: a wake-up that finds nobody waiting is
    /// kept for the next call.
    pub async fn events_changed(&self, at_most: Duration) {
        let wake = match &self.engine {
            Engine::Sqlite(serving) => serving.events(),
            Engine::Postgres(serving) => serving.events(),
            Engine::Plain => {
                tokio::time::sleep(at_most).await;
                return;
            }
        };
        let _ = tokio::time::timeout(at_most, wake.notified()).await;
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// A token that changes whenever any connection, in any process, commits to the database;
    /// `None` when the engine cannot tell (PostgreSQL, a database in memory, not serving).
    pub fn data_version(&self) -> Option<DataVersion> {
        match &self.engine {
            Engine::Sqlite(serving) => serving.data_version(),
            Engine::Postgres(_) | Engine::Plain => None,
        }
    }

    /// Whether the database answers a trivial query and, on SQLite, is still the file the
    /// server opened and took its last writes.
    pub async fn ping(&self) -> Result<(), AppError> {
        if let Engine::Sqlite(serving) = &self.engine {
            serving.check_writes()?;
        }
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// On SQLite, an error once the database file was deleted or replaced under the server.
    fn check_file(&self) -> Result<(), AppError> {
        match &self.engine {
            Engine::Sqlite(serving) => serving.check_file(),
            Engine::Postgres(_) | Engine::Plain => Ok(()),
        }
    }

    /// Connections of the pool in use and idle, for the metrics.
    pub fn pool_connections(&self) -> (u32, u32) {
        match self.backend() {
            DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                let idle = pool.num_idle() as u32;
                (pool.size().saturating_sub(idle), idle)
            }
            DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                let idle = pool.num_idle() as u32;
                (pool.size().saturating_sub(idle), idle)
            }
            _ => (0, 0),
        }
    }

    /// Closes every connection: what was committed stays.
    pub async fn close(self) -> Result<(), AppError> {
        match self.engine {
            Engine::Sqlite(serving) => serving.stop().await,
            Engine::Postgres(serving) => serving.stop(),
            Engine::Plain => {}
        }
        Ok(self.db.close().await?)
    }

    /// Brings the schema up to date; safe on every start and from several instances at once
    /// (on PostgreSQL they take turns on an advisory lock, so each migration runs once).
    /// `then` runs under the same lock.
    async fn migrate<T>(
        &self,
        then: impl AsyncFnOnce(&Store) -> Result<T, AppError>,
    ) -> Result<T, AppError> {
        let lock = postgres::MigrationLock::take(&self.db).await?;
        Migrator::up(&self.db, None).await?;
        let outcome = then(self).await;
        if let Some(lock) = lock {
            lock.release().await?;
        }
        outcome
    }
}

/// Opens the pool, with each engine's settings.
async fn connect(settings: &DbSettings) -> Result<DatabaseConnection, DbErr> {
    // Two at least: start-up holds one for the migration lock while migrating on another.
    let mut options = ConnectOptions::new(&settings.url);
    options
        .sqlx_logging(false)
        .max_connections(settings.max_connections.max(2))
        .acquire_timeout(settings.acquire_timeout)
        .connect_timeout(settings.acquire_timeout);
    if let Some(timeout) = settings.statement_timeout {
        options.statement_timeout(timeout);
    }
    sqlite::configure(&mut options, &settings.sqlite);
    Database::connect(options).await
}

impl From<DbErr> for AppError {
    /// Losing the database is an outage to wait out (503), not a bug (500).
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            tracing::warn!(error = %err, "database unavailable");
            AppError::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            AppError::Database(err)
        }
    }
}

/// Whether a database error means "not reachable right now" rather than "this query is wrong".
pub fn is_transient(err: &DbErr) -> bool {
    use sqlx::Error as Sqlx;
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            match sqlx.as_ref() {
                Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::Protocol(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed => true,
                // SQLSTATE classes 08 (connection exception), 53 (insufficient resources) and
                // 57 (operator intervention: shutdown, statement timeout).
                Sqlx::Database(db) => {
                    sqlite::is_transient(db.as_ref())
                        || db
                            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                            .is_some()
                            && db.code().is_some_and(|code| {
                                ["08", "53", "57"]
                                    .iter()
                                    .any(|class| code.starts_with(class))
                            })
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// One page of a listing, and where the next one starts if there is one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows: the extra row only tells that another page exists, which
    /// spares a COUNT. `cursor` makes the continuation from the page's last row.
    fn from_rows(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> Cursor) -> Self {
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(cursor)
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::{DbSettings, SqliteSettings};

    /// A fresh SQLite database in `dir`, with the defaults a server runs with.
    pub fn settings(dir: &tempfile::TempDir) -> DbSettings {
        DbSettings {
            url: format!("sqlite://{}", dir.path().join("test.db").display()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: None,
            startup_wait: Duration::from_secs(5),
            sqlite: SqliteSettings {
                sync_full: false,
                wal_limit_bytes: 64 << 20,
                group_commit: true,
            },
        }
    }
}
