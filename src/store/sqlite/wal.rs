//! Checkpoints in the background, and a WAL that stays near its limit.
//!
//! Left to itself, SQLite checkpoints inside whichever commit takes the WAL past 1,000 pages:
//! that write waits for the copy into the database file and its fsync, and behind the group
//! commit so does every write queued after it. Instead, automatic checkpoints are off and a
//! task here runs a PASSIVE checkpoint twice a second, which copies what it can without
//! blocking readers or the writer.
//!
//! A PASSIVE checkpoint never starts the WAL over: SQLite reuses the WAL from its beginning
//! only when a writer finds every frame copied back, and under steady writes a new commit
//! always lands first, so the WAL would only grow. So once the file is past its limit, the
//! writer asks for a PASSIVE checkpoint at once and, after it, between two of its batches, runs
//! a RESTART checkpoint: that copies back the little that came in meanwhile and waits for
//! readers to leave the WAL, so that the next batch starts it over, and `journal_size_limit`
//! cuts the file back to the limit at that batch's commit. Without the group commit's writer,
//! the task restarts the WAL itself. SQLite runs one checkpoint at a time (a RESTART that
//! meets another fails at once), so the two take turns on a lock.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::{Mutex, Notify};

/// How often the background checkpoint runs.
const EVERY: Duration = Duration::from_millis(500);

/// The limit of one database's WAL, shared by the background task and the writer.
pub(crate) struct WalLimit {
    wal: PathBuf,
    limit: u64,
    /// Wakes the background task before its next tick.
    asked: Notify,
    /// Background checkpoints completed so far.
    passes: AtomicU64,
    /// Held by whoever runs a checkpoint.
    one_at_a_time: Mutex<()>,
}

impl WalLimit {
    /// The limit of `limit` bytes on the WAL of the database file `file`.
    pub fn new(file: &std::path::Path, limit: u64) -> Self {
        let mut wal = file.as_os_str().to_owned();
        wal.push("-wal");
        WalLimit {
            wal: PathBuf::from(wal),
            limit,
            asked: Notify::new(),
            passes: AtomicU64::new(0),
            one_at_a_time: Mutex::new(()),
        }
    }

    fn over(&self) -> bool {
        std::fs::metadata(&self.wal).map_or(0, |meta| meta.len()) > self.limit
    }

    /// Runs the background checkpoints on `connection` until the task is aborted; with
    /// `restarts`, this task also starts the WAL over (there is no writer to do it).
    pub async fn run_checkpoints(&self, connection: DatabaseConnection, restarts: bool) {
        let mut ticker = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.asked.notified() => {}
            }
            {
                let _turn = self.one_at_a_time.lock().await;
                checkpoint(&connection, "PASSIVE").await;
            }
            self.passes.fetch_add(1, Ordering::Release);
            if restarts && self.over() {
                self.restart(&connection).await;
            }
        }
    }

    /// Starts the WAL over on `connection`, waiting for readers still in it.
    async fn restart(&self, connection: &DatabaseConnection) {
        let started = Instant::now();
        let _turn = self.one_at_a_time.lock().await;
        checkpoint(connection, "RESTART").await;
        tracing::debug!(
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "WAL restarted"
        );
    }
}

/// The writer's side of the limit: what it does between two batches.
pub(crate) struct WriterTurn {
    /// The background checkpoints completed when the writer asked for one, while it waits to
    /// restart after the next.
    waiting_since: Option<u64>,
}

impl WriterTurn {
    pub fn new() -> Self {
        WriterTurn {
            waiting_since: None,
        }
    }

    /// After a batch: past the limit, ask for a background checkpoint, and once one has run
    /// since, restart the WAL on the writer's `connection` before the next batch.
    pub async fn after_batch(&mut self, limit: &WalLimit, connection: &DatabaseConnection) {
        if !limit.over() {
            self.waiting_since = None;
            return;
        }
        let passes = limit.passes.load(Ordering::Acquire);
        match self.waiting_since {
            None => {
                self.waiting_since = Some(passes);
                limit.asked.notify_one();
            }
            Some(asked_at) if passes > asked_at => {
                limit.restart(connection).await;
                self.waiting_since = None;
            }
            Some(_) => {}
        }
    }
}

/// A checkpoint in `mode`. A busy one (a reader or writer in the way) is tried again later.
async fn checkpoint(connection: &DatabaseConnection, mode: &str) {
    let statement =
        Statement::from_string(DbBackend::Sqlite, format!("PRAGMA wal_checkpoint({mode})"));
    match connection.query_one_raw(statement).await {
        Ok(Some(row)) if row.try_get_by_index::<i64>(0).unwrap_or(0) != 0 => {
            tracing::debug!(mode, "checkpoint could not complete; trying again later");
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(mode, error = %err, "WAL checkpoint failed"),
    }
}
