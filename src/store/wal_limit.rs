//! Keeps a SQLite WAL short without making writes wait for it, and near
//! `--sqlite-wal-limit-mib` under steady writes.
//!
//! Left to itself, SQLite checkpoints inside whichever commit takes the WAL past 1,000 pages:
//! that one write waits for the copy into the database file and its fsync, and behind the
//! group commit so does every write queued after it (the 800 ms PATCH p99 in the benchmark).
//! With automatic checkpoints off, a background task runs a PASSIVE checkpoint twice a second,
//! which copies what it can beside readers and writers without blocking either. A process that
//! never serves (the CLI) leaves the WAL to SQLite, which checkpoints it when the last
//! connection closes.
//!
//! A writer reuses the WAL from its start only if, when it begins, every frame in it has been
//! copied back; under steady writes a new commit always lands before a background checkpoint
//! finishes, so the WAL only grew (to 2.3 GB in 30 s of the benchmark's writes, and its index
//! in shared memory with it). So the group commit's writer, the one connection user writes go
//! through, looks at the WAL's size after each batch. Past the limit, it asks for a background
//! checkpoint at once, and after that one, between two batches, runs a RESTART checkpoint:
//! that copies back the little that came in meanwhile and waits for readers still on the WAL
//! (one statement each), so the next batch starts the WAL over, and `journal_size_limit` cuts
//! the file back to the limit at its commit. Readers are not held up; writes are, for the few
//! milliseconds the RESTART takes. (Run at any moment instead, it had up to half a second of
//! frames to copy, and met the background checkpoint: 27 ms a restart (median), against 5.6.)
//!
//! Two things keep that RESTART short as the database grows. SQLite syncs the database file
//! only at the end of a checkpoint that copied every frame of the WAL, which under steady
//! writes none but the RESTART does; so every page the background checkpoints had copied
//! since the last RESTART waited in the OS's cache for the RESTART's fsync, the more of them
//! the larger the tables: in five 8 s rounds of creates on one server, as the database grew to
//! 380 MiB (about 1.1 million users), the median RESTART went from 6.9 ms in the first fifth of
//! the rounds to 12.4 ms in the last, and POST's p99 from 6.5 to 22 ms. So the background task
//! syncs the file itself after each checkpoint, off the writer's path (3.2 ms, median, after a
//! 10.6 ms checkpoint, in 16 s of creates; logged at debug). And the writer asks for
//! up to [`MAX_PASSES`] background checkpoints before it restarts, until at most
//! [`RESTART_AFTER_FRAMES`] frames are left for the RESTART to copy and sync. With both, in the
//! same rounds: 2.2 ms in the first fifth, 2.3 ms in the last, POST's p99 3.6–4.6 ms.
//!
//! Neither helps when writes come in faster than checkpoints can copy them back, as random
//! updates of a large table do: then the writer is paced while the WAL is far past its limit
//! (see [`PACE_PAST_PERCENT`]).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, ffi};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use super::{BUSY_TIMEOUT, database_file, inline_reads, wal_limit_bytes};
use crate::config::{DbArgs, SqliteLocking};

/// The WAL file's own header, before its first frame.
const WAL_HEADER_BYTES: u64 = 32;

/// How long background checkpoints wait for a restart the writer asked for: a writer that
/// has no more batches to run it after is not waited for.
const RESTART_WAIT: Duration = Duration::from_secs(1);

/// A restart copies back, and syncs, the frames written since the last background checkpoint
/// began, and writes wait while it does: past this many (2 MiB of 4 KiB pages) the writer asks
/// for another background checkpoint first, up to [`MAX_PASSES`] in all. Each finds fewer
/// frames behind than the one before, as a checkpoint copies faster than writes come in. In
/// the rounds above (with the sync), one pass left a median 1,819 frames and restarts took
/// 7.1 ms; up to three with this bound, 276 frames and 2.4 ms.
const RESTART_AFTER_FRAMES: u64 = 512;
const MAX_PASSES: u32 = 3;

