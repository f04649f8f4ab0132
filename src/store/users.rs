use entity::users::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr,
};

use super::Page;
use crate::{
    domain::{Cursor, NewUser, UserChanges},
    error::AppError,
};

fn not_found(id: i64) -> AppError {
    AppError::NotFound {
        resource: "user",
        id,
    }
}

/// The unique index on the lowercased email is the arbiter of duplicates: checking first and
/// inserting second would race between concurrent requests.
fn write_error(err: DbErr) -> AppError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => {
            AppError::Conflict("another user already has this email address".into())
        }
        _ => AppError::from(err),
    }
}

/// Keyset pagination: cost does not grow with depth, and inserts never shift pages.
pub async fn list(
    db: &DatabaseConnection,
    after: Option<Cursor>,
    limit: u64,
) -> Result<Page<Model>, AppError> {
    let mut query = Entity::find().order_by_asc(Column::Id);
    if let Some(cursor) = after {
        query = query.filter(Column::Id.gt(cursor.after_id));
    }
    let rows = query.limit(limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, limit, |user| user.id))
}

pub async fn get(db: &DatabaseConnection, id: i64) -> Result<Model, AppError> {
    Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found(id))
}

/// `actor` is the audit name of the principal doing the write.
pub async fn create(
    db: &DatabaseConnection,
    user: NewUser,
    actor: &str,
) -> Result<Model, AppError> {
    let now = super::now();
    ActiveModel {
        name: Set(user.name.as_str().to_owned()),
        role: Set(user.role.as_str().to_owned()),
        email_key: Set(user.email.as_ref().map(|e| e.key())),
        email: Set(user.email.map(|e| e.as_str().to_owned())),
        created_at: Set(now),
        updated_at: Set(now),
        created_by: Set(Some(actor.to_owned())),
        updated_by: Set(Some(actor.to_owned())),
        ..Default::default()
    }
    .insert(db)
    .await
    .map_err(write_error)
}

/// Full replace: every client-writable field takes the given value (an absent email clears it).
pub async fn replace(
    db: &DatabaseConnection,
    id: i64,
    user: NewUser,
    actor: &str,
) -> Result<Model, AppError> {
    let changes = UserChanges {
        name: Some(user.name),
        role: Some(user.role),
        email: Some(user.email),
    };
    update(db, id, changes, actor).await
}

pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    changes: UserChanges,
    actor: &str,
) -> Result<Model, AppError> {
    let mut row = ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(id),
        updated_at: Set(super::now()),
        updated_by: Set(Some(actor.to_owned())),
        ..Default::default()
    };
    if let Some(name) = changes.name {
        row.name = Set(name.as_str().to_owned());
    }
    if let Some(role) = changes.role {
        row.role = Set(role.as_str().to_owned());
    }
    if let Some(email) = changes.email {
        row.email_key = Set(email.as_ref().map(|e| e.key()));
        row.email = Set(email.map(|e| e.as_str().to_owned()));
    }
    match row.update(db).await {
        Ok(model) => Ok(model),
        Err(DbErr::RecordNotUpdated) => Err(not_found(id)),
        Err(err) => Err(write_error(err)),
    }
}

pub async fn delete(db: &DatabaseConnection, id: i64) -> Result<(), AppError> {
    let result = Entity::delete_by_id(id).exec(db).await?;
    if result.rows_affected == 0 {
        return Err(not_found(id));
    }
    Ok(())
}
