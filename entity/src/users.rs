use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    pub role: String,
    /// The address as the user gave it (trimmed).
    pub email: Option<String>,
    /// `email` lowercased: the unique index lives here so that uniqueness is
    /// case-insensitive on every backend without expression indexes.
    #[sea_orm(unique)]
    pub email_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Who created the user: `api-key:<id>` or `oauth:<subject>`.
    pub created_by: Option<String>,
    /// Who last changed the user, in the same form.
    pub updated_by: Option<String>,
    /// Incremented by every write; the strong ETag and the `If-Match` check are built on it.
    pub version: i64,
    /// `name` lowercased (Unicode-aware): what `q` searches and `sort=name` orders by.
    pub name_search: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
