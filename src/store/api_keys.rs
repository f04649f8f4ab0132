use chrono::{DateTime, Utc};
use entity::api_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::Page;
use crate::{
    domain::{ApiKeySecret, Cursor, ListQuery, NewApiKey, SortKey},
    error::AppError,
};

fn not_found(id: i64) -> AppError {
    AppError::NotFound {
        resource: "API key",
        id,
    }
}

/// Creates a key and returns its row together with the only copy of its plaintext.
/// `created_by` is the audit name of the creating principal (`None` from the CLI).
pub async fn create(
    db: &DatabaseConnection,
    key: &NewApiKey,
    created_by: Option<String>,
) -> Result<(Model, ApiKeySecret), AppError> {
    let secret = ApiKeySecret::generate();
    let model = Entity::insert(ActiveModel {
        name: Set(key.name.clone()),
        prefix: Set(secret.display_prefix().to_owned()),
        secret_hash: Set(secret.hash()),
        scopes: Set(key.scopes.to_stored()),
        created_at: Set(super::now()),
        revoked_at: Set(None),
        expires_at: Set(key.expires_at),
        last_used_at: Set(None),
        created_by: Set(created_by),
        ..Default::default()
    })
    .exec_with_returning(db)
    .await?;
    Ok((model, secret))
}

/// Keys in id order, a page at a time (see `users::list`).
pub async fn list(
    db: &DatabaseConnection,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<Page<Model>, AppError> {
    let mut query = Entity::find().order_by_asc(Column::Id);
    if let Some(cursor) = after {
        query = query.filter(Column::Id.gt(cursor.after_id));
    }
    let rows = query.limit(limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, limit, |key| {
        Cursor::new(SortKey::Id, key.id, &ListQuery::default())
    }))
}

pub async fn get(db: &DatabaseConnection, id: i64) -> Result<Model, AppError> {
    Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn count(db: &DatabaseConnection) -> Result<u64, AppError> {
    Ok(Entity::find().count(db).await?)
}

/// Marks a key revoked; revoking twice is not an error, revoking a missing key is.
pub async fn revoke(db: &DatabaseConnection, id: i64) -> Result<Model, AppError> {
    let key = get(db, id).await?;
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    Entity::update_many()
        .col_expr(Column::RevokedAt, Expr::value(super::now()))
        .filter(Column::Id.eq(id))
        .filter(Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    get(db, id).await
}

/// The key whose hash is `hash`, whatever its state; the caller judges revocation and expiry.
pub async fn find_by_hash(db: &DatabaseConnection, hash: &str) -> Result<Option<Model>, AppError> {
    Ok(Entity::find()
        .filter(Column::SecretHash.eq(hash))
        .one(db)
        .await?)
}

/// Records a use; never moves `last_used_at` backwards (instances flush in any order).
pub async fn touch(db: &DatabaseConnection, id: i64, at: DateTime<Utc>) -> Result<(), AppError> {
    Entity::update_many()
        .col_expr(Column::LastUsedAt, Expr::value(at))
        .filter(Column::Id.eq(id))
        .filter(Column::LastUsedAt.is_null().or(Column::LastUsedAt.lt(at)))
        .exec(db)
        .await?;
    Ok(())
}
