//! Idempotent retries: the outcome of a create is stored under the caller's key in the same
//! transaction as the create itself, so a retry replays it and a racing duplicate cannot
//! create a second user.

use chrono::Duration;
use entity::idempotency_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, SqlErr, TransactionTrait,
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
    let placeholder = Entity::insert(ActiveModel {
        principal: Set(claim.principal.to_owned()),
        key: Set(claim.key.to_owned()),
        request_hash: Set(claim.request_hash.to_owned()),
        status: Set(0),
        body: Set(String::new()),
        location: Set(None),
        etag: Set(None),
        created_at: Set(now),
        expires_at: Set(now + claim.ttl),
        ..Default::default()
    })
    .exec(&txn)
    .await;
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
            replay(stored, claim.request_hash)
        }
        Err(err) => Err(err.into()),
    }
}

fn replay<T>(stored: Model, request_hash: &str) -> Result<Outcome<T>, AppError> {
    if stored.request_hash != request_hash {
        return Err(AppError::IdempotencyKeyReused);
    }
    Ok(Outcome::Replayed(Recorded {
        status: stored.status as u16,
        body: stored.body,
        location: stored.location,
        etag: stored.etag,
    }))
}

/// Deletes expired records; run now and then so the table stays small.
pub async fn purge_expired(db: &DatabaseConnection) -> Result<u64, AppError> {
    let result = Entity::delete_many()
        .filter(Column::ExpiresAt.lte(super::now()))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}
