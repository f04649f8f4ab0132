//! What only PostgreSQL needs: instances starting together take turns migrating, and the
//! change feed's ids are given after commit, with a notification to every instance.

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait, sqlx::postgres::PgListener,
};
use tokio::{sync::Notify, task::JoinHandle};

/// An arbitrary constant naming the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x7573_6572_7361_7069; // "usersapi"

/// A transaction-scoped advisory lock, held while one instance migrates and mints the first
/// key, so that instances starting together on an empty database run each migration once and
/// mint one bootstrap key.
pub(crate) struct MigrationLock(DatabaseTransaction);

impl MigrationLock {
    /// Takes the lock on PostgreSQL, waiting for another instance that holds it; `None` on
    /// other engines, which have no concurrent migrators (SQLite takes one writer at a time).
    pub async fn take(db: &DatabaseConnection) -> Result<Option<Self>, DbErr> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        Ok(Some(MigrationLock(txn)))
    }

    pub async fn release(self) -> Result<(), DbErr> {
        self.0.commit().await
    }
}

/// A serving instance's part in the change feed on PostgreSQL: the sequencer, which gives
/// committed events their ids (see the migration's `user_events_sequence()`), and the listener,
/// which hears that another instance did.
pub(crate) struct Serving {
    /// Woken after this instance commits a user write: its event waits for an id.
    sequence: Arc<Notify>,
    /// Woken when events may have been given ids, here or on another instance.
    events: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

/// The channel `user_events_sequence()` notifies on.
const CHANNEL: &str = "user_events";

/// How often events are numbered and read even without a wake-up: events of an instance that
/// died between its commit and numbering them, and notifications lost while the listener
/// reconnected, are late by at most this.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Serving {
    pub fn start(db: &DatabaseConnection) -> Self {
        let sequence = Arc::new(Notify::new());
        let events = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(run_sequencer(db.clone(), sequence.clone(), events.clone())),
            tokio::spawn(listen(db.clone(), events.clone())),
        ];
        Serving {
            sequence,
            events,
            tasks,
        }
    }

    /// Notes that a user write committed: its event is numbered now.
    pub fn wrote(&self) {
        self.sequence.notify_one();
    }

    pub fn events(&self) -> &Notify {
        &self.events
    }

    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Numbers committed events at once (those a stopped instance left), then whenever this
/// instance wrote, and every [`SWEEP_INTERVAL`].
async fn run_sequencer(db: DatabaseConnection, wake: Arc<Notify>, events: Arc<Notify>) {
    let mut failing = false;
    loop {
        loop {
            match db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT user_events_sequence() AS numbered",
                ))
                .await
                .and_then(|row| match row {
                    Some(row) => row.try_get::<i64>("", "numbered"),
                    None => Ok(0),
                }) {
                Ok(numbered) => {
                    if failing {
                        tracing::info!("numbering events works again");
                        failing = false;
                    }
                    if numbered > 0 {
                        events.notify_one();
                    }
                    if numbered < 5000 {
                        break;
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "cannot number events; retrying");
                        failing = true;
                    }
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(SWEEP_INTERVAL, wake.notified()).await;
    }
}

/// Wakes `events` on every notification of [`CHANNEL`], reconnecting when the connection is
/// lost (what is missed meanwhile, the sweep catches).
async fn listen(db: DatabaseConnection, events: Arc<Notify>) {
    let pool = db.get_postgres_connection_pool().clone();
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for events; retrying");
                tokio::time::sleep(SWEEP_INTERVAL).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "cannot listen for events; retrying");
            tokio::time::sleep(SWEEP_INTERVAL).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(_) => events.notify_one(),
                Err(err) => {
                    tracing::warn!(error = %err, "the event listener lost its connection");
                    // The next `recv` reconnects; events committed meanwhile are read now.
                    events.notify_one();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
