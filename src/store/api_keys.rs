//! The api_keys table: keys are stored as the SHA-256 of their secret, never the secret.

use chrono::{DateTime, Utc};
use entity::api_keys::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::{Page, Store};
use crate::{
    domain::{ApiKeySecret, Cursor, KeyDigest, ListQuery, NewApiKey, SortKey},
    error::AppError,
};

fn not_found(id: i64) -> AppError {
    AppError::NotFound {
        resource: "API key",
        id,
    }
}

impl Store {
    /// Creates a key and returns its row together with the only copy of its secret.
    /// `created_by` is the audit name of the creating principal (`None` from the CLI).
    pub async fn create_api_key(
        &self,
        key: &NewApiKey,
        created_by: Option<String>,
    ) -> Result<(Model, ApiKeySecret), AppError> {
        self.check_file()?;
        let secret = ApiKeySecret::generate();
        let model = Entity::insert(ActiveModel {
            name: Set(key.name.clone()),
            prefix: Set(secret.display_prefix().to_owned()),
            secret_hash: Set(secret.digest().to_hex()),
            scopes: Set(key.scopes.to_stored()),
            created_at: Set(super::now()),
            revoked_at: Set(None),
            expires_at: Set(key.expires_at),
            last_used_at: Set(None),
            created_by: Set(created_by),
            ..Default::default()
        })
        .exec_with_returning(&self.db)
        .await?;
        Ok((model, secret))
    }

    /// Keys in id order, a page at a time.
    pub async fn list_api_keys(
        &self,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Page<Model>, AppError> {
        let mut query = Entity::find().order_by_asc(Column::Id);
        if let Some(cursor) = after {
            query = query.filter(Column::Id.gt(cursor.after_id));
        }
        let rows = query.limit(limit + 1).all(&self.db).await?;
        Ok(Page::from_rows(rows, limit, |key| {
            Cursor::new(SortKey::Id, key.id, &ListQuery::default())
        }))
    }

    pub async fn get_api_key(&self, id: i64) -> Result<Model, AppError> {
        Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| not_found(id))
    }

    pub async fn count_api_keys(&self) -> Result<u64, AppError> {
        Ok(Entity::find().count(&self.db).await?)
    }

    /// Marks a key revoked; revoking twice is not an error, revoking a missing key is.
    pub async fn revoke_api_key(&self, id: i64) -> Result<Model, AppError> {
        self.check_file()?;
        let key = self.get_api_key(id).await?;
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        Entity::update_many()
            .col_expr(Column::RevokedAt, Expr::value(super::now()))
            .filter(Column::Id.eq(id))
            .filter(Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        self.get_api_key(id).await
    }

    /// The key with this digest, whatever its state; the caller judges revocation and expiry.
    pub async fn find_api_key(&self, digest: &KeyDigest) -> Result<Option<Model>, AppError> {
        Ok(Entity::find()
            .filter(Column::SecretHash.eq(digest.to_hex()))
            .one(&self.db)
            .await?)
    }

    /// Records a use; never moves `last_used_at` backwards (instances flush in any order).
    pub async fn touch_api_key(&self, id: i64, at: DateTime<Utc>) -> Result<(), AppError> {
        Entity::update_many()
            .col_expr(Column::LastUsedAt, Expr::value(at))
            .filter(Column::Id.eq(id))
            .filter(Column::LastUsedAt.is_null().or(Column::LastUsedAt.lt(at)))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
