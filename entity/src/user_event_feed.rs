use sea_orm::entity::prelude::*;

/// The change feed's one row of bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_event_feed")]
pub struct Model {
    /// Always 1.
    #[sea_orm(primary_key, auto_increment = false)]
    pub singleton: i32,
    /// The last event id given by the PostgreSQL sequencer.
    pub last_id: i64,
    /// Every event up to this id has been pruned; the ones after it are kept.
    pub pruned_through: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
