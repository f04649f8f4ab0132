//! Group commit for user writes on SQLite: creates (idempotent ones included), updates and
//! deletes. SQLite takes one writer at a time, and each commit appends every page it touched
//! (the table and each of its indexes) to the WAL, so under concurrent load most of a write's
//! cost is its own commit; and writers left to contend in SQLite's busy handler sleep 1, 2, 5,
//! 10… ms between tries (write p99 was above 100 ms that way). Here every user write of this
//! process goes to one task, which takes whatever queued while its previous batch committed and
//! writes it together, in arrival order, through a connection of its own: one transaction, one
//! commit, consecutive creates in one multi-row INSERT (see `create_all`) and consecutive
//! updates of distinct users in one UPDATE (see `update_all`). No caller hears of its write
//! before that commit has returned, so an acknowledged write is exactly as durable as one
//! committed alone.
//!
//! Each write in a batch sees those before it, as it would have run after them alone: of
//! updates holding the same `If-Match` version the first matches and bumps it, and the rest
//! find a newer version (412). A duplicate email fails only its own statement: SQLite's default
//! conflict action aborts the statement, not the transaction, so the rest of the batch still
//! commits. Any other error rolls the whole batch back and every caller in it gets that error;
//! none was acknowledged. An idempotent create's record is written with its user, in the same
//! statement-or-savepoint scope, so a create that fails keeps no record, and a key that an
//! earlier create (in this batch or before) holds replays that create's response. PostgreSQL
//! has no single writer to queue behind; there writes go straight to the pool.

use entity::users::Model;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    idempotency::{self, Claim, Outcome, Recorded},
    users,
    wal_limit::WalLimit,
};
use crate::{
    config::DbArgs,
    domain::{NewUser, UserChanges},
    error::{AppError, is_transient},
};

/// The most writes one transaction takes: enough to cover every connection of a busy client
/// pool, small enough that the last caller of a batch does not wait long on the first.
const MAX_BATCH: usize = 64;

/// What makes a create idempotent: the caller's key, the fingerprint of its body, how long
/// the key is kept, and how to record the response a retry replays. `record` is a plain
/// function so that a create can still be written alone after its run's insert failed.
pub struct Once {
    pub key: String,
    pub request_hash: String,
    pub ttl: chrono::Duration,
    pub record: fn(&Model) -> Recorded,
}

impl Once {
    fn claim<'a>(&'a self, actor: &'a str) -> Claim<'a> {
        Claim {
            principal: actor,
            key: &self.key,
            request_hash: &self.request_hash,
            ttl: self.ttl,
        }
    }
}

enum Change {
    /// Idempotent when it comes with a [`Once`].
    Create(NewUser, Option<Once>),
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
    /// On SQLite, opens the writer's own connection and starts the task that commits batches
    /// through it and keeps the WAL within its limit between them.
    pub async fn start(db: &DatabaseConnection, settings: &DbArgs) -> Result<Self, DbErr> {
        let batches = if db.get_database_backend() == DbBackend::Sqlite {
            let writer = super::connect_writer(settings).await?;
            let wal = WalLimit::start(&writer, settings).await?;
            let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(run(writer, receiver, wal));
            Some(sender)
        } else {
            None
        };
        Ok(Writes {
            db: db.clone(),
            batches,
        })
    }

