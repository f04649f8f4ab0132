//! Idempotent creates: the response of a create is recorded under the caller's key in the
//! same transaction as the user itself, so a retry replays it and a racing duplicate cannot
//! create a second user.

use entity::idempotency_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, Select, SqlErr, TransactionTrait, sea_query::Expr,
};

use super::{
    Store,
    users::{self, Written},
};
use crate::{domain::NewUser, error::AppError};

/// A response as it is replayed to a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub etag: Option<String>,
}

/// What makes a create idempotent: the caller's key, the fingerprint of its body, how long the
/// key is held, and how to record the response a retry replays.
pub struct Once {
    pub key: String,
    pub request_hash: String,
    pub ttl: chrono::Duration,
    /// The response to record for the user just created.
    pub record: fn(&entity::users::Model) -> Recorded,
}

/// Creates `user` once per `(actor, once.key)` inside `txn`: the new user, or the response
/// recorded by the create that holds the key. Everything happens in a savepoint, so a create
/// that fails (a taken email) keeps nothing, its key included, and the rest of `txn` (a group
/// commit's batch) is untouched.
pub(super) async fn create_once(
    txn: &DatabaseTransaction,
    user: NewUser,
    actor: &str,
    once: &Once,
) -> Result<Result<Written, AppError>, DbErr> {
    let now = super::now();
    let savepoint = txn.begin().await?;
    // An expired record no longer holds the key.
    Entity::delete_many()
        .filter(Column::Principal.eq(actor))
        .filter(Column::Key.eq(&once.key))
        .filter(Column::ExpiresAt.lte(now))
        .exec(&savepoint)
        .await?;
    // The key is claimed first, with status 0 until the create is done, so that a concurrent
    // create with the same key (on PostgreSQL) waits on the unique index before writing a user.
    let claim = Entity::insert(ActiveModel {
        principal: Set(actor.to_owned()),
        key: Set(once.key.clone()),
        request_hash: Set(once.request_hash.clone()),
        status: Set(0),
        body: Set(String::new()),
        location: Set(None),
        etag: Set(None),
        created_at: Set(now),
        expires_at: Set(now + once.ttl),
        ..Default::default()
    })
    .exec(&savepoint)
    .await;
    let claim = match claim {
        Ok(claim) => claim,
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            savepoint.rollback().await?;
            return replay(txn, actor, once).await;
        }
        Err(err) => return Err(err),
    };
    let model = match users::insert(&savepoint, user, actor).await {
        Ok(model) => model,
        Err(err) => {
            let conflict = users::conflict(&err).ok_or(err)?;
            savepoint.rollback().await?;
            return Ok(Err(conflict));
        }
    };
    let recorded = (once.record)(&model);
    Entity::update_many()
        .col_expr(Column::Status, Expr::val(recorded.status as i16))
        .col_expr(Column::Body, Expr::val(recorded.body))
        .col_expr(Column::Location, Expr::val(recorded.location))
        .col_expr(Column::Etag, Expr::val(recorded.etag))
        .filter(Column::Id.eq(claim.last_insert_id))
        .exec(&savepoint)
        .await?;
    savepoint.commit().await?;
    Ok(Ok(Written::User(model)))
}

/// The record `principal`'s `key` holds: one search of the unique index (the query-plan test
/// checks it).
pub fn record_query(principal: &str, key: &str) -> Select<Entity> {
    Entity::find()
        .filter(Column::Principal.eq(principal))
        .filter(Column::Key.eq(key))
}

/// The response recorded under the key, if it was for this very body.
async fn replay(
    db: &impl ConnectionTrait,
    actor: &str,
    once: &Once,
) -> Result<Result<Written, AppError>, DbErr> {
    let stored: Option<Model> = record_query(actor, &once.key).one(db).await?;
    let Some(stored) = stored else {
        return Ok(Err(AppError::Unavailable(
            "the idempotency record vanished; retry".into(),
        )));
    };
    if stored.request_hash != once.request_hash {
        return Ok(Err(AppError::IdempotencyKeyReused));
    }
    Ok(Ok(Written::Replayed(Recorded {
        status: stored.status as u16,
        body: stored.body,
        location: stored.location,
        etag: stored.etag,
    })))
}

impl Store {
    /// Deletes expired records, so that the table stays small; a reused key also drops its own.
    pub async fn purge_expired_idempotency_keys(&self) -> Result<u64, AppError> {
        let result = Entity::delete_many()
            .filter(Column::ExpiresAt.lte(super::now()))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
