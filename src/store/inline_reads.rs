//! SQLite reads run on the calling thread.
//!
//! sqlx gives every SQLite connection a thread of its own: each statement is handed to that
//! thread and its rows handed back, two context switches a query. For the reads that dominate
//! the API (a user by id, a page walking an index) that hand-off costs more than SQLite's own
//! work: in a profile of `GET /users/{id}`, 40% of the CPU went to waking and switching threads.
//! Here the same sea-orm query runs synchronously, on the request's own thread, on a small pool
//! of read-only connections.
//!
//! Blocking an async runtime thread is only acceptable for work known to be short, so every
//! statement runs under a budget of SQLite virtual-machine steps.
//! A statement that exceeds it, or that finds the database busy, is abandoned and the caller
//! runs it on the sqlx pool instead, off the runtime's threads. Reads see what every committed
//! write left, as on the pool: each statement is its own WAL read transaction.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, Row,
    config::DbConfig,
    types::{Type, Value as SqliteValue, ValueRef},
};
use sea_orm::{DatabaseConnection, DbErr, Statement, sea_query::Value};

use super::wal_index::{CommitStamp, WalIndex};
use crate::{config::SqliteLocking, timestamp::Stamp};

/// The progress callback runs every this many virtual-machine steps...
const STEPS_PER_CHECK: i32 = 1_000;
/// ...and interrupts the statement on this call: 25,000 steps. Counted with SQLite's progress
/// handler, a user by id takes 149 steps and a page of 200 users 2,823; a search that scans
/// 50,000 users to fill a page takes 200,012 and goes to the pool.
const CHECKS_ALLOWED: u32 = 25;
/// Connections kept for reuse. Statements run on runtime threads one at a time each, so more
/// than the runtime's threads are never in use at once.
const MAX_IDLE: usize = 8;

/// The VFS with which a process holds its SQLite file alone (`--sqlite-locking exclusive`):
/// it locks the file once, for its lifetime, and keeps the WAL index in its own memory instead
/// of a shared `-shm` file. Every read transaction otherwise locks and unlocks a byte of that
/// file with `fcntl(2)` under a mutex of SQLite's; under a GET-by-id load on two threads that
/// lock took 11% of the server's CPU (perf), most of it in the system calls and in threads
/// waiting on each other for the mutex.
pub const EXCLUSIVE_VFS: &str = "unix-excl";

/// A connection of this process's own to the database file, on the VFS `locking` asks for.
pub fn open_file(
    path: &Path,
    flags: OpenFlags,
    locking: SqliteLocking,
) -> rusqlite::Result<Connection> {
    match locking {
        SqliteLocking::Shared => Connection::open_with_flags(path, flags),
        SqliteLocking::Exclusive => {
            let vfs = std::ffi::CString::new(EXCLUSIVE_VFS).expect("no NUL in a VFS name");
            Connection::open_with_flags_and_vfs(path, flags, vfs.as_c_str())
        }
    }
}

/// The pool of read-only connections to one SQLite database file.
pub struct InlineReads {
    path: PathBuf,
    locking: SqliteLocking,
    idle: Mutex<Vec<ReadConnection>>,
    /// Where commits show, for caches of what is read here; `None` if it could not be mapped.
    wal_index: Option<WalIndex>,
    /// Statements answered here, and handed to the pool (for the metrics).
    answered: AtomicU64,
    deferred: AtomicU64,
}

struct ReadConnection {
    connection: Connection,
    /// Progress callbacks made during the current statement.
    checks: Arc<AtomicU32>,
}

/// Why a statement was not answered inline.
enum Deferred {
    /// Over budget, or the database was busy: expected, and the pool will do it.
    Expected,
    /// Anything else: the pool will do it and report its own error, if any.
    Unexpected(rusqlite::Error),
}

impl InlineReads {
    /// For the file the pool's connections have open; `None` on other backends and for a
    /// database that lives only in memory (no other connection could see it).
    pub async fn for_database(
        db: &DatabaseConnection,
        locking: SqliteLocking,
    ) -> Result<Option<Arc<Self>>, DbErr> {
        let Some(path) = super::database_file(db).await? else {
            return Ok(None);
        };
        let mut reads = InlineReads {
            path,
            locking,
            idle: Mutex::new(Vec::new()),
            wal_index: None,
            answered: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
        };
        // Fail at start, not on the first request, if the file cannot be opened.
        let first = reads
            .open()
            .map_err(|err| DbErr::Custom(format!("opening a read connection: {err}")))?;
        reads.put_back(first);
        // Without it, reads are simply never cached.
        reads.wal_index = reads
            .open()
            .and_then(|read| WalIndex::map(read.connection))
            .inspect_err(|err| tracing::warn!(error = %err, "reads will not be cached"))
            .ok();
        Ok(Some(Arc::new(reads)))
    }

