//! Group commit for user creates on SQLite. SQLite commits one transaction at a time and each
//! commit appends every page it touched (the table and each of its indexes) to the WAL, so under
//! concurrent load most of a create's cost is its own commit. Creates that arrive while another
//! write holds the gate queue here and then go to the database together: one transaction, one
//! commit. No caller hears of its user before that commit has returned, so an acknowledged
//! create is exactly as durable as one committed alone.
//!
//! A duplicate email fails only its own INSERT: SQLite's default conflict action aborts the
//! statement, not the transaction, so the rest of the batch still commits. Any other error
//! rolls the whole batch back and every caller in it gets that error; none was acknowledged.
//! PostgreSQL has no single writer to queue behind; there creates go straight to the pool.

use entity::users::Model;
use sea_orm::{DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::{users, write_gate::WriteGate};
use crate::{
    domain::NewUser,
    error::{AppError, is_transient},
};

/// The most creates one transaction takes: enough to cover every connection of a busy client
/// pool, small enough that the last caller of a batch does not wait long on the first.
const MAX_BATCH: usize = 64;

struct Job {
    user: NewUser,
    actor: String,
    done: oneshot::Sender<Result<Model, AppError>>,
}

/// Where handlers send creates: to the batching worker on SQLite, to the pool otherwise.
#[derive(Clone)]
pub struct Creates {
    db: DatabaseConnection,
    batches: Option<mpsc::Sender<Job>>,
}

impl Creates {
    /// On SQLite, starts the worker that commits batches; it holds `gate` while it writes so
    /// batches take their turn with every other write of this process.
    pub fn start(db: &DatabaseConnection, gate: WriteGate) -> Self {
        let batches = (db.get_database_backend() == DbBackend::Sqlite).then(|| {
            let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(run(db.clone(), gate, receiver));
            sender
        });
        Creates {
            db: db.clone(),
            batches,
        }
    }

    /// Creates a user and returns it once its transaction has committed.
    pub async fn create(&self, user: NewUser, actor: String) -> Result<Model, AppError> {
        let Some(batches) = &self.batches else {
            return users::create(&self.db, user, &actor).await;
        };
        let (done, outcome) = oneshot::channel();
        let stopped = || AppError::Unavailable("the server is shutting down; retry".into());
        batches
            .send(Job { user, actor, done })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn run(db: DatabaseConnection, gate: WriteGate, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let _turn = gate.enter().await;
        // Creates that arrived while the gate was busy join this commit rather than the next.
        while batch.len() < MAX_BATCH
            && let Ok(job) = jobs.try_recv()
        {
            batch.push(job);
        }
        commit(&db, std::mem::take(&mut batch)).await;
    }
}

/// Inserts the batch in one transaction and tells each caller its outcome after the commit.
async fn commit(db: &DatabaseConnection, batch: Vec<Job>) {
    let (work, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.user, job.actor), job.done))
        .unzip();
    let size = work.len();
    match insert_all(db, work).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up (client gone, timeout) is not waiting; its user stays.
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, size, "batch of user creates rolled back");
            let transient = is_transient(&err);
            for reply in replies {
                let _ = reply.send(Err(if transient {
                    AppError::Unavailable("the database is unavailable; retry shortly".into())
                } else {
                    AppError::Database(DbErr::Custom(format!("batched create failed: {err}")))
                }));
            }
        }
    }
}

/// One outcome per user, in order; `Err` only when the transaction itself failed.
async fn insert_all(
    db: &DatabaseConnection,
    work: Vec<(NewUser, String)>,
) -> Result<Vec<Result<Model, AppError>>, DbErr> {
    let txn = db.begin().await?;
    let mut outcomes = Vec::with_capacity(work.len());
    for (user, actor) in work {
        match users::insert(&txn, user, &actor).await {
            Ok(model) => outcomes.push(Ok(model)),
            Err(err) => match users::conflict(&err) {
                Some(conflict) => outcomes.push(Err(conflict)),
                // Dropping `txn` rolls back everything this batch wrote.
                None => return Err(err),
            },
        }
    }
    txn.commit().await?;
    Ok(outcomes)
}
