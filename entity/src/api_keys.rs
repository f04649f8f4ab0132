use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    /// The first characters of the key, kept in clear so people can tell keys apart.
    pub prefix: String,
    /// Hex SHA-256 of the whole key; the key itself is never stored.
    #[sea_orm(unique)]
    pub secret_hash: String,
    /// Space-separated scope names.
    pub scopes: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    /// After this instant the key is refused.
    pub expires_at: Option<DateTimeUtc>,
    /// Updated in batches, not on every request: accurate to the flush interval.
    pub last_used_at: Option<DateTimeUtc>,
    /// Who created the key; `None` for keys made with the CLI.
    pub created_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