    fn open(&self) -> rusqlite::Result<ReadConnection> {
        // Read-only: nothing on this path can write. No mutex: the pool hands a connection to
        // one thread at a time.
        //
        // With exclusive locking, opened read-write, as the process's other connections are: a
        // read-only one takes its own lock on the file, which, all locks of a process being
        // one, would turn the process's exclusive lock into a shared one whenever no other
        // connection held the file. Made read-only by `query_only` instead.
        let exclusive = self.locking == SqliteLocking::Exclusive;
        let access = if exclusive {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let connection = open_file(
            &self.path,
            access | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            self.locking,
        )?;
        if exclusive {
            connection.pragma_update(None, "query_only", true)?;
        }
        // Busy means wait; waiting is the pool's job.
        connection.busy_timeout(Duration::ZERO)?;
        // Plans that ignore bound values: otherwise SQLite re-parses and re-plans a cached
        // statement whenever a value its plan looked at changes (`LIMIT ?`, for one), which
        // here was every execution.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        connection.set_prepared_statement_cache_capacity(32);
        let checks = Arc::new(AtomicU32::new(0));
        let counter = checks.clone();
        connection.progress_handler(
            STEPS_PER_CHECK,
            Some(move || counter.fetch_add(1, Ordering::Relaxed) + 1 >= CHECKS_ALLOWED),
        )?;
        Ok(ReadConnection { connection, checks })
    }

    fn take(&self) -> rusqlite::Result<ReadConnection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(connection) => Ok(connection),
            None => self.open(),
        }
    }

    fn put_back(&self, connection: ReadConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    /// Runs `statement` and maps each row with `from_row`; `None` when it has to run on the
    /// pool instead (see the module's documentation).
    pub fn query<T>(
        &self,
        statement: &Statement,
        from_row: fn(&Row) -> rusqlite::Result<T>,
    ) -> Option<Vec<T>> {
        let mut rows = Vec::new();
        let answered = self.each(statement, |row| {
            rows.push(from_row(row)?);
            Ok(())
        });
        answered.then_some(rows)
    }

    /// Runs `statement` and hands each row to `each`, as it is read; `false` when it has to
    /// run on the pool instead (see the module's documentation), in which case `each` may
    /// have seen some of the rows already.
    pub fn each(
        &self,
        statement: &Statement,
        each: impl FnMut(&Row) -> rusqlite::Result<()>,
    ) -> bool {
        let outcome = self.take().map_err(Deferred::from).and_then(|read| {
            read.checks.store(0, Ordering::Relaxed);
            let done = run(&read.connection, statement, each);
            self.put_back(read);
            done
        });
        let counter = match outcome {
            Ok(()) => &self.answered,
            Err(_) => &self.deferred,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => true,
            Err(Deferred::Expected) => false,
            Err(Deferred::Unexpected(err)) => {
                tracing::warn!(error = %err, "inline read failed; running it on the pool");
                false
            }
        }
    }

    /// The state of the database's commits now (see `wal_index`): while it stays the same,
    /// so does everything read here. `None` when it cannot be known.
    pub fn commit_stamp(&self) -> Option<CommitStamp> {
        self.wal_index.as_ref().and_then(WalIndex::stamp)
    }

    /// Statements answered inline and statements handed to the pool, since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.deferred.load(Ordering::Relaxed),
        )
    }
}

impl From<rusqlite::Error> for Deferred {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(
                ErrorCode::OperationInterrupted
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked,
            ) => Deferred::Expected,
            _ => Deferred::Unexpected(err),
        }
    }
}

fn run(
    connection: &Connection,
    statement: &Statement,
    mut each: impl FnMut(&Row) -> rusqlite::Result<()>,
) -> Result<(), Deferred> {
    let values = match &statement.values {
        Some(values) => values.0.iter().map(bind).collect::<Option<Vec<_>>>(),
        None => Some(Vec::new()),
    }
    .ok_or_else(|| {
        Deferred::Unexpected(rusqlite::Error::InvalidParameterName(
            "a value of a type inline reads do not bind".into(),
        ))
    })?;
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    let mut rows = prepared.query(rusqlite::params_from_iter(values))?;
    while let Some(row) = rows.next()? {
        each(row)?;
    }
    Ok(())
}

