//! Group commit for user writes. SQLite takes one writer at a time, and each commit appends
//! every page it touched (the table and each of its indexes) to the WAL, so under concurrent
//! load most of a write's cost is its own commit; and writers left to contend in SQLite's busy
//! handler sleep 1, 2, 5, 10… ms between tries. Here every user write of the process goes to
//! one task, which takes whatever queued while its previous batch committed and writes it
//! together, in arrival order, through a connection of its own: one transaction, one commit,
//! and consecutive creates in one statement (their events written by a trigger within it).
//! No caller hears of its write before that commit has returned, so an acknowledged write is
//! exactly as durable as one committed alone.
//!
//! Each write in a batch sees those before it, as if it had run after them alone: of updates
//! holding the same `If-Match` version the first matches and bumps it, and the rest find a
//! newer version (412). A write that fails on its own (a taken email) leaves nothing: SQLite
//! aborts the failed statement, not the transaction, and an idempotent create keeps its work in
//! a savepoint. Any other error rolls the whole batch back, and every caller in it is told;
//! none was acknowledged.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::wal::{WalLimit, WriterTurn};
use crate::{
    domain::NewUser,
    error::AppError,
    store::{
        is_transient,
        users::{self, UserWrite, Written},
    },
};

/// The most writes one transaction takes: enough to cover every connection of a busy client
/// pool, few enough that the last caller of a batch does not wait long on the first.
const MAX_BATCH: usize = 64;

struct Job {
    write: UserWrite,
    actor: String,
    done: oneshot::Sender<Result<Written, AppError>>,
}

/// Where user writes are sent to be batched.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    connection: DatabaseConnection,
}

impl Writer {
    /// Starts the task that commits batches through `connection`, and between two of them
    /// keeps the WAL within `limit`.
    pub fn start(
        connection: DatabaseConnection,
        limit: Option<Arc<WalLimit>>,
    ) -> (Self, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(MAX_BATCH * 4);
        let task = tokio::spawn(run(connection.clone(), queue, limit));
        (Writer { jobs, connection }, task)
    }

    /// Makes `write` in the next batch and returns its outcome once that batch has committed.
    pub async fn submit(&self, write: UserWrite, actor: String) -> Result<Written, AppError> {
        let (done, outcome) = oneshot::channel();
        let job = Job { write, actor, done };
        let stopped = || AppError::Unavailable("the server is shutting down; retry".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        // Dropped unanswered: the server stopped, or the batch's task failed, before the commit.
        outcome.await.map_err(|_| {
            AppError::Unavailable(
                "the write was not made (the server is stopping or failed); retry".into(),
            )
        })?
    }

    pub async fn close(&self) {
        if let Err(err) = self.connection.close_by_ref().await {
            tracing::debug!(error = %err, "closing the SQLite writer connection");
        }
    }
}

async fn run(
    connection: DatabaseConnection,
    mut queue: mpsc::Receiver<Job>,
    limit: Option<Arc<WalLimit>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut turn = WriterTurn::new();
    // Each turn takes everything queued (up to MAX_BATCH) while the last batch committed.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A task of its own, so that a panic while writing one batch fails that batch (rolled
        // back, its callers told to retry) instead of every user write from then on.
        let db = connection.clone();
        let jobs = std::mem::take(&mut batch);
        if let Err(err) = tokio::spawn(async move { commit(&db, jobs).await }).await {
            tracing::error!(error = %err, "a batch of user writes failed; its callers retry");
        }
        if let Some(limit) = &limit {
            turn.after_batch(limit, &connection).await;
        }
    }
}