    /// Creates a user and returns it once its transaction has committed.
    pub async fn create(&self, user: NewUser, actor: String) -> Result<Model, AppError> {
        match &self.batches {
            Some(batches) => fresh(submit(batches, Change::Create(user, None), actor).await),
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
            Some(batches) => submit(batches, Change::Create(user, Some(once)), actor).await,
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
    let work = async |txn: &DatabaseTransaction| users::create(txn, user, actor).await;
    idempotency::run_once(db, once.claim(actor), work, once.record).await
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

async fn run(writer: DatabaseConnection, mut jobs: mpsc::Receiver<Job>, mut wal: WalLimit) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Each turn takes everything queued (up to MAX_BATCH) while the last batch committed.
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A task of its own, so that a panic while writing one batch fails that batch (rolled
        // back, its callers told to retry) instead of every user write from then on.
        let db = writer.clone();
        let batch = std::mem::take(&mut batch);
        if let Err(err) = tokio::spawn(async move { commit(&db, batch).await }).await {
            tracing::error!(error = %err, "a batch of user writes failed; its callers retry");
        }
        wal.enforce(&writer).await;
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
        match change {
            Change::Create(user, once) => {
                let mut run = vec![Create { user, actor, once }];
                while let Some((Change::Create(user, once), actor)) =
                    work.next_if(|(change, actor)| joins(&run, change, actor))
                {
                    run.push(Create { user, actor, once });
                }
                outcomes.extend(create_all(&txn, run).await?);
            }
            Change::Update {
                id,
                changes,
                expected_version,
            } => {
                let mut run = vec![Update {
                    id,
                    changes,
                    actor,
                    expected_version,
                }];
                while let Some((
                    Change::Update {
                        id,
                        changes,
                        expected_version,
                    },
                    actor,
                )) = work.next_if(|(change, _)| joins_updates(&run, change))
                {
                    run.push(Update {
                        id,
                        changes,
                        actor,
                        expected_version,
                    });
                }
                outcomes.extend(update_all(&txn, run).await?);
            }
            Change::Delete { .. } => outcomes.push(write(&txn, change, &actor).await?),
        }
    }
    txn.commit().await?;
    Ok(outcomes)
}

struct Create {
    user: NewUser,
    actor: String,
    once: Option<Once>,
}

/// Whether `change` can be written in one go with the creates of `run`: a create, and, if
/// idempotent, under a key no create of the run holds for the same caller. A retry racing its
/// original starts the next run, so it finds the original's record (or, if the original
/// failed, a free key).
fn joins(run: &[Create], change: &Change, actor: &str) -> bool {
    match change {
        Change::Create(_, None) => true,
        Change::Create(_, Some(once)) => !run.iter().any(|create| {
            create.actor == actor
                && create
                    .once
                    .as_ref()
                    .is_some_and(|held| held.key == once.key)
        }),
        _ => false,
    }
}

/// Consecutive creates of a batch, plain and idempotent: one query for the run's keys, then
/// one multi-row INSERT of the new users and one of their idempotency records, so a few trips
/// to the database connection's thread for the whole run instead of one (plain) or six
/// (idempotent) per create. A key already held replays its response and creates nothing. When
/// an insert fails on a unique index (a duplicate email; a key taken meanwhile cannot happen
/// under SQLite's single writer, but is handled alike), nothing of the run's inserts is left
/// (SQLite undoes the failed statement alone, the savepoint the rest), and its creates are
/// written one by one, as they would have been without it, so a duplicate fails alone.
///
/// The writer's connection caches a prepared statement per row count (1 to 64) of each INSERT
/// and of the key lookup. When batches went through any pool connection, each cached its own,
/// and in 10 s of POST load peak memory went from about 47 to 52 MiB; splitting runs into a
/// few fixed sizes kept it to 48.6–50 MiB but cost 8–14% more CPU per create (two variants, 5
/// alternating rounds each), so runs go in whole.
async fn create_all(
    txn: &DatabaseTransaction,
    run: Vec<Create>,
) -> Result<Vec<Result<Outcome<Model>, AppError>>, DbErr> {
    let (keyed, claims): (Vec<usize>, Vec<Claim>) = run
        .iter()
        .enumerate()
        .filter_map(|(i, create)| Some((i, create.once.as_ref()?.claim(&create.actor))))
        .unzip();
    let mut outcomes: Vec<Option<Result<Outcome<Model>, AppError>>> =
        run.iter().map(|_| None).collect();
    for (i, held) in keyed
        .into_iter()
        .zip(idempotency::held(txn, &claims).await?)
    {
        outcomes[i] = held.map(|replayed| replayed.map(Outcome::Replayed));
    }
    let fresh: Vec<&Create> = run
        .iter()
        .zip(&outcomes)
        .filter_map(|(create, outcome)| outcome.is_none().then_some(create))
        .collect();
    if !fresh.is_empty() {
        match insert_run(txn, &fresh).await {
            Ok(models) => {
                let mut models = models.into_iter();
                for outcome in outcomes.iter_mut().filter(|outcome| outcome.is_none()) {
                    *outcome = models.next().map(|model| Ok(Outcome::Fresh(model)));
                }
            }
            // Those left `None` are written one by one below.
            Err(err) if users::conflict(&err).is_some() => {}
            Err(err) => return Err(err),
        }
    }
    let mut written = Vec::with_capacity(run.len());
    for (create, outcome) in run.into_iter().zip(outcomes) {
        written.push(match outcome {
            Some(outcome) => outcome,
            None => write(txn, Change::Create(create.user, create.once), &create.actor).await?,
        });
    }
    Ok(written)
}

/// The users of `fresh`, and the idempotency records of those that have a key, inserted
/// together or not at all: the users as stored, in order.
async fn insert_run(txn: &DatabaseTransaction, fresh: &[&Create]) -> Result<Vec<Model>, DbErr> {
    let users: Vec<(&NewUser, &str)> = fresh
        .iter()
        .map(|create| (&create.user, create.actor.as_str()))
        .collect();
    if fresh.iter().all(|create| create.once.is_none()) {
        // A failed INSERT leaves nothing of itself: no savepoint needed.
        return users::insert_many(txn, &users).await;
    }
    let savepoint = txn.begin().await?;
    let inserted = async {
        let models = users::insert_many(&savepoint, &users).await?;
        let responses = fresh.iter().zip(&models).filter_map(|(create, model)| {
            let once = create.once.as_ref()?;
            Some((once.claim(&create.actor), (once.record)(model)))
        });
        idempotency::record_all(&savepoint, responses).await?;
        Ok(models)
    }
    .await;
    match inserted {
        Ok(models) => {
            savepoint.commit().await?;
            Ok(models)
        }
        Err(err) => {
            savepoint.rollback().await?;
            Err(err)
        }
    }
}

struct Update {
    id: i64,
    changes: UserChanges,
    actor: String,
    expected_version: Option<i64>,
}

impl Update {
    fn into_change(self) -> (Change, String) {
        let change = Change::Update {
            id: self.id,
            changes: self.changes,
            expected_version: self.expected_version,
        };
        (change, self.actor)
    }
}

/// Whether `change` can be written in one statement with the updates of `run`: an update of
/// another user (so that each update still sees those before it), and not a second change of
/// an email (see [`users::update_many`]).
fn joins_updates(run: &[Update], change: &Change) -> bool {
    let Change::Update { id, changes, .. } = change else {
        return false;
    };
    let sets_email = |changes: &UserChanges| changes.email.is_some();
    !run.iter()
        .any(|update| update.id == *id || (sets_email(changes) && sets_email(&update.changes)))
}

/// Consecutive updates of a batch, of distinct users: one `UPDATE … FROM` for the run instead
/// of a statement (a trip to the database connection's thread) each. An update the statement
/// did not match asks why (404 or 412), as it would have alone; the run's other updates touched
/// other users, so the answer is the same. When the statement fails on the email's unique
/// index, it has left nothing of itself, and the updates are written one by one, so that a
/// duplicate fails alone.
async fn update_all(
    txn: &DatabaseTransaction,
    run: Vec<Update>,
) -> Result<Vec<Result<Outcome<Model>, AppError>>, DbErr> {
    let updated = if run.len() > 1 {
        let updates: Vec<users::Update> = run
            .iter()
            .map(|update| users::Update {
                id: update.id,
                changes: &update.changes,
                actor: &update.actor,
                expected_version: update.expected_version,
            })
            .collect();
        match users::update_many(txn, &updates).await {
            Ok(updated) => Some(updated),
            Err(err) if users::conflict(&err).is_some() => None,
            Err(err) => return Err(err),
        }
    } else {
        None
    };
    let mut outcomes = Vec::with_capacity(run.len());
    let Some(mut updated) = updated else {
        for update in run {
            let (change, actor) = update.into_change();
            outcomes.push(write(txn, change, &actor).await?);
        }
        return Ok(outcomes);
    };
    for update in run {
        let model = updated
            .iter()
            .position(|model| model.id == update.id)
            .map(|at| updated.swap_remove(at));
        let outcome = users::matched(txn, update.id, Ok(model)).await?;
        outcomes.push(outcome.map(Outcome::Fresh));
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
        Change::Create(user, None) => users::insert(txn, user, actor).await.map(Ok),
        // Its savepoint has already undone whatever failed; the failure is this create's own.
        Change::Create(user, Some(once)) => {
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
            .map(|(i, (name, email))| {
                (
                    Change::Create(user(name, email), None),
                    format!("api-key:{i}"),
                )
            })
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
            (
                Change::Create(user("Fay", "fay@x.org"), None),
                "a".to_owned(),
            ),
            (
                Change::Create(user("Gus", "gus@x.org"), None),
                "b".to_owned(),
            ),
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

    fn recorded(model: &Model) -> Recorded {
        Recorded {
            status: 201,
            body: format!("{}:{}", model.id, model.name),
            location: Some(format!("/users/{}", model.id)),
            etag: None,
        }
    }

    fn keyed(name: &str, email: &str, key: &str, hash: &str, ttl_secs: i64) -> Change {
        let once = Once {
            key: key.to_owned(),
            request_hash: hash.to_owned(),
            ttl: chrono::Duration::seconds(ttl_secs),
            record: recorded,
        };
        Change::Create(user(name, email), Some(once))
    }

    fn describe(outcome: &Result<Outcome<Model>, AppError>) -> String {
        match outcome {
            Ok(Outcome::Fresh(model)) => format!("fresh {}", model.name),
            Ok(Outcome::Replayed(recorded)) => format!("replayed {}", recorded.body),
            Err(err) => format!("error {err}"),
        }
    }

    /// Each outcome of `work` in a word or two.
    async fn written(db: &DatabaseConnection, work: Vec<(Change, String)>) -> Vec<String> {
        let outcomes = write_all(db, work).await.unwrap();
        outcomes.iter().map(describe).collect()
    }

    async fn stored_keys(db: &DatabaseConnection) -> Vec<(String, String, String)> {
        entity::idempotency_keys::Entity::find()
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|stored| (stored.principal, stored.key, stored.body))
            .collect()
    }

    /// Idempotent creates, among plain ones, go in as one run: each free key records its
    /// create's response, a key the same caller already used in the run replays that create,
    /// the same key of another caller is that caller's own, and a later batch replays (same
    /// body) or refuses (another body).
    #[tokio::test]
    async fn keyed_creates_record_their_keys_and_replay_within_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let work = vec![
            (keyed("Ann", "ann@x.org", "k1", "h-ann", 60), "a".to_owned()),
            (
                Change::Create(user("Bob", "bob@x.org"), None),
                "a".to_owned(),
            ),
            (keyed("Cy", "cy@x.org", "k1", "h-cy", 60), "b".to_owned()),
            (keyed("Ann", "ann@x.org", "k1", "h-ann", 60), "a".to_owned()),
            (keyed("Dee", "dee@x.org", "k2", "h-dee", 60), "a".to_owned()),
        ];
        let outcomes: Vec<_> = write_all(&db, work).await.unwrap();
        let ids: Vec<i64> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Ok(Outcome::Fresh(model)) => Some(model.id),
                _ => None,
            })
            .collect();
        let described: Vec<_> = outcomes.iter().map(describe).collect();
        let [ann, _, cy, dee] = ids[..] else {
            panic!("{described:?}");
        };
        assert_eq!(
            described,
            [
                "fresh Ann",
                "fresh Bob",
                "fresh Cy",
                &format!("replayed {ann}:Ann"),
                "fresh Dee"
            ]
        );
        let held = [
            ("a".to_owned(), "k1".to_owned(), format!("{ann}:Ann")),
            ("b".to_owned(), "k1".to_owned(), format!("{cy}:Cy")),
            ("a".to_owned(), "k2".to_owned(), format!("{dee}:Dee")),
        ];
        assert_eq!(stored_keys(&db).await, held);

        let work = vec![
            (keyed("Ann", "ann@x.org", "k1", "h-ann", 60), "a".to_owned()),
            (keyed("Eve", "eve@x.org", "k2", "h-eve", 60), "a".to_owned()),
            (keyed("Fay", "fay@x.org", "k3", "h-fay", 60), "a".to_owned()),
        ];
        let described = written(&db, work).await;
        assert_eq!(
            described[..2],
            [
                format!("replayed {ann}:Ann"),
                format!("error {}", AppError::IdempotencyKeyReused)
            ]
        );
        assert_eq!(described[2], "fresh Fay");
        assert_eq!(entity::users::Entity::find().count(&db).await.unwrap(), 5);
        assert_eq!(stored_keys(&db).await.len(), 4);
    }

