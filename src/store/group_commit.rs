//! Group commit for user creates and updates on SQLite. SQLite commits one transaction at a
//! time and each commit appends every page it touched (the table and each of its indexes) to
//! the WAL, so under concurrent load most of a write's cost is its own commit. Writes that arrive
//! while another write holds the gate queue here and then go to the database together, in
//! arrival order: one transaction, one commit. No caller hears of its write before that commit
//! has returned, so an acknowledged write is exactly as durable as one committed alone.
//!
//! Each write in a batch sees those before it, as it would have run after them alone: of
//! updates holding the same `If-Match` version the first matches and bumps it, and the rest
//! find a newer version (412). A duplicate email fails only its own statement: SQLite's default
//! conflict action aborts the statement, not the transaction, so the rest of the batch still
//! commits. Any other error rolls the whole batch back and every caller in it gets that error;
//! none was acknowledged. PostgreSQL has no single writer to queue behind; there writes go
//! straight to the pool.

use entity::users::Model;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::{users, write_gate::WriteGate};
use crate::{
    domain::{NewUser, UserChanges},
    error::{AppError, is_transient},
};

/// The most writes one transaction takes: enough to cover every connection of a busy client
/// pool, small enough that the last caller of a batch does not wait long on the first.
const MAX_BATCH: usize = 64;

enum Change {
    Create(NewUser),
    Update {
        id: i64,
        changes: UserChanges,
        expected_version: Option<i64>,
    },
}

struct Job {
    change: Change,
    actor: String,
    done: oneshot::Sender<Result<Model, AppError>>,
}

/// Where handlers send user writes: to the batching worker on SQLite, to the pool otherwise.
#[derive(Clone)]
pub struct Writes {
    db: DatabaseConnection,
    batches: Option<mpsc::Sender<Job>>,
}

impl Writes {
    /// On SQLite, starts the worker that commits batches; it holds `gate` while it writes so
    /// batches take their turn with every other write of this process.
    pub fn start(db: &DatabaseConnection, gate: WriteGate) -> Self {
        let batches = (db.get_database_backend() == DbBackend::Sqlite).then(|| {
            let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(run(db.clone(), gate, receiver));
            sender
        });
        Writes {
            db: db.clone(),
            batches,
        }
    }

    /// Creates a user and returns it once its transaction has committed.
    pub async fn create(&self, user: NewUser, actor: String) -> Result<Model, AppError> {
        match &self.batches {
            Some(batches) => submit(batches, Change::Create(user), actor).await,
            None => users::create(&self.db, user, &actor).await,
        }
    }

    /// Applies `changes` (see [`users::update`]) and returns the user once its transaction has
    /// committed.
    pub async fn update(
        &self,
        id: i64,
        changes: UserChanges,
        actor: String,
        expected_version: Option<i64>,
    ) -> Result<Model, AppError> {
        let Some(batches) = &self.batches else {
            return users::update(&self.db, id, changes, &actor, expected_version).await;
        };
        let change = Change::Update {
            id,
            changes,
            expected_version,
        };
        submit(batches, change, actor).await
    }
}

async fn submit(
    batches: &mpsc::Sender<Job>,
    change: Change,
    actor: String,
) -> Result<Model, AppError> {
    let (done, outcome) = oneshot::channel();
    let stopped = || AppError::Unavailable("the server is shutting down; retry".into());
    batches
        .send(Job {
            change,
            actor,
            done,
        })
        .await
        .map_err(|_| stopped())?;
    outcome.await.map_err(|_| stopped())?
}

async fn run(db: DatabaseConnection, gate: WriteGate, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let _turn = gate.enter().await;
        // Writes that arrived while the gate was busy join this commit rather than the next.
        while batch.len() < MAX_BATCH
            && let Ok(job) = jobs.try_recv()
        {
            batch.push(job);
        }
        commit(&db, std::mem::take(&mut batch)).await;
    }
}

/// Writes the batch in one transaction and tells each caller its outcome after the commit.
async fn commit(db: &DatabaseConnection, batch: Vec<Job>) {
    let (work, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.change, job.actor), job.done))
        .unzip();
    let size = work.len();
    match write_all(db, work).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up (client gone, timeout) is not waiting; its write stays.
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, size, "batch of user writes rolled back");
            let transient = is_transient(&err);
            for reply in replies {
                let _ = reply.send(Err(if transient {
                    AppError::Unavailable("the database is unavailable; retry shortly".into())
                } else {
                    AppError::Database(DbErr::Custom(format!("batched write failed: {err}")))
                }));
            }
        }
    }
}

/// One outcome per write, in order; `Err` only when the transaction itself failed.
async fn write_all(
    db: &DatabaseConnection,
    work: Vec<(Change, String)>,
) -> Result<Vec<Result<Model, AppError>>, DbErr> {
    let txn = db.begin().await?;
    let mut outcomes = Vec::with_capacity(work.len());
    for (change, actor) in work {
        // Dropping `txn` on an early return rolls back everything this batch wrote.
        outcomes.push(write(&txn, change, &actor).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

/// One write: its own outcome (a conflict, a 404 or 412 included), or the error that fails the
/// whole batch.
async fn write(
    txn: &DatabaseTransaction,
    change: Change,
    actor: &str,
) -> Result<Result<Model, AppError>, DbErr> {
    let written = match change {
        Change::Create(user) => users::insert(txn, user, actor).await.map(Ok),
        Change::Update {
            id,
            changes,
            expected_version,
        } => match users::apply_update(txn, id, changes, actor, expected_version).await {
            Ok(Some(model)) => Ok(Ok(model)),
            Ok(None) => Ok(Err(users::precondition_or_missing(txn, id).await)),
            Err(err) => Err(err),
        },
    };
    match written {
        Err(err) => users::conflict(&err).map(Err).ok_or(err),
        outcome => outcome,
    }
}
