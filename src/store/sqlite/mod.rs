//! What only SQLite needs. The pool's connections run in WAL mode, so readers never wait for
//! the writer; a serving process adds three things of its own:
//!
//! - [`writer`]: user writes committed in batches by one task over one connection (group
//!   commit), because SQLite takes one writer at a time and most of a write's cost is its
//!   commit;
//! - [`wal`]: checkpoints in the background, and the WAL started over once past its limit, so
//!   that no request waits for a checkpoint and the WAL does not grow without end;
//! - [`changes`]: a token that changes with every commit to the file, by any process, which the
//!   read caches are kept by.
//!
//! Each earns its keep in `docs/performance.md`; each can be turned off by configuration.

mod changes;
mod wal;
pub(super) mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use tokio::{sync::Notify, task::JoinHandle};

pub use self::changes::DataVersion;
use self::{changes::Changes, wal::WalLimit, writer::Writer};
use super::{DbSettings, SqliteSettings};
use crate::error::AppError;

/// How long a statement waits for a lock another connection holds: writers queue, not fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every connection's settings. WAL lets readers proceed beside the single writer;
/// `synchronous=NORMAL` keeps every acknowledged commit through a crash of the process, because
/// the WAL is written before a commit returns (FULL adds an fsync per commit, for power loss);
/// the busy timeout queues writers instead of failing them; foreign keys are enforced as on
/// other engines. When the server keeps the WAL within a limit, SQLite's own checkpoints (run
/// inside whichever commit crosses 1,000 pages) are off.
pub(super) fn configure(options: &mut ConnectOptions, settings: &SqliteSettings) {
    configure_with(options, settings, |sqlite| sqlite);
}

/// [`configure`], then `extra`: sea-orm keeps one function to apply to SQLite's options, so
/// both go in one.
fn configure_with(
    options: &mut ConnectOptions,
    settings: &SqliteSettings,
    extra: impl Fn(SqliteConnectOptions) -> SqliteConnectOptions + Send + Sync + 'static,
) {
    let synchronous = if settings.sync_full {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    let wal_limit = settings.wal_limit_bytes;
    options.map_sqlx_sqlite_opts(move |sqlite| {
        let sqlite = sqlite
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let sqlite = if wal_limit == 0 {
            sqlite
        } else {
            sqlite
                .pragma("wal_autocheckpoint", "0")
                // A WAL started over is cut back to this size at its next commit.
                .pragma("journal_size_limit", wal_limit.to_string())
        };
        extra(sqlite)
    });
}

/// A connection of its own, open for as long as the server runs: one pool connection that is
/// never closed or recycled.
async fn dedicated_connection(
    settings: &DbSettings,
    extra: impl Fn(SqliteConnectOptions) -> SqliteConnectOptions + Send + Sync + 'static,
) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(&settings.url);
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(settings.acquire_timeout);
    configure_with(&mut options, &settings.sqlite, extra);
    Database::connect(options).await
}

/// A serving process's SQLite machinery (see the module's documentation).
pub(crate) struct Serving {
    writer: Option<Writer>,
    changes: Option<Arc<Changes>>,
    /// Open while the server runs: it keeps the WAL and its index (the `-shm` file) in place,
    /// which SQLite deletes when the last connection closes, and runs the checkpoints.
    keeper: DatabaseConnection,
    tasks: Vec<JoinHandle<()>>,
    /// Set once the database file was deleted or replaced under the server: from then on
    /// writes would go to a file nobody can open again, so they are refused.
    lost: Arc<AtomicBool>,
    /// When a user write last failed for a cause that is not the request's (a full disk, a
    /// lock held elsewhere, an I/O error); readiness fails for a while after.
    write_failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Woken when events may have been committed: by this process's writes at once, by other
    /// processes' within [`CHANGE_POLL_INTERVAL`].
    events: Arc<Notify>,
}

