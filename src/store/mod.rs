//! Database access: small functions over sea-orm, one module per table. Nothing here knows HTTP.

pub mod api_keys;
pub mod group_commit;
pub mod idempotency;
pub mod inline_reads;
pub mod rate_limits;
pub mod read_cache;
pub mod sqlite_memory;
pub mod sqlite_threads;
pub mod users;
pub mod wal_index;
pub mod wal_limit;

use std::{
    path::PathBuf,
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
    config::{DbArgs, SqliteLocking, SqliteSync},
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
    refuse_if_held(&settings.database_url)?;
    // Two at least: start-up holds one for the migration lock while migrating on another.
    let mut options = options(settings, settings.db_max_connections.max(2), Role::Pool);
    if settings.db_statement_timeout_secs > 0 {
        options.statement_timeout(Duration::from_secs(settings.db_statement_timeout_secs));
    }
    Database::connect(options).await
}

/// Fails at once, with the reason, if another process holds the SQLite file alone (a server
/// with `--sqlite-locking exclusive`). Left to the pool, every connection attempt would wait
/// out its busy timeout and the caller would retry for `--db-startup-wait-secs`, to report a
/// pool timeout in the end.
fn refuse_if_held(url: &str) -> Result<(), DbErr> {
    use sea_orm::sqlx::sqlite::SqliteConnectOptions;
    let Some(options) = url
        .starts_with("sqlite:")
        .then(|| url.parse::<SqliteConnectOptions>().ok())
        .flatten()
    else {
        return Ok(());
    };
    let path = options.get_filename();
    if !path.is_file() {
        return Ok(()); // Not created yet, or in memory.
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let read = rusqlite::Connection::open_with_flags(path, flags).and_then(|connection| {
        // Long enough to ride out another process's brief exclusive moments (a recovery).
        connection.busy_timeout(Duration::from_secs(1))?;
        connection.query_row("PRAGMA schema_version", [], |_| Ok(()))
    });
    match read {
        Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            Err(DbErr::Custom(format!(
                "{} is held by another process, which keeps every other one out (a server \
                 started with --sqlite-locking exclusive?): stop it, or use the HTTP API",
                path.display()
            )))
        }
        // Anything else is for the pool to meet and report.
        _ => Ok(()),
    }
}

/// The one connection through which a SQLite database's group commit writes users (see
/// [`group_commit`]), beside the pool. Written through any pool connection, each of them
/// prepared and cached its own copy of every statement a batch uses (a multi-row INSERT per
/// row count, for users and for idempotency records, and the lookup of a run's keys).
pub async fn connect_writer(settings: &DbArgs) -> Result<DatabaseConnection, DbErr> {
    let mut options = options(settings, 1, Role::Writer);
    options.min_connections(1);
    Database::connect(options).await
}

/// How long a statement waits for a lock another connection holds: writers queue, not fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements the writer keeps prepared: every row count (1 to 64) of the users INSERT, of
/// the idempotency-record INSERT and of the key lookup, and the few others a batch runs.
const WRITER_STATEMENTS: usize = 256;

/// Which connections [`options`] is for.
#[derive(Clone, Copy)]
enum Role {
    Pool,
    /// The group commit's own connection (see [`connect_writer`]).
    Writer,
}