/// Writes that outrun the checkpoints are paced: while the WAL is past this share of its limit
/// (in percent), the writer pauses for [`PACE`] after each batch. Random updates of a large
/// table dirty a page of the table and of each index per write, scattered over the file, so a
/// checkpoint has thousands of scattered pages to copy and sync. On the benchmark's machine
/// (1,000,000 users, PATCHes at random), once a batch of updates became one statement, the
/// writer outran the background checkpoints: the WAL grew to about three times its limit, and
/// each restart, left with 6,000–9,000 frames to copy and sync, held writes for 60 ms (median;
/// PATCH p99 68 ms, against 15 ms when each update was a statement of its own and the writer
/// slower). A writer that outruns the disk has to wait somewhere: short pauses while the WAL is
/// far past its limit spread the wait instead of gathering it into one long stop. Paced from
/// 200%, 150% and 125% of the limit, p99 was 44, 21 and 15 ms. Below 150%: a healthy cycle
/// (the writer asks for a checkpoint at 100% and restarts after it) peaked at 112–122% in the
/// benchmark's creates and updates of 1,000 users, which must not be paced.
const PACE_PAST_PERCENT: u64 = 150;
const PACE: Duration = Duration::from_millis(8);

pub struct WalLimit {
    /// `None` for a database with no file (in memory).
    wal: Option<PathBuf>,
    limit: u64,
    /// A WAL frame: a page and its 24-byte header.
    frame_bytes: u64,
    checkpoints: Arc<Checkpoints>,
    /// A restart that could not complete (a long read) is not retried before this.
    not_before: Instant,
    /// Background checkpoints asked for since the WAL went past its limit.
    passes: u32,
}

#[derive(Default)]
struct Checkpoints {
    now: tokio::sync::Notify,
    done: AtomicBool,
    /// Frames of the WAL that the last background checkpoint had copied back.
    copied: AtomicU64,
    /// Since when the writer has been waiting to restart the WAL: it asked for a background
    /// checkpoint, and restarts after that one (`None`: not waiting). Meanwhile the
    /// twice-a-second checkpoints pause: SQLite lets one checkpoint run at a time and a
    /// RESTART that meets another fails at once. Without the pause, once PASSIVE checkpoints
    /// of a large WAL ran back to back, every restart met one (15 of 15 in a 10 s run of
    /// idempotent creates) and the WAL grew to 411 MB past its 64 MiB limit.
    restart_waiting: Mutex<Option<Instant>>,
    /// Held by whichever of the two runs a checkpoint: the pause above keeps the writer from
    /// waiting on it, this keeps a restart from ever meeting a checkpoint the pause let
    /// through (the writer's own request, started late, still met one in 2 to 11 of 12
    /// restarts).
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    fn restart_waiting(&self) -> MutexGuard<'_, Option<Instant>> {
        self.restart_waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether to run a PASSIVE checkpoint now: always when the writer asked for it, on the
    /// twice-a-second tick unless the writer has been waiting to restart for under
    /// [`RESTART_WAIT`].
    fn passive_due(&self, asked: bool) -> bool {
        asked
            || !self
                .restart_waiting()
                .is_some_and(|since| since.elapsed() < RESTART_WAIT)
    }
}

/// How long the writer pauses after a batch that left the WAL `size` bytes long (see [`PACE`]).
fn pause(size: u64, limit: u64) -> Option<Duration> {
    (size.saturating_mul(100) > limit.saturating_mul(PACE_PAST_PERCENT)).then_some(PACE)
}

/// Whether the writer, its last request for a background checkpoint answered with `behind`
/// frames left to copy, should restart the WAL now rather than ask for another.
fn restart_now(behind: u64, passes: u32) -> bool {
    behind <= RESTART_AFTER_FRAMES || passes >= MAX_PASSES
}