/// How often the WAL index is looked at for commits by other processes, for the change feed.
/// One `pread` of 96 bytes.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long readiness fails after a write failed for a cause not the request's: long enough
/// for a load balancer to see it, short enough that an instance recovers without traffic.
const WRITE_FAILURE_MEMORY: Duration = Duration::from_secs(10);

/// How often the database file is checked for being the one the server opened.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What tells one file from another at the same path.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).ok().map(|_| (0, 0))
    }
}

/// Watches `file` until it stops being the file the server opened (deleted, or replaced by
/// another), then sets `lost` and says so in the log.
async fn watch_file(file: PathBuf, lost: Arc<AtomicBool>) {
    let opened = file_identity(&file);
    loop {
        tokio::time::sleep(FILE_CHECK_INTERVAL).await;
        if file_identity(&file) != opened {
            lost.store(true, Ordering::Release);
            tracing::error!(
                file = %file.display(),
                "the database file was deleted or replaced while the server ran; writes are \
                 refused (503) and readiness fails, so nothing is acknowledged that a restart \
                 would lose; restore the file or restart the server"
            );
            return;
        }
    }
}

/// Wakes `events` whenever the database changed, whichever process committed: how writes by
/// other processes on the same file reach this one's change feed.
async fn watch_commits(changes: Arc<Changes>, events: Arc<Notify>) {
    let mut seen = changes.version();
    loop {
        tokio::time::sleep(CHANGE_POLL_INTERVAL).await;
        let now = changes.version();
        if now != seen {
            seen = now;
            events.notify_one();
        }
    }
}

/// Before connecting: a database file that cannot be opened for writing (its directory is
/// missing or read-only) is a mistake to fix, not an outage to wait out, so it fails start-up
/// at once, naming the path.
pub(super) fn check_path(url: &str) -> Result<(), AppError> {
    use std::str::FromStr;
    let Ok(options) = SqliteConnectOptions::from_str(url) else {
        return Ok(());
    };
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|err| {
            // Returned before any retry: start-up fails with this message.
            AppError::Unavailable(format!(
                "cannot open the SQLite database {} for writing: {err}; check that its \
                 directory exists and this user may write there, or pass another --database-url",
                path.display()
            ))
        })
}

