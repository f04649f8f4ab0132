//! Database access: small functions over sea-orm, one module per table. Nothing here knows HTTP.

pub mod api_keys;
pub mod group_commit;
pub mod idempotency;
pub mod inline_reads;
pub mod rate_limits;
pub mod users;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, PrimaryKeyTrait, QueryTrait, Statement, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use self::inline_reads::InlineReads;

use crate::{
    config::{DbArgs, SqliteSync},
    domain::Cursor,
    error::AppError,
};

/// Opens the pool. For SQLite: the file is created if missing, WAL lets readers proceed
/// beside the single writer, `synchronous=NORMAL` (the default) keeps every acknowledged commit
/// through a process crash because the WAL is written before the commit returns (FULL adds
/// an fsync per commit for power loss), the busy timeout queues writers instead of failing them, and
/// foreign keys are enforced as on other backends. For PostgreSQL: a statement timeout keeps a
/// stuck query from holding a connection forever.
pub async fn connect(settings: &DbArgs) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(&settings.database_url);
    let synchronous = match settings.sqlite_synchronous {
        SqliteSync::Normal => SqliteSynchronous::Normal,
        SqliteSync::Full => SqliteSynchronous::Full,
    };
    let acquire = Duration::from_secs(settings.db_acquire_timeout_secs.max(1));
    options
        .sqlx_logging(false)
        // Two at least: start-up holds one for the migration lock while migrating on another.
        .max_connections(settings.db_max_connections.max(2))
        .acquire_timeout(acquire)
        .connect_timeout(acquire)
        .map_sqlx_sqlite_opts(move |sqlite| {
            sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                // Checkpoints run in the background instead (`spawn_wal_checkpoints`).
                .pragma("wal_autocheckpoint", "0")
                // sqlx's SQLite worker hands rows over a channel; one that holds a whole page
                // (at most 201 rows) lets a query finish without a thread hand-off per row.
                .row_buffer_size(256)
        });
    if settings.db_statement_timeout_secs > 0 {
        options.statement_timeout(Duration::from_secs(settings.db_statement_timeout_secs));
    }
    Database::connect(options).await
}

/// Where reads go: on SQLite first the request's own thread (see [`inline_reads`]), and the
/// pool for whatever that declines; elsewhere the pool.
#[derive(Clone)]
pub struct Reads {
    pool: DatabaseConnection,
    inline: Option<Arc<InlineReads>>,
}

impl Reads {
    pub async fn new(pool: &DatabaseConnection) -> Result<Self, DbErr> {
        Ok(Reads {
            pool: pool.clone(),
            inline: InlineReads::for_database(pool).await?,
        })
    }

    /// Every read on the pool (what the inline path is checked against).
    pub fn pool_only(pool: &DatabaseConnection) -> Self {
        Reads {
            pool: pool.clone(),
            inline: None,
        }
    }

    pub fn inline(&self) -> Option<&InlineReads> {
        self.inline.as_deref()
    }

    /// The backend the statements given to [`Reads::all`] must be built for.
    pub fn backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    /// The rows `statement` (built for [`Reads::backend`]) finds, as `T`s; `from_row` reads
    /// one from SQLite when it runs inline.
    pub async fn all<T>(
        &self,
        statement: Statement,
        from_row: fn(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbErr>
    where
        T: FromQueryResult + Send + Sync,
    {
        if let Some(inline) = &self.inline
            && let Some(rows) = inline.query(&statement, from_row)
        {
            return Ok(rows);
        }
        T::find_by_statement(statement).all(&self.pool).await
    }

    /// The row of `E` whose primary key is `id`, if any. The SQL is the same for every id, so
    /// it is built once, into `sql`, and only the id is bound: building it with sea-query took
    /// 14% of the instructions of a GET by id (callgrind).
    pub async fn by_id<E>(
        &self,
        sql: &'static OnceLock<String>,
        id: i64,
        from_row: fn(&rusqlite::Row) -> rusqlite::Result<E::Model>,
    ) -> Result<Option<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: FromQueryResult + Send + Sync,
        <E::PrimaryKey as PrimaryKeyTrait>::ValueType: From<i64>,
    {
        if let Some(inline) = &self.inline {
            let sql = sql.get_or_init(|| E::find_by_id(0).build(DbBackend::Sqlite).sql);
            let statement =
                Statement::from_sql_and_values(DbBackend::Sqlite, sql.clone(), [id.into()]);
            if let Some(rows) = inline.query(&statement, from_row) {
                return Ok(rows.into_iter().next());
            }
        }
        E::find_by_id(id).one(&self.pool).await
    }
}

/// Left to itself, SQLite checkpoints inside whichever commit takes the WAL past 1,000 pages:
/// that one write waits for the copy into the database file and its fsync, and behind the
/// group commit so does every write queued after it (the 800 ms PATCH p99 in the benchmark).
/// With automatic checkpoints off, this task runs a PASSIVE checkpoint twice a second, which
/// copies what it can beside readers and writers without blocking either. A process that never
/// serves (the CLI) leaves the WAL to SQLite, which checkpoints it when the last connection closes.
pub fn spawn_wal_checkpoints(db: &DatabaseConnection) {
    if db.get_database_backend() != DbBackend::Sqlite {
        return;
    }
    let db = db.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(err) = db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                tracing::warn!(error = %err, "WAL checkpoint failed; retrying");
            }
        }
    });
}

/// Brings the schema up to date; safe to run on every start, and from several instances at
/// once: on PostgreSQL an advisory lock makes them take turns, so each migration runs once.
/// `then` runs under the same lock (first-start work such as the bootstrap key).
pub async fn migrate<T>(
    db: &DatabaseConnection,
    then: impl AsyncFnOnce(&DatabaseConnection) -> Result<T, AppError>,
) -> Result<T, AppError> {
    let lock = match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
            Some(txn)
        }
        _ => None,
    };
    Migrator::up(db, None).await?;
    let outcome = then(db).await;
    if let Some(txn) = lock {
        txn.commit().await?;
    }
    outcome
}

/// An arbitrary constant naming the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x7573_6572_7361_7069; // "usersapi"

/// One page of a listing in id order, and where the next one starts if there is one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows: the extra row only tells that another page exists, which
    /// spares a COUNT. `cursor` makes the continuation from the page's last row.
    pub fn from_rows(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> Cursor) -> Self {
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