impl WalLimit {
    /// Starts the background checkpoints on a connection of their own; `writer` is the
    /// connection user writes go through.
    pub async fn start(writer: &DatabaseConnection, settings: &DbArgs) -> Result<Self, DbErr> {
        let checkpoints = Arc::new(Checkpoints::default());
        let file = database_file(writer).await?;
        if let Some(file) = &file {
            let checkpointer = Checkpointer::open(file, settings.sqlite_locking)
                .map_err(|err| DbErr::Custom(format!("the checkpoints' connection: {err}")))?;
            tokio::spawn(checkpoint(checkpointer, Arc::downgrade(&checkpoints)));
        }
        let page_size = writer
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA page_size",
            ))
            .await?
            .map_or(Ok(4096), |row| row.try_get_by_index::<i64>(0))?;
        Ok(WalLimit {
            wal: file.map(|file| {
                let mut wal = file.into_os_string();
                wal.push("-wal");
                PathBuf::from(wal)
            }),
            limit: wal_limit_bytes(settings),
            frame_bytes: page_size.unsigned_abs() + 24,
            checkpoints,
            not_before: Instant::now(),
            passes: 0,
        })
    }

    /// Between two batches, on the writer: see the module's documentation.
    pub async fn enforce(&mut self, writer: &DatabaseConnection) {
        let Some(wal) = &self.wal else { return };
        // One stat(2) a batch; the file is cut back to the limit only at the commit after a
        // restart, so past the limit frames are appended at its end and its size counts them.
        let size = std::fs::metadata(wal).map_or(0, |m| m.len());
        if self.checkpoints.restart_waiting().is_some() {
            if self.checkpoints.done.swap(false, Ordering::Acquire) {
                let frames = size.saturating_sub(WAL_HEADER_BYTES) / self.frame_bytes;
                let behind = frames.saturating_sub(self.checkpoints.copied.load(Ordering::Acquire));
                if restart_now(behind, self.passes) {
                    self.restart(writer, behind).await;
                    self.passes = 0;
                    *self.checkpoints.restart_waiting() = None;
                    return;
                }
                self.ask_for_checkpoint();
            }
        } else if size > self.limit && Instant::now() >= self.not_before {
            self.ask_for_checkpoint();
        }
        if let Some(pause) = pause(size, self.limit) {
            tokio::time::sleep(pause).await;
        }
    }

    fn ask_for_checkpoint(&mut self) {
        self.passes += 1;
        *self.checkpoints.restart_waiting() = Some(Instant::now());
        // A checkpoint that ends from now on will do, one already running included.
        self.checkpoints.done.store(false, Ordering::Release);
        self.checkpoints.now.notify_one();
    }

    /// `behind`: frames the last background checkpoint had not copied back.
    async fn restart(&mut self, writer: &DatabaseConnection, behind: u64) {
        let checkpoints = self.checkpoints.clone();
        let _one = checkpoints.one_at_a_time.lock().await;
        let started = Instant::now();
        let restart = async {
            // Readers are short; one that is not is waited for no longer than this.
            writer
                .execute_unprepared("PRAGMA busy_timeout = 50")
                .await?;
            let restarted = writer
                .query_one_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    "PRAGMA wal_checkpoint(RESTART)",
                ))
                .await;
            writer
                .execute_unprepared(&format!(
                    "PRAGMA busy_timeout = {}",
                    BUSY_TIMEOUT.as_millis()
                ))
                .await?;
            restarted
        };
        let backoff = started + Duration::from_millis(500);
        match restart.await {
            // The columns: busy (1 if a reader or another checkpoint held it up), frames in
            // the WAL, frames copied back.
            Ok(Some(row)) => {
                let busy = row.try_get_by_index::<i64>(0).unwrap_or(1);
                if busy != 0 {
                    self.not_before = backoff;
                }
                tracing::debug!(
                    busy,
                    frames = row.try_get_by_index::<i64>(1).unwrap_or(-1),
                    behind,
                    passes = self.passes,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "WAL restart checkpoint"
                );
            }
            Ok(None) => {}
            Err(err) => {
                self.not_before = backoff;
                tracing::warn!(error = %err, "WAL restart failed; retrying later");
            }
        }
    }
}