    /// A duplicate email in a run of keyed creates fails that create alone, and its key stays
    /// free; an expired key is free again.
    #[tokio::test]
    async fn a_failed_keyed_create_keeps_no_key_and_an_expired_key_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let work = vec![
            (keyed("Ann", "ann@x.org", "k1", "h1", 60), "a".to_owned()),
            (keyed("Bob", "ANN@x.org", "k2", "h2", 60), "a".to_owned()),
            (keyed("Cy", "cy@x.org", "k3", "h3", -1), "a".to_owned()),
        ];
        let described = written(&db, work).await;
        assert_eq!(described[0], "fresh Ann");
        assert!(described[1].starts_with("error "), "{}", described[1]);
        assert_eq!(described[2], "fresh Cy");
        let keys: Vec<_> = stored_keys(&db)
            .await
            .into_iter()
            .map(|(_, key, _)| key)
            .collect();
        assert_eq!(keys, ["k1", "k3"]);

        // k2 was never taken; k3's record has expired.
        let work = vec![
            (keyed("Bob", "bob@x.org", "k2", "h2", 60), "a".to_owned()),
            (keyed("Dee", "dee@x.org", "k3", "h4", 60), "a".to_owned()),
        ];
        let described = written(&db, work).await;
        assert_eq!(described, ["fresh Bob", "fresh Dee"]);
        let keys: Vec<_> = stored_keys(&db)
            .await
            .into_iter()
            .map(|(_, key, body)| (key, body.ends_with("Dee")))
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&("k3".to_owned(), true)), "{keys:?}");
        assert_eq!(entity::users::Entity::find().count(&db).await.unwrap(), 4);
    }

    fn update(id: i64, changes: UserChanges, version: Option<i64>) -> Change {
        Change::Update {
            id,
            changes,
            expected_version: version,
        }
    }

    fn role(role: &str) -> UserChanges {
        UserChanges {
            name: None,
            role: Some(Role::parse(role).unwrap()),
            email: None,
        }
    }

    fn email(email: Option<&str>) -> UserChanges {
        UserChanges {
            name: None,
            role: None,
            email: Some(email.map(|email| Email::parse(email).unwrap())),
        }
    }

    /// Each outcome of `work`: the user's role, email and version, or the error.
    async fn updated(db: &DatabaseConnection, work: Vec<Change>) -> Vec<String> {
        let work = work
            .into_iter()
            .enumerate()
            .map(|(i, change)| (change, format!("api-key:{i}")))
            .collect();
        let outcomes = write_all(db, work).await.unwrap();
        outcomes
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| match outcome {
                Ok(Outcome::Fresh(model)) => {
                    assert_eq!(model.updated_by, Some(format!("api-key:{i}")));
                    let email = model.email.as_deref().unwrap_or("-");
                    format!("{} {} {email} v{}", model.id, model.role, model.version)
                }
                Ok(Outcome::Replayed(_)) => panic!("an update replayed"),
                Err(err) => format!("error {err}"),
            })
            .collect()
    }

    /// A stored user's name, search name and last writer.
    async fn stored(db: &DatabaseConnection, id: i64) -> (String, String, Option<String>) {
        let user = entity::users::Entity::find_by_id(id)
            .one(db)
            .await
            .unwrap()
            .unwrap();
        (user.name, user.name_search, user.updated_by)
    }

    /// Consecutive updates of distinct users go in as one statement; each still sees the writes
    /// before it, as if written alone and in order: a second update of one user sees the first
    /// (its `If-Match` of the old version fails), a missing user is a 404, a stale version a
    /// 412, a name change updates what search and sorting read, and an email still held, that
    /// a later update of the batch frees, is a conflict for that update alone (the updates
    /// beside it still written) and free for an update after the one that frees it.
    #[tokio::test]
    async fn consecutive_updates_each_see_the_writes_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let work = ["ann", "bob", "cy", "dee"]
            .iter()
            .map(|name| {
                (
                    Change::Create(user(name, &format!("{name}@x.org")), None),
                    "a".into(),
                )
            })
            .collect();
        write_all(&db, work).await.unwrap();

        let renamed = UserChanges {
            name: Some(UserName::parse("Ann Lee").unwrap()),
            ..role("Lead")
        };
        let described = updated(
            &db,
            vec![
                update(1, role("Ops"), Some(1)),
                update(2, role("Ops"), Some(7)),
                update(99, role("Ops"), None),
                update(1, role("QA"), Some(1)),
                update(1, renamed, Some(2)),
                update(3, email(Some("Bob@x.org")), None),
                update(4, email(None), None),
                update(2, email(Some("new-bob@x.org")), None),
                update(3, email(Some("bob@x.org")), None),
            ],
        )
        .await;
        let precondition = format!("error {}", AppError::PreconditionFailed);
        assert_eq!(
            described[..5],
            [
                "1 Ops ann@x.org v2".to_owned(),
                precondition.clone(),
                format!("error {}", users::not_found(99)),
                precondition,
                "1 Lead ann@x.org v3".to_owned(),
            ]
        );
        assert!(described[5].starts_with("error "), "{}", described[5]);
        assert_eq!(
            described[6..],
            ["4 Dev - v2", "2 Dev new-bob@x.org v2", "3 Dev bob@x.org v2"]
        );
        let ann = stored(&db, 1).await;
        assert_eq!((ann.0.as_str(), ann.1.as_str()), ("Ann Lee", "ann lee"));
        assert_eq!(ann.2.as_deref(), Some("api-key:4"));

        // A rename in a run that commits as one statement: text JSON escapes (a quote, a
        // backslash) and non-ASCII letters arrive as sent, lowercased for search as alone.
        let renamed = UserChanges {
            name: Some(UserName::parse(r#"ÅSA "Zoë" \ Lee"#).unwrap()),
            ..role("Lead")
        };
        let described = updated(
            &db,
            vec![update(1, renamed, Some(3)), update(2, role("QA"), None)],
        )
        .await;
        assert_eq!(described, ["1 Lead ann@x.org v4", "2 QA new-bob@x.org v3"]);
        let ann = stored(&db, 1).await;
        assert_eq!(
            (ann.0.as_str(), ann.1.as_str()),
            (r#"ÅSA "Zoë" \ Lee"#, r#"åsa "zoë" \ lee"#)
        );
    }

    /// What decides a run: an update joins unless it updates a user the run already does or
    /// is the run's second change of an email.
    #[test]
    fn an_update_joins_a_run_of_other_users_with_one_email_change() {
        let run = |changes: Vec<(i64, UserChanges)>| -> Vec<Update> {
            changes
                .into_iter()
                .map(|(id, changes)| Update {
                    id,
                    changes,
                    actor: "a".into(),
                    expected_version: None,
                })
                .collect()
        };
        let roles = run(vec![(1, role("Ops")), (2, role("Ops"))]);
        assert!(joins_updates(&roles, &update(3, email(None), None)));
        assert!(!joins_updates(&roles, &update(2, role("QA"), None)));
        assert!(!joins_updates(
            &roles,
            &Change::Delete {
                id: 3,
                expected_version: None
            }
        ));
        let with_email = run(vec![(1, role("Ops")), (2, email(Some("a@x.org")))]);
        assert!(joins_updates(&with_email, &update(3, role("QA"), None)));
        assert!(!joins_updates(&with_email, &update(3, email(None), None)));
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
        let (bob, cy) = (user("Bob", "bob@x.org"), user("Cy", "Ann@X.org"));
        let clash = [(&bob, "b"), (&cy, "c")];
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
