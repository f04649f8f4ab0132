use sea_orm::entity::prelude::*;

/// The stored outcome of a `POST` made with an `Idempotency-Key`, replayed on retries.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The caller the key belongs to (`api-key:<id>` or `oauth:<sub>`): keys are per caller.
    pub principal: String,
    pub key: String,
    /// Hex SHA-256 of the request body, to tell a retry from a reuse with another body.
    pub request_hash: String,
    pub status: i16,
    pub body: String,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
