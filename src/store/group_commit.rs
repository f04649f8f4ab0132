//! Group commit for user writes on SQLite: creates (idempotent ones included), updates and
//! deletes. SQLite takes one writer at a time, and each commit appends every page it touched
//! (the table and each of its indexes) to the WAL, so under concurrent load most of a write's
//! cost is its own commit; and writers left to contend in SQLite's busy handler sleep 1, 2, 5,
//! 10… ms between tries (write p99 was above 100 ms that way). Here every user write of this
//! process goes to one task, which takes whatever queued while its previous batch committed and
//! writes it together, in arrival order: one transaction, one commit, and consecutive plain
//! creates in one multi-row INSERT (see `create_all`). No caller hears of its write before that
//! commit has returned, so an acknowledged write is exactly as durable as one committed alone.
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
    let mut work = work.into_iter().peekable();
    while let Some((change, actor)) = work.next() {
        // Dropping `txn` on an early return rolls back everything this batch wrote.
        let Change::Create(user) = change else {
            outcomes.push(write(&txn, change, &actor).await?);
            continue;
        };
        let mut creates = vec![(user, actor)];
        while let Some((Change::Create(user), actor)) =
            work.next_if(|(change, _)| matches!(change, Change::Create(_)))
        {
            creates.push((user, actor));
        }
        outcomes.extend(create_all(&txn, creates).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

/// Consecutive plain creates of a batch: one multi-row INSERT, so one trip to the database
/// connection's thread instead of one per create. When that statement fails on the email
/// index, SQLite has undone the statement alone, not the transaction; the creates are then
/// written one by one, as they would have been without it, so a duplicate fails alone.
///
/// Each pool connection caches a prepared statement per row count (2 to 64): in 10 s of POST
/// load, peak memory went from about 47 to 52 MiB. Splitting runs into a few fixed sizes kept
/// it to 48.6–50 MiB but cost 8–14% more CPU per create (two variants, 5 alternating rounds
/// each), so runs go in whole.
async fn create_all(
    txn: &DatabaseTransaction,
    creates: Vec<(NewUser, String)>,
) -> Result<Vec<Result<Outcome<Model>, AppError>>, DbErr> {
    if creates.len() > 1 {
        match users::insert_many(txn, &creates).await {
            Ok(models) => return Ok(models.into_iter().map(|m| Ok(Outcome::Fresh(m))).collect()),
            Err(err) if users::conflict(&err).is_some() => {}
            Err(err) => return Err(err),
        }
    }
    let mut outcomes = Vec::with_capacity(creates.len());
    for (user, actor) in creates {
        outcomes.push(write(txn, Change::Create(user), &actor).await?);
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sea_orm::{EntityTrait, PaginatorTrait};

    use super::*;
    use crate::{
        config::Cli,
        domain::{Email, Role, UserName},
        startup::open_database,
    };

    fn user(name: &str, email: &str) -> NewUser {
        NewUser {
            name: UserName::parse(name).unwrap(),
            role: Role::parse("Dev").unwrap(),
            email: Some(Email::parse(email).unwrap()),
        }
    }

    async fn database(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = format!("sqlite://{}", dir.path().join("batch.db").display());
        let cli = Cli::parse_from(["users-api", "--database-url", &url]);
        open_database(&cli.db, async |_| Ok(())).await.unwrap().0
    }

    /// Consecutive creates go in together: each caller gets its own user, in order. A duplicate
    /// email among them fails alone, and the creates before and after it are stored.
    #[tokio::test]
    async fn consecutive_creates_are_answered_in_order_and_a_duplicate_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let names = ["Ann", "Bob", "Cy", "Dee", "Eve"];
        let emails = [
            "ann@x.org",
            "bob@x.org",
            "ANN@x.org",
            "dee@x.org",
            "eve@x.org",
        ];
        let work = names
            .iter()
            .zip(emails)
            .enumerate()
            .map(|(i, (name, email))| (Change::Create(user(name, email)), format!("api-key:{i}")))
            .collect();
        let outcomes = write_all(&db, work).await.unwrap();
        let mut last_id = 0;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(Outcome::Fresh(model)) => {
                    assert_ne!(i, 2, "the duplicate was created");
                    assert_eq!(model.name, names[i]);
                    assert_eq!(model.email.as_deref(), Some(emails[i]));
                    assert_eq!(model.created_by, Some(format!("api-key:{i}")));
                    assert!(model.id > last_id);
                    last_id = model.id;
                }
                Err(AppError::Conflict(_)) => assert_eq!(i, 2),
                _ => panic!("create {i}: unexpected outcome"),
            }
        }
        assert_eq!(entity::users::Entity::find().count(&db).await.unwrap(), 4);

        // A run with no duplicate, after the others.
        let work = vec![
            (Change::Create(user("Fay", "fay@x.org")), "a".to_owned()),
            (Change::Create(user("Gus", "gus@x.org")), "b".to_owned()),
        ];
        let names: Vec<_> = write_all(&db, work)
            .await
            .unwrap()
            .into_iter()
            .map(|outcome| match outcome {
                Ok(Outcome::Fresh(model)) => (model.name, model.id > last_id),
                _ => panic!("a create without duplicates failed"),
            })
            .collect();
        assert_eq!(names, [("Fay".into(), true), ("Gus".into(), true)]);
    }

    /// What the fallback relies on: a multi-row insert that fails on the email index leaves
    /// nothing of itself, and what the transaction wrote before it stays.
    #[tokio::test]
    async fn a_failed_multi_row_insert_undoes_itself_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let txn = db.begin().await.unwrap();
        users::insert(&txn, user("Ann", "ann@x.org"), "a")
            .await
            .unwrap();
        let clash = [
            (user("Bob", "bob@x.org"), "b".to_owned()),
            (user("Cy", "Ann@X.org"), "c".to_owned()),
        ];
        let err = users::insert_many(&txn, &clash).await.unwrap_err();
        assert!(users::conflict(&err).is_some(), "{err}");
        txn.commit().await.unwrap();
        let stored: Vec<_> = entity::users::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|model| model.name)
            .collect();
        assert_eq!(stored, ["Ann"]);
    }
}