/// The background checkpoints' own connection to the database file.
struct Checkpointer(Connection);

impl Checkpointer {
    fn open(file: &Path, locking: SqliteLocking) -> rusqlite::Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Ok(Checkpointer(inline_reads::open_file(file, flags, locking)?))
    }

    /// A PASSIVE checkpoint, then the database file synced: the frames of the WAL it had
    /// copied back when it ended.
    fn passive(&self) -> rusqlite::Result<u64> {
        // The columns: busy, frames in the WAL, frames copied back.
        let started = Instant::now();
        let copied: i64 = self
            .0
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(2))?;
        let checkpointed = started.elapsed();
        self.sync_database_file()?;
        tracing::debug!(
            copied,
            checkpoint_us = checkpointed.as_micros() as u64,
            sync_us = (started.elapsed() - checkpointed).as_micros() as u64,
            "WAL background checkpoint"
        );
        Ok(copied.max(0).unsigned_abs())
    }

    /// Syncs the database file through SQLite's own handle on it. Opening the file again to
    /// sync it would not do: closing any descriptor of a file drops every POSIX lock the
    /// process holds on it, SQLite's among them.
    fn sync_database_file(&self) -> rusqlite::Result<()> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the connection is open, and no other thread uses it meanwhile (a rusqlite
        // `Connection` is not `Sync`); `SQLITE_FCNTL_FILE_POINTER` writes one `sqlite3_file`
        // pointer into `file`: the main database's, which SQLite keeps open for as long as the
        // connection is.
        let code = unsafe {
            ffi::sqlite3_file_control(
                self.0.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        if code != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
        }
        // SAFETY: a non-null `file` is that open file, whose methods (the VFS's) SQLite keeps
        // for as long as it is open; `xSync` is how SQLite itself syncs it at a checkpoint.
        let code = unsafe {
            match file.as_ref().and_then(|file| file.pMethods.as_ref()) {
                Some(methods) => match methods.xSync {
                    Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
                    None => ffi::SQLITE_OK,
                },
                // Not open: nothing written to sync.
                None => ffi::SQLITE_OK,
            }
        };
        if code != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
        }
        Ok(())
    }
}

