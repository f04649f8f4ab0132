//! Group commit for user writes on SQLite: creates (idempotent ones included), updates and
//! deletes. SQLite takes one writer at a time, and each commit appends every page it touched
//! (the table and each of its indexes) to the WAL, so under concurrent load most of a write's
//! cost is its own commit; and writers left to contend in SQLite's busy handler sleep 1, 2, 5,
//! 10… ms between tries (write p99 was above 100 ms that way). Here every user write of this
//! process goes to one task, which takes whatever queued while its previous batch committed and
//! writes it together, in arrival order: one transaction, one commit. No caller hears of its
//! write before that commit has returned, so an acknowledged write is exactly as durable as one
//! committed alone.
//!
//! Each write in a batch sees those before it, as it would have run after them alone: of
//! updates holding the same `If-Match` version the first matches and bumps it, and the rest
//! find a newer version (412). A duplicate email fails only its own statement: SQLite's default
//! conflict action aborts the statement, not the transaction, so the rest of the batch still
//! commits. Any other error rolls the whole batch back and every caller in it gets that error;
//! none was acknowledged. An idempotent create runs in a savepoint of the batch's transaction,
//! so a create that fails takes its idempotency record with it, and a key that an earlier
//! create (in this batch or before) holds replays that create's response. PostgreSQL has no
//! single writer to queue behind; there writes go straight to the pool.

use entity::users::Model;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    idempotency::{self, Claim, Outcome, Recorded},
    users,
};
use crate::{
    domain::{NewUser, UserChanges},
    error::{AppError, is_transient},
};

/// The most writes one transaction takes: enough to cover every connection of a busy client
/// pool, small enough that the last caller of a batch does not wait long on the first.
const MAX_BATCH: usize = 64;

/// What makes a create idempotent: the caller's key, the fingerprint of its body, how long
/// the key is kept, and how to record the response a retry replays.
pub struct Once {
    pub key: String,
    pub request_hash: String,
    pub ttl: chrono::Duration,
    pub record: Box<dyn FnOnce(&Model) -> Recorded + Send>,
}

enum Change {
    Create(NewUser),
    CreateOnce(NewUser, Once),
    Update {
        id: i64,
        changes: UserChanges,
        expected_version: Option<i64>,
    },
    Delete {
        id: i64,
        expected_version: Option<i64>,
    },
}

struct Job {
    change: Change,
    actor: String,
    done: oneshot::Sender<Result<Outcome<Model>, AppError>>,
}

/// Where handlers send user writes: to the batching worker on SQLite, to the pool otherwise.
#[derive(Clone)]
pub struct Writes {
    db: DatabaseConnection,
    batches: Option<mpsc::Sender<Job>>,
}

impl Writes {
    /// On SQLite, starts the task that commits batches.
    pub fn start(db: &DatabaseConnection) -> Self {
        let batches = (db.get_database_backend() == DbBackend::Sqlite).then(|| {
            let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(run(db.clone(), receiver));
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
            Some(batches) => fresh(submit(batches, Change::Create(user), actor).await),
            None => users::create(&self.db, user, &actor).await,
        }
    }

    /// Creates a user once per `(actor, once.key)` (see [`idempotency::run_once`]): the user,
    /// once its transaction has committed, or the recorded response of the create that holds
    /// the key.
    pub async fn create_once(
        &self,
        user: NewUser,
        actor: String,
        once: Once,
    ) -> Result<Outcome<Model>, AppError> {
        match &self.batches {
            Some(batches) => submit(batches, Change::CreateOnce(user, once), actor).await,
            None => create_once(&self.db, user, &actor, once).await,
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
        fresh(submit(batches, change, actor).await)
    }

    /// Deletes a user (see [`users::delete`]) and returns once its transaction has committed.
    pub async fn delete(&self, id: i64, expected_version: Option<i64>) -> Result<(), AppError> {
        let Some(batches) = &self.batches else {
            return users::delete(&self.db, id, expected_version).await;
        };
        let change = Change::Delete {
            id,
            expected_version,
        };
        // The actor is recorded on rows that stay; a deleted one keeps nothing.
        fresh(submit(batches, change, String::new()).await).map(drop)
    }
}

async fn create_once(
    db: &(impl ConnectionTrait + TransactionTrait<Transaction = DatabaseTransaction>),
    user: NewUser,
    actor: &str,
    once: Once,
) -> Result<Outcome<Model>, AppError> {
    let claim = Claim {
        principal: actor,
        key: &once.key,
        request_hash: &once.request_hash,
        ttl: once.ttl,
    };
    let work = async |txn: &DatabaseTransaction| users::create(txn, user, actor).await;
    idempotency::run_once(db, claim, work, once.record).await
}

/// Only idempotent creates are ever replayed.
fn fresh(outcome: Result<Outcome<Model>, AppError>) -> Result<Model, AppError> {
    match outcome? {
        Outcome::Fresh(model) => Ok(model),
        Outcome::Replayed(_) => unreachable!("a write without an idempotency key replayed"),
    }
}

async fn submit(
    batches: &mpsc::Sender<Job>,
    change: Change,
    actor: String,
) -> Result<Outcome<Model>, AppError> {
    let (done, outcome) = oneshot::channel();
    let job = Job {
        change,
        actor,
        done,
    };
    let stopped = || AppError::Unavailable("the server is shutting down; retry".into());
    batches.send(job).await.map_err(|_| stopped())?;
    // Dropped unanswered: the server stopped, or the batch failed, before its commit.
    outcome.await.map_err(|_| {
        AppError::Unavailable(
            "the write was not made (the server is stopping or failed); retry".into(),
        )
    })?
}

async fn run(db: DatabaseConnection, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Each turn takes everything queued (up to MAX_BATCH) while the last batch committed.
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A task of its own, so that a panic while writing one batch fails that batch (rolled
        // back, its callers told to retry) instead of every user write from then on.
        let db = db.clone();
        let batch = std::mem::take(&mut batch);
        if let Err(err) = tokio::spawn(async move { commit(&db, batch).await }).await {
            tracing::error!(error = %err, "a batch of user writes failed; its callers retry");
        }
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
) -> Result<Vec<Result<Outcome<Model>, AppError>>, DbErr> {
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
) -> Result<Result<Outcome<Model>, AppError>, DbErr> {
    let written = match change {
        Change::Create(user) => users::insert(txn, user, actor).await.map(Ok),
        // Its savepoint has already undone whatever failed; the failure is this create's own.
        Change::CreateOnce(user, once) => {
            return Ok(create_once(txn, user, actor, once).await);
        }
        Change::Update {
            id,
            changes,
            expected_version,
        } => {
            let updated = users::apply_update(txn, id, changes, actor, expected_version).await;
            users::matched(txn, id, updated).await
        }
        Change::Delete {
            id,
            expected_version,
        } => {
            let deleted = users::apply_delete(txn, id, expected_version).await;
            users::matched(txn, id, deleted).await
        }
    };
    match written {
        Ok(outcome) => Ok(outcome.map(Outcome::Fresh)),
        Err(err) => users::conflict(&err).map(Err).ok_or(err),
    }
}
