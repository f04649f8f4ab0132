use entity::api_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};

use crate::{
    domain::{ApiKeySecret, ScopeSet},
    error::AppError,
};

/// Creates a key and returns its row together with the only copy of its plaintext.
pub async fn create(
    db: &DatabaseConnection,
    name: &str,
    scopes: &ScopeSet,
) -> Result<(Model, ApiKeySecret), AppError> {
    let secret = ApiKeySecret::generate();
    let model = Entity::insert(ActiveModel {
        name: Set(name.to_owned()),
        prefix: Set(secret.display_prefix().to_owned()),
        secret_hash: Set(secret.hash()),
        scopes: Set(scopes.to_stored()),
        created_at: Set(super::now()),
        revoked_at: Set(None),
        ..Default::default()
    })
    .exec_with_returning(db)
    .await?;
    Ok((model, secret))
}

pub async fn list(db: &DatabaseConnection) -> Result<Vec<Model>, AppError> {
    Ok(Entity::find().order_by_asc(Column::Id).all(db).await?)
}

pub async fn count(db: &DatabaseConnection) -> Result<u64, AppError> {
    Ok(Entity::find().count(db).await?)
}

/// Marks a key revoked; revoking twice is not an error, revoking a missing key is.
pub async fn revoke(db: &DatabaseConnection, id: i64) -> Result<Model, AppError> {
    let key = Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(AppError::NotFound {
            resource: "API key",
            id,
        })?;
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    Entity::update_many()
        .col_expr(
            Column::RevokedAt,
            sea_orm::sea_query::Expr::value(super::now()),
        )
        .filter(Column::Id.eq(id))
        .filter(Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(Entity::find_by_id(id).one(db).await?.unwrap_or(key))
}

/// The live key whose hash is `hash`, if any.
pub async fn find_active(db: &DatabaseConnection, hash: &str) -> Result<Option<Model>, AppError> {
    Ok(Entity::find()
        .filter(Column::SecretHash.eq(hash))
        .filter(Column::RevokedAt.is_null())
        .one(db)
        .await?)
}
