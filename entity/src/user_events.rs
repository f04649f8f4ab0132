use sea_orm::entity::prelude::*;

/// One committed change of a user: the change feed's row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_events")]
pub struct Model {
    /// Insertion order; internal.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The event's public id, given once it is committed (see the migration); `None` until then.
    #[sea_orm(unique)]
    pub id: Option<i64>,
    /// `user.created`, `user.updated` or `user.deleted`.
    #[sea_orm(column_name = "type")]
    pub kind: String,
    pub user_id: i64,
    /// The user after the change, as JSON; `None` for a deletion.
    pub user: Option<String>,
    /// Who made the change: `api-key:<id>` or `oauth:<subject>`.
    pub actor: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