/// Whether a SQLite error means the database cannot be written for now (busy or locked past
/// the busy timeout, out of memory or disk, an I/O error, a file that cannot be opened or
/// written): an outage to retry, not a fault of the request.
pub(super) fn is_transient(err: &(dyn sea_orm::sqlx::error::DatabaseError + 'static)) -> bool {
    const BUSY: u32 = 5;
    const LOCKED: u32 = 6;
    const NOMEM: u32 = 7;
    const READONLY: u32 = 8;
    const IOERR: u32 = 10;
    const FULL: u32 = 13;
    const CANTOPEN: u32 = 14;
    err.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
        && err
            .code()
            .and_then(|code| code.parse::<u32>().ok())
            .is_some_and(|code| {
                // The extended code's low byte is the primary one (778 is an I/O error).
                matches!(
                    code & 0xff,
                    BUSY | LOCKED | NOMEM | READONLY | IOERR | FULL | CANTOPEN
                )
            })
}

impl Serving {
    pub async fn start(pool: &DatabaseConnection, settings: &DbSettings) -> Result<Self, AppError> {
        let file = database_file(pool).await?;
        let keeper = dedicated_connection(settings, |sqlite| sqlite).await?;
        keeper
            .execute_unprepared("SELECT count(*) FROM sqlite_schema")
            .await?;
        let mut tasks = Vec::new();
        let limit = file
            .as_deref()
            .filter(|_| settings.sqlite.wal_limit_bytes > 0)
            .map(|file| Arc::new(WalLimit::new(file, settings.sqlite.wal_limit_bytes)));
        let writer = if settings.sqlite.group_commit {
            let connection = dedicated_connection(settings, |sqlite| {
                // A transaction's statement journals (to undo one failed statement alone) in
                // memory rather than in temporary files created and deleted for every batch.
                sqlite.pragma("temp_store", "memory")
            })
            .await?;
            let (writer, task) = Writer::start(connection, limit.clone());
            tasks.push(task);
            Some(writer)
        } else {
            None
        };
        let changes = match &file {
            Some(file) => Changes::open(file)
                .map(|c| c.map(Arc::new))
                .map_err(|err| {
                    AppError::Database(DbErr::Custom(format!(
                        "cannot read the WAL index of {}: {err}",
                        file.display()
                    )))
                })?,
            None => None,
        };
        let events = Arc::new(Notify::new());
        if let Some(changes) = &changes {
            tasks.push(tokio::spawn(watch_commits(changes.clone(), events.clone())));
        }
        let lost = Arc::new(AtomicBool::new(false));
        if let Some(file) = &file {
            tasks.push(tokio::spawn(watch_file(file.clone(), lost.clone())));
        }
        if let Some(limit) = limit {
            let (connection, restarts) = (keeper.clone(), writer.is_none());
            tasks.push(tokio::spawn(async move {
                limit.run_checkpoints(connection, restarts).await;
            }));
        }
        Ok(Serving {
            writer,
            changes,
            keeper,
            tasks,
            lost,
            write_failed_at: std::sync::Mutex::default(),
            events,
        })
    }

    /// Notes that a user write committed: the change feed reads its event now.
    pub fn wrote(&self) {
        self.events.notify_one();
    }

    /// Woken when events may have been committed, by this process or another.
    pub fn events(&self) -> &Notify {
        &self.events
    }

    /// Notes that a user write failed for a cause not the request's.
    pub fn write_failed(&self) {
        *self.write_failed_at.lock().expect("write failure lock") = Some(std::time::Instant::now());
    }

    /// An error while writes fail: the file is lost, or a write failed lately.
    pub fn check_writes(&self) -> Result<(), AppError> {
        self.check_file()?;
        let failed_at = *self.write_failed_at.lock().expect("write failure lock");
        if failed_at.is_some_and(|at| at.elapsed() < WRITE_FAILURE_MEMORY) {
            return Err(AppError::Unavailable(
                "writes to the database are failing; retry shortly".into(),
            ));
        }
        Ok(())
    }

    /// An error when the database file is no longer the one opened (see [`watch_file`]).
    pub fn check_file(&self) -> Result<(), AppError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(AppError::Unavailable(
                "the database is unavailable; retry shortly".into(),
            ));
        }
        Ok(())
    }

    /// Where user writes go, if they are batched.
    pub fn writer(&self) -> Option<&Writer> {
        self.writer.as_ref()
    }

    pub fn data_version(&self) -> Option<DataVersion> {
        self.changes.as_ref()?.version()
    }

    /// Stops the background work and closes the connections of its own.
    pub async fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        if let Err(err) = self.keeper.close_by_ref().await {
            tracing::debug!(error = %err, "closing the SQLite keeper connection");
        }
    }
}

/// The file of a SQLite database; `None` for a database that lives only in memory.
async fn database_file(db: &DatabaseConnection) -> Result<Option<PathBuf>, DbErr> {
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

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;
    use crate::store::tests::settings;

    async fn pragma(db: &DatabaseConnection, name: &str) -> String {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA {name}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
            .unwrap()
    }

    /// Every connection the server opens has the settings, its own ones too: WAL,
    /// `synchronous=NORMAL` (no fsync per commit), no automatic checkpoints, and for the
    /// writer statement journals in memory.
    #[tokio::test]
    async fn dedicated_connections_keep_every_setting() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(&dir);
        let writer =
            dedicated_connection(&settings, |sqlite| sqlite.pragma("temp_store", "memory"))
                .await
                .unwrap();
        for (name, expected) in [
            ("journal_mode", "wal"),
            ("synchronous", "1"),
            ("wal_autocheckpoint", "0"),
            ("busy_timeout", "5000"),
            ("temp_store", "2"),
        ] {
            assert_eq!(pragma(&writer, name).await, expected, "PRAGMA {name}");
        }
    }
}