fn options(settings: &DbArgs, connections: u32, role: Role) -> ConnectOptions {
    let mut options = ConnectOptions::new(&settings.database_url);
    let synchronous = match settings.sqlite_synchronous {
        SqliteSync::Normal => SqliteSynchronous::Normal,
        SqliteSync::Full => SqliteSynchronous::Full,
    };
    let acquire = Duration::from_secs(settings.db_acquire_timeout_secs.max(1));
    let wal_limit = wal_limit_bytes(settings);
    let locking = settings.sqlite_locking;
    options
        .sqlx_logging(false)
        .max_connections(connections)
        .acquire_timeout(acquire)
        .connect_timeout(acquire)
        .map_sqlx_sqlite_opts(move |sqlite| {
            let sqlite = sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(BUSY_TIMEOUT)
                .foreign_keys(true)
                // Checkpoints run in the background instead (`WalLimit`).
                .pragma("wal_autocheckpoint", "0")
                // A WAL reused from its start is cut back to this size at its next commit.
                .pragma("journal_size_limit", wal_limit.to_string())
                // sqlx's SQLite worker hands rows over a channel; one that holds a whole page
                // (at most 201 rows) lets a query finish without a thread hand-off per row.
                .row_buffer_size(256);
            let sqlite = match locking {
                SqliteLocking::Shared => sqlite,
                SqliteLocking::Exclusive => sqlite.vfs(inline_reads::EXCLUSIVE_VFS),
            };
            match role {
                Role::Pool => sqlite,
                Role::Writer => sqlite
                    .statement_cache_capacity(WRITER_STATEMENTS)
                    // A multi-row INSERT inside a transaction keeps a statement journal (to undo
                    // that statement alone if it fails); past 64 KiB, which nearly every batch's
                    // INSERT passed, SQLite moved it to a temporary file, created and unlinked
                    // for each batch in /var/tmp (strace under POST load: 21% of the writer's
                    // writes). Kept in memory instead; it never held anything a crash needs, and
                    // a batch's is bounded by its 64 rows. The pool keeps the default (files),
                    // so that a large sort or temporary b-tree there can still spill to disk.
                    .pragma("temp_store", "memory"),
            }
        });
    options
}

/// `--sqlite-wal-limit-mib` in bytes: the WAL is restarted from its beginning, and its file cut
/// back to this size, once it holds this much (see [`wal_limit::WalLimit`]).
fn wal_limit_bytes(settings: &DbArgs) -> u64 {
    u64::from(settings.sqlite_wal_limit_mib) * 1024 * 1024
}

/// Where reads go: on SQLite first the request's own thread (see [`inline_reads`]), and the
/// pool for whatever that declines; elsewhere the pool.
#[derive(Clone)]
pub struct Reads {
    pool: DatabaseConnection,
    inline: Option<Arc<InlineReads>>,
}

impl Reads {
    /// `locking` is the `--sqlite-locking` the pool was opened with: the inline connections
    /// must open the file the same way.
    pub async fn new(pool: &DatabaseConnection, locking: SqliteLocking) -> Result<Self, DbErr> {
        Ok(Reads {
            pool: pool.clone(),
            inline: InlineReads::for_database(pool, locking).await?,
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

    /// The inline reads, to share with a cache of what they read (see `read_cache`).
    pub fn inline_shared(&self) -> Option<Arc<InlineReads>> {
        self.inline.clone()
    }

    /// The backend the statements given to [`Reads::pooled`] must be built for.
    pub fn backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    /// The rows `statement` finds, read on the pool: every read on PostgreSQL, and on SQLite
    /// one that could not run inline.
    pub async fn pooled<T>(&self, statement: Statement) -> Result<Vec<T>, DbErr>
    where
        T: FromQueryResult + Send + Sync,
    {
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

/// The file of a SQLite database; `None` on other backends and for a database that lives
/// only in memory.
pub async fn database_file(db: &DatabaseConnection) -> Result<Option<PathBuf>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let main = Statement::from_string(
        DbBackend::Sqlite,
        "SELECT file FROM pragma_database_list WHERE name = 'main'",
    );
    let file: String = match db.query_one_raw(main).await? {
        Some(row) => row.try_get("", "file")?,
        None => return Ok(None),
    };
    Ok((!file.is_empty()).then(|| PathBuf::from(file)))
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use crate::config::Cli;

    /// The writer's settings, read back from SQLite: WAL, `synchronous=NORMAL`, no automatic
    /// checkpoints (the background task's), and statement journals in memory.
    #[tokio::test]
    async fn the_writer_connection_is_set_up_for_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("writer.db").display());
        let cli = Cli::parse_from(["users-api", "--database-url", &url]);
        let writer = super::connect_writer(&cli.db).await.unwrap();
        for (pragma, expected) in [
            ("journal_mode", "wal"),
            ("synchronous", "1"),
            ("wal_autocheckpoint", "0"),
            ("temp_store", "2"),
        ] {
            let row = writer
                .query_one_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    format!("PRAGMA {pragma}"),
                ))
                .await
                .unwrap()
                .unwrap();
            let value = row
                .try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
                .unwrap();
            assert_eq!(value, expected, "PRAGMA {pragma}");
        }
    }
}
