use sea_orm_migration::{prelude::*, schema::*};

/// Who wrote each user, and when keys expire and were last used.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// SQLite's ALTER TABLE takes one change at a time, so each column is its own statement.
fn add(table: impl IntoIden + Clone, column: ColumnDef) -> TableAlterStatement {
    Table::alter().table(table).add_column(column).to_owned()
}

fn drop(table: impl IntoIden + Clone, column: impl IntoIden) -> TableAlterStatement {
    Table::alter().table(table).drop_column(column).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in [
            add(Users::Table, text_null(Users::CreatedBy)),
            add(Users::Table, text_null(Users::UpdatedBy)),
            add(
                ApiKeys::Table,
                timestamp_with_time_zone_null(ApiKeys::ExpiresAt),
            ),
            add(
                ApiKeys::Table,
                timestamp_with_time_zone_null(ApiKeys::LastUsedAt),
            ),
            add(ApiKeys::Table, text_null(ApiKeys::CreatedBy)),
        ] {
            manager.alter_table(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in [
            drop(Users::Table, Users::CreatedBy),
            drop(Users::Table, Users::UpdatedBy),
            drop(ApiKeys::Table, ApiKeys::ExpiresAt),
            drop(ApiKeys::Table, ApiKeys::LastUsedAt),
            drop(ApiKeys::Table, ApiKeys::CreatedBy),
        ] {
            manager.alter_table(statement).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone)]
enum Users {
    Table,
    CreatedBy,
    UpdatedBy,
}

#[derive(DeriveIden, Clone)]
enum ApiKeys {
    Table,
    ExpiresAt,
    LastUsedAt,
    CreatedBy,
}