/// Writes the batch in one transaction and tells each caller its outcome after the commit.
async fn commit(db: &DatabaseConnection, jobs: Vec<Job>) {
    let size = jobs.len();
    let (work, replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|job| ((job.write, job.actor), job.done))
        .unzip();
    let started = std::time::Instant::now();
    match write_all(db, work).await {
        Ok(outcomes) => {
            tracing::trace!(
                size,
                took_us = started.elapsed().as_micros() as u64,
                "batch of user writes committed"
            );
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up (client gone, timeout) is not waiting; its write stays.
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, size, "a batch of user writes was rolled back");
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
    work: Vec<(UserWrite, String)>,
) -> Result<Vec<Result<Written, AppError>>, DbErr> {
    // A batch of creates alone, the usual one under a load of creates, is one statement (its
    // events written by a trigger inside it): it commits by itself, without the two trips a
    // transaction's BEGIN and COMMIT take.
    let creates_only = work
        .iter()
        .all(|(write, _)| matches!(write, UserWrite::Create(_, None)));
    // On a duplicate email nothing was written, and the creates go one by one below.
    if creates_only
        && work.len() > 1
        && let Some(outcomes) = insert_run(db, plain_creates(&work)).await?
    {
        return Ok(outcomes);
    }
    let txn = db.begin().await?;
    let mut outcomes = Vec::with_capacity(work.len());
    let mut work = work.into_iter().peekable();
    while let Some((write, actor)) = work.next() {
        // Dropping `txn` on an early return rolls back everything this batch wrote.
        let UserWrite::Create(user, None) = write else {
            outcomes.push(users::apply(&txn, write, &actor).await?);
            continue;
        };
        let mut run = vec![(user, actor)];
        while let Some((UserWrite::Create(user, None), actor)) =
            work.next_if(|(write, _)| matches!(write, UserWrite::Create(_, None)))
        {
            run.push((user, actor));
        }
        outcomes.extend(create_all(&txn, run).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

/// The users and creators of a batch of plain creates.
fn plain_creates(work: &[(UserWrite, String)]) -> Vec<(NewUser, &str)> {
    work.iter()
        .filter_map(|(write, actor)| match write {
            UserWrite::Create(user, None) => Some((user.clone(), actor.as_str())),
            _ => None,
        })
        .collect()
}

/// `users` in one multi-row INSERT: their outcomes, or `None` when it failed on the email's
/// unique index, which leaves nothing of the statement behind.
async fn insert_run(
    db: &impl ConnectionTrait,
    users: Vec<(NewUser, &str)>,
) -> Result<Option<Vec<Result<Written, AppError>>>, DbErr> {
    match users::insert_many(db, users).await {
        Ok(models) => Ok(Some(
            models.into_iter().map(|m| Ok(Written::User(m))).collect(),
        )),
        Err(err) if users::conflict(&err).is_some() => Ok(None),
        Err(err) => Err(err),
    }
}

/// Consecutive plain creates of a batch in one multi-row INSERT, instead of a statement each:
/// each statement is a trip to the connection's thread and back, and the trips, not SQLite's
/// work, set how fast the writer goes. When the INSERT fails on the email's unique index it
/// has left nothing of itself, and the creates are written one by one, so that a duplicate
/// fails alone.
async fn create_all(
    txn: &DatabaseTransaction,
    run: Vec<(NewUser, String)>,
) -> Result<Vec<Result<Written, AppError>>, DbErr> {
    if run.len() > 1 {
        let users = run
            .iter()
            .map(|(user, actor)| (user.clone(), actor.as_str()))
            .collect();
        if let Some(outcomes) = insert_run(txn, users).await? {
            return Ok(outcomes);
        }
    }
    let mut outcomes = Vec::with_capacity(run.len());
    for (user, actor) in run {
        outcomes.push(users::apply(txn, UserWrite::Create(user, None), &actor).await?);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, PaginatorTrait};

    use super::*;
    use crate::{
        domain::{Email, NewUser, Role, UserChanges, UserName},
        store::{
            Store,
            users::{Once, Recorded},
        },
    };

    fn user(name: &str, email: &str) -> NewUser {
        NewUser {
            name: UserName::parse(name).unwrap(),
            role: Role::parse("Dev").unwrap(),
            email: Some(Email::parse(email).unwrap()),
        }
    }

    fn describe(outcome: &Result<Written, AppError>) -> String {
        match outcome {
            Ok(Written::User(model)) => format!("{} v{}", model.name, model.version),
            Ok(Written::Replayed(recorded)) => format!("replayed {}", recorded.body),
            Err(err) => format!("error {}", err.kind()),
        }
    }

    fn recorded(model: &entity::users::Model) -> Recorded {
        Recorded {
            status: 201,
            body: model.name.clone(),
            location: None,
            etag: None,
        }
    }

    fn once(key: &str, hash: &str) -> Option<Once> {
        Some(Once {
            key: key.into(),
            request_hash: hash.into(),
            ttl: chrono::Duration::hours(1),
            record: recorded,
        })
    }

    /// A batch answers each write as if it had run alone after those before it: a duplicate
    /// email, a stale version, a second create under one key, a reused key with another body.
    #[tokio::test]
    async fn each_write_of_a_batch_sees_those_before_it_and_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ()) = Store::open(&crate::store::tests::settings(&dir), async |_| Ok(()))
            .await
            .unwrap();
        let a = "api-key:1".to_owned();
        let rename = |id, name: &str, version| UserWrite::Update {
            id,
            changes: UserChanges {
                name: Some(UserName::parse(name).unwrap()),
                ..UserChanges::default()
            },
            expected_version: version,
        };
        let work = vec![
            (UserWrite::Create(user("Ann", "ann@x.org"), None), a.clone()),
            (UserWrite::Create(user("Bob", "ANN@x.org"), None), a.clone()),
            (
                UserWrite::Create(user("Cy", "cy@x.org"), once("k", "h")),
                a.clone(),
            ),
            (
                UserWrite::Create(user("Cy2", "cy2@x.org"), once("k", "h")),
                a.clone(),
            ),
            (
                UserWrite::Create(user("Dee", "dee@x.org"), once("k", "other")),
                a.clone(),
            ),
            (rename(1, "Anna", Some(1)), a.clone()),
            (rename(1, "Annie", Some(1)), a.clone()),
            (rename(99, "Nobody", None), a.clone()),
            (
                UserWrite::Delete {
                    id: 2,
                    expected_version: None,
                },
                a.clone(),
            ),
        ];
        let outcomes = write_all(&store.db, work).await.unwrap();
        let described: Vec<_> = outcomes.iter().map(describe).collect();
        assert_eq!(
            described,
            [
                "Ann v1",
                "error conflict",
                "Cy v1",
                "replayed Cy",
                "error idempotency-key-reused",
                "Anna v2",
                "error precondition-failed",
                "error not-found",
                "Cy v1",
            ]
        );
        let stored = entity::users::Entity::find()
            .count(&store.db)
            .await
            .unwrap();
        assert_eq!(stored, 1, "Ann (renamed) alone is left: Cy was deleted");
    }
}
