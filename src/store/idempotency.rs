//! Idempotent retries: the outcome of a create is stored under the caller's key in the same
//! transaction as the create itself, so a retry replays it and a racing duplicate cannot
//! create a second user.

use chrono::{DateTime, Duration, Utc};
use entity::idempotency_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, Select, SqlErr, TransactionTrait,
};

use crate::error::AppError;

/// A response as it is to be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub etag: Option<String>,
}

/// Either the work ran now, or it had run before and this is its recorded response.
pub enum Outcome<T> {
    Fresh(T),
    Replayed(Recorded),
}

/// Who is asking, under which key, with which body.
#[derive(Clone, Copy)]
pub struct Claim<'a> {
    pub principal: &'a str,
    pub key: &'a str,
    pub request_hash: &'a str,
    pub ttl: Duration,
}

/// Runs `work` once per (principal, key) within the TTL. `work` runs inside the transaction
/// that also records its response (`record`), so either both happen or neither does; a
/// concurrent request with the same key waits on the unique index and then replays. `db` may
/// itself be a transaction (a group commit's): then all this is a savepoint within it.
pub async fn run_once<T>(
    db: &(impl ConnectionTrait + TransactionTrait<Transaction = DatabaseTransaction>),
    claim: Claim<'_>,
    work: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, AppError>,
    record: impl FnOnce(&T) -> Recorded,
) -> Result<Outcome<T>, AppError> {
    let now = super::now();
    let txn = db.begin().await?;
    // An expired record no longer holds the key.
    Entity::delete_many()
        .filter(Column::Principal.eq(claim.principal))
        .filter(Column::Key.eq(claim.key))
        .filter(Column::ExpiresAt.lte(now))
        .exec(&txn)
        .await?;
    // Status 0 holds the key until `work` is done; the update below records the response.
    let pending = Recorded {
        status: 0,
        body: String::new(),
        location: None,
        etag: None,
    };
    let placeholder = Entity::insert(row(claim, pending, now)).exec(&txn).await;
    match placeholder {
        Ok(inserted) => {
            let value = work(&txn).await?;
            let recorded = record(&value);
            Entity::update_many()
                .col_expr(
                    Column::Status,
                    sea_orm::sea_query::Expr::val(recorded.status as i16),
                )
                .col_expr(Column::Body, sea_orm::sea_query::Expr::val(recorded.body))
                .col_expr(
                    Column::Location,
                    sea_orm::sea_query::Expr::val(recorded.location),
                )
                .col_expr(Column::Etag, sea_orm::sea_query::Expr::val(recorded.etag))
                .filter(Column::Id.eq(inserted.last_insert_id))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            Ok(Outcome::Fresh(value))
        }
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            let stored = Entity::find()
                .filter(Column::Principal.eq(claim.principal))
                .filter(Column::Key.eq(claim.key))
                .one(db)
                .await?
                .ok_or_else(|| {
                    AppError::Unavailable("the idempotency record vanished; retry".into())
                })?;
            replay(stored, claim.request_hash).map(Outcome::Replayed)
        }
        Err(err) => Err(err.into()),
    }
}

/// For a run of creates that a group commit writes together (the batched form of
/// [`run_once`]): per claim, in order, the response recorded under its key, `Err` if that was
/// for another body, or `None` when the key is free. Expired records are deleted, freeing
/// their keys. One query for the run, where `run_once` takes three statements and a savepoint
/// per create. A key found free stays free until the run records it: the group commit is
/// SQLite's only writer of these records, and should another one record it meanwhile, the
/// run's insert fails on the unique index and its creates go through `run_once`.
pub async fn held(
    db: &impl ConnectionTrait,
    claims: &[Claim<'_>],
) -> Result<Vec<Option<Result<Recorded, AppError>>>, DbErr> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let now = super::now();
    let (live, expired): (Vec<Model>, Vec<Model>) = held_select(claims)
        .all(db)
        .await?
        .into_iter()
        .partition(|stored| stored.expires_at > now);
    if !expired.is_empty() {
        Entity::delete_many()
            .filter(Column::Id.is_in(expired.into_iter().map(|stored| stored.id)))
            .exec(db)
            .await?;
    }
    Ok(claims
        .iter()
        .map(|claim| {
            live.iter()
                .find(|stored| stored.principal == claim.principal && stored.key == claim.key)
                .map(|stored| replay(stored.clone(), claim.request_hash))
        })
        .collect())
}

/// The records held under any of `claims`' keys, expired or not: one lookup in the unique
/// index per claim (the query-plan test checks this).
pub fn held_select(claims: &[Claim<'_>]) -> Select<Entity> {
    let any = claims.iter().fold(Condition::any(), |any, claim| {
        any.add(
            Condition::all()
                .add(Column::Principal.eq(claim.principal))
                .add(Column::Key.eq(claim.key)),
        )
    });
    Entity::find().filter(any)
}

/// Records the responses of creates that ran under free keys (see [`held`]), in one statement
/// that fails as a whole (and leaves nothing of itself) if any key was taken meanwhile.
pub async fn record_all(
    db: &impl ConnectionTrait,
    responses: impl IntoIterator<Item = (Claim<'_>, Recorded)>,
) -> Result<(), DbErr> {
    let now = super::now();
    let rows = responses
        .into_iter()
        .map(|(claim, recorded)| row(claim, recorded, now));
    Entity::insert_many(rows).exec_without_returning(db).await?;
    Ok(())
}

/// The row that holds `claim`'s key until it expires, with `recorded` to replay.
fn row(claim: Claim<'_>, recorded: Recorded, now: DateTime<Utc>) -> ActiveModel {
    ActiveModel {
        principal: Set(claim.principal.to_owned()),
        key: Set(claim.key.to_owned()),
        request_hash: Set(claim.request_hash.to_owned()),
        status: Set(recorded.status as i16),
        body: Set(recorded.body),
        location: Set(recorded.location),
        etag: Set(recorded.etag),
        created_at: Set(now),
        expires_at: Set(now + claim.ttl),
        ..Default::default()
    }
}

fn replay(stored: Model, request_hash: &str) -> Result<Recorded, AppError> {
    if stored.request_hash != request_hash {
        return Err(AppError::IdempotencyKeyReused);
    }
    Ok(Recorded {
        status: stored.status as u16,
        body: stored.body,
        location: stored.location,
        etag: stored.etag,
    })
}

/// Deletes expired records; run now and then so the table stays small.
pub async fn purge_expired(db: &DatabaseConnection) -> Result<u64, AppError> {
    let result = Entity::delete_many()
        .filter(Column::ExpiresAt.lte(super::now()))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}
