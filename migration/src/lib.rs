//! Schema migrations, one file per step. They run at `serve` start and with `users-api migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_users;
mod m20261124_000002_create_api_keys;
mod m20261124_000003_audit_and_key_lifecycle;
mod m20261124_000004_http_semantics;
mod m20261207_000005_user_events;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_users::Migration),
            Box::new(m20261124_000002_create_api_keys::Migration),
            Box::new(m20261124_000003_audit_and_key_lifecycle::Migration),
            Box::new(m20261124_000004_http_semantics::Migration),
            Box::new(m20261207_000005_user_events::Migration),
        ]
    }
}