/// The background checkpoints: twice a second, and at once when the writer asks. Ends once
/// the writer is gone.
async fn checkpoint(checkpointer: Checkpointer, writer_side: Weak<Checkpoints>) {
    // Shared with the blocking thread rather than moved there and back, so that a panic there
    // loses one checkpoint, not the connection and with it every later checkpoint (and the
    // writer, waiting for the one it asked for, every restart).
    let checkpointer = Arc::new(Mutex::new(checkpointer));
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(checkpoints) = writer_side.upgrade() else {
            return;
        };
        let asked = tokio::select! {
            _ = ticker.tick() => false,
            _ = checkpoints.now.notified() => true,
        };
        if asked {
            ticker.reset();
        }
        if !checkpoints.passive_due(asked) {
            continue;
        }
        let passive = {
            let _one = checkpoints.one_at_a_time.lock().await;
            let checkpointer = checkpointer.clone();
            // Copying pages and syncing a file: work for a blocking thread.
            tokio::task::spawn_blocking(move || {
                checkpointer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .passive()
            })
            .await
        };
        match passive {
            Ok(Ok(copied)) => checkpoints.copied.store(copied, Ordering::Release),
            Ok(Err(err)) => tracing::warn!(error = %err, "WAL checkpoint failed; retrying"),
            Err(err) => tracing::error!(error = %err, "WAL checkpoint panicked; retrying"),
        }
        checkpoints.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        Checkpointer, Checkpoints, MAX_PASSES, PACE, PACE_PAST_PERCENT, RESTART_AFTER_FRAMES,
        RESTART_WAIT, pause, restart_now,
    };
    use crate::config::SqliteLocking;

    #[test]
    fn background_checkpoints_pause_while_the_writer_waits_to_restart() {
        let checkpoints = Checkpoints::default();
        assert!(
            checkpoints.passive_due(false),
            "nothing waiting: the tick runs"
        );

        *checkpoints.restart_waiting() = Some(Instant::now());
        assert!(!checkpoints.passive_due(false), "a tick meets the restart");
        assert!(
            checkpoints.passive_due(true),
            "the one the writer asked for runs"
        );

        let long_ago = Instant::now().checked_sub(RESTART_WAIT + Duration::from_millis(100));
        *checkpoints.restart_waiting() = long_ago;
        assert!(
            checkpoints.passive_due(false) || long_ago.is_none(),
            "a writer with no batch to restart after is not waited for"
        );

        *checkpoints.restart_waiting() = None;
        assert!(checkpoints.passive_due(false));
    }

    #[test]
    fn the_writer_pauses_only_while_the_wal_is_far_past_its_limit() {
        let limit = 64_000_000;
        assert_eq!(pause(0, limit), None);
        assert_eq!(
            pause(limit + 1, limit),
            None,
            "past the limit: a restart is due, no pause"
        );
        let far = limit / 100 * PACE_PAST_PERCENT;
        assert_eq!(pause(far, limit), None);
        assert_eq!(pause(far + 1, limit), Some(PACE));
        assert_eq!(pause(u64::MAX, u64::MAX), None, "no overflow");
    }

    #[test]
    fn the_writer_restarts_once_little_is_left_or_after_its_last_pass() {
        assert!(restart_now(0, 1));
        assert!(restart_now(RESTART_AFTER_FRAMES, 1));
        assert!(
            !restart_now(RESTART_AFTER_FRAMES + 1, 1),
            "another pass first"
        );
        assert!(!restart_now(100_000, MAX_PASSES - 1));
        assert!(
            restart_now(100_000, MAX_PASSES),
            "writes that outrun the checkpoints do not put the restart off for ever"
        );
    }

    /// The checkpoints' connection copies back what another connection wrote and syncs the
    /// file through SQLite, on either VFS, while that connection still holds the file.
    #[test]
    fn the_checkpointer_copies_the_wal_back_and_syncs_the_file() {
        for locking in [SqliteLocking::Shared, SqliteLocking::Exclusive] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("checkpoints.db");
            let flags = rusqlite::OpenFlags::default();
            let writer = crate::store::inline_reads::open_file(&file, flags, locking).unwrap();
            writer
                .execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                     CREATE TABLE t (x TEXT);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                     INSERT INTO t SELECT printf('%0100d', i) FROM n;",
                )
                .unwrap();
            let size = |path: &std::path::Path| std::fs::metadata(path).unwrap().len();
            let before = size(&file);
            let mut wal = file.clone().into_os_string();
            wal.push("-wal");
            let in_wal = (size(wal.as_ref()) - super::WAL_HEADER_BYTES) / (4096 + 24);

            let checkpointer = Checkpointer::open(&file, locking).unwrap();
            let copied = checkpointer.passive().unwrap();
            assert!(in_wal > 50, "{locking:?}: {in_wal} frames in the WAL");
            assert_eq!(copied, in_wal, "{locking:?}: all of the WAL copied back");
            assert!(
                size(&file) > before + 50 * 4096,
                "{locking:?}: the database file grew from {before} bytes"
            );
            checkpointer.sync_database_file().unwrap();

            // The writer writes on beside it.
            writer
                .execute("INSERT INTO t VALUES ('after')", [])
                .unwrap();
            let rows: i64 = writer
                .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                .unwrap();
            assert_eq!(rows, 2001);
        }
    }
}