/// A query value as SQLite stores it, written as sqlx writes it (a timestamp as RFC 3339
/// text, so comparisons with stored timestamps agree); `None` for types no read here uses.
fn bind(value: &Value) -> Option<SqliteValue> {
    fn or_null<T>(value: Option<T>, some: impl FnOnce(T) -> SqliteValue) -> SqliteValue {
        value.map_or(SqliteValue::Null, some)
    }
    Some(match value {
        Value::Bool(v) => or_null(*v, |v| SqliteValue::Integer(v.into())),
        Value::Int(v) => or_null(*v, |v| SqliteValue::Integer(v.into())),
        Value::BigInt(v) => or_null(*v, SqliteValue::Integer),
        Value::Unsigned(v) => or_null(*v, |v| SqliteValue::Integer(v.into())),
        Value::BigUnsigned(v) => or_null(v.map(i64::try_from), |v| {
            v.map_or(SqliteValue::Null, SqliteValue::Integer)
        }),
        Value::String(v) => or_null(v.clone(), SqliteValue::Text),
        Value::ChronoDateTimeUtc(v) => or_null(*v, |at| {
            SqliteValue::Text(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
        }),
        _ => return None,
    })
}

/// A stored timestamp, read as sqlx reads it: RFC 3339, or SQLite's own `YYYY-MM-DD HH:MM:SS`
/// forms (taken as UTC when they carry no offset).
pub fn timestamp(row: &Row, column: usize) -> rusqlite::Result<DateTime<Utc>> {
    let value = row.get_ref(column)?;
    // The stored form straight from SQLite's bytes; anything else is checked as UTF-8 first.
    if let ValueRef::Text(bytes) = value
        && let Some(at) = crate::timestamp::parse_bytes(bytes)
    {
        return Ok(at);
    }
    let text = value.as_str()?;
    parse_other_forms(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            Type::Text,
            format!("not a timestamp: {text:?}").into(),
        )
    })
}

/// A stored timestamp as its text when that is the text the API sends for it (as sqlx
/// writes it, it is), and otherwise read as [`timestamp`] reads it.
pub fn stamp<'r>(row: &'r Row<'_>, column: usize) -> rusqlite::Result<Stamp<'r>> {
    if let ValueRef::Text(bytes) = row.get_ref(column)?
        && crate::timestamp::is_written(bytes)
    {
        return Ok(Stamp::Written(bytes));
    }
    timestamp(row, column).map(Stamp::At)
}

/// The forms other than the one sqlx writes (which [`timestamp`] has already tried), by chrono.
fn parse_other_forms(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.to_utc());
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%F %T%.f%:z") {
        return Some(at.to_utc());
    }
    NaiveDateTime::parse_from_str(text, "%F %T%.f")
        .ok()
        .map(|at| at.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a column value, read back through [`timestamp`].
    fn read_timestamp(text: &str) -> rusqlite::Result<DateTime<Utc>> {
        Connection::open_in_memory()?.query_row("SELECT ?1", [text], |row| timestamp(row, 0))
    }

    #[test]
    fn timestamps_parse_in_every_form_sqlx_writes_or_sqlite_makes() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:30:00.123456Z")
            .unwrap()
            .to_utc();
        for text in [
            "2026-11-24T09:30:00.123456+00:00",
            "2026-11-24T09:30:00.123456Z",
            "2026-11-24T10:30:00.123456+01:00",
            "2026-11-24 09:30:00.123456+00:00",
            "2026-11-24 09:30:00.123456",
        ] {
            assert_eq!(read_timestamp(text).ok(), Some(at), "{text}");
        }
        assert!(read_timestamp("yesterday").is_err());
    }

    #[test]
    fn timestamps_bind_as_the_text_sqlx_stores() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:30:00.120Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            bind(&Value::ChronoDateTimeUtc(Some(at))),
            Some(SqliteValue::Text("2026-11-24T09:30:00.120+00:00".into()))
        );
        assert_eq!(bind(&Value::BigInt(None)), Some(SqliteValue::Null));
        assert_eq!(bind(&Value::Double(Some(1.0))), None);
    }
}
