//! Shared rate-limit counters: hits per bucket and fixed window, summed across instances.

use entity::rate_limit_windows::{ActiveModel, Column, Entity};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};

use super::Store;
use crate::error::AppError;

impl Store {
    /// Adds `hits` to a window and returns the window's total across all instances.
    pub async fn add_rate_limit_hits(
        &self,
        bucket: &str,
        window_start: i64,
        hits: i64,
    ) -> Result<i64, AppError> {
        let row = Entity::insert(ActiveModel {
            bucket: Set(bucket.to_owned()),
            window_start: Set(window_start),
            hits: Set(hits),
        })
        .on_conflict(
            OnConflict::columns([Column::Bucket, Column::WindowStart])
                .value(
                    Column::Hits,
                    Expr::col((Entity, Column::Hits))
                        .add(Expr::col((Alias::new("excluded"), Column::Hits))),
                )
                .to_owned(),
        )
        .exec_with_returning(&self.db)
        .await?;
        Ok(row.hits)
    }

    /// The total of a window so far (0 if nobody has counted in it yet).
    pub async fn rate_limit_hits(&self, bucket: &str, window_start: i64) -> Result<i64, AppError> {
        Ok(Entity::find_by_id((bucket.to_owned(), window_start))
            .one(&self.db)
            .await?
            .map_or(0, |row| row.hits))
    }

    /// Forgets windows that started before `before` (Unix seconds).
    pub async fn purge_rate_limit_windows(&self, before: i64) -> Result<(), AppError> {
        Entity::delete_many()
            .filter(Column::WindowStart.lt(before))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
