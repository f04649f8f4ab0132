use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

/// What conditional requests, richer listings, idempotent retries and shared rate limits need:
/// a version per user, a search column and indexes for every sort, and two tables of shared state.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One change per statement: SQLite's ALTER TABLE takes one at a time.
        let mut search = text(Users::NameSearch).default("").to_owned();
        if manager.get_database_backend() == DbBackend::Postgres {
            // Byte order, as on SQLite: keyset pagination by name must page the same way on both.
            search.extra("COLLATE \"C\"");
        }
        for column in [big_integer(Users::Version).default(1).to_owned(), search] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Existing rows: SQL lower() folds ASCII only; the service writes Unicode lowercase.
        manager
            .get_connection()
            .execute_unprepared("UPDATE users SET name_search = lower(name)")
            .await?;
        for (name, columns) in [
            (
                "idx_users_name_search_id",
                vec![Users::NameSearch, Users::Id],
            ),
            ("idx_users_created_at_id", vec![Users::CreatedAt, Users::Id]),
            // An exact role filter combined with each sort.
            ("idx_users_role_id", vec![Users::Role, Users::Id]),
            (
                "idx_users_role_name_search_id",
                vec![Users::Role, Users::NameSearch, Users::Id],
            ),
            (
                "idx_users_role_created_at_id",
                vec![Users::Role, Users::CreatedAt, Users::Id],
            ),
        ] {
            let mut index = Index::create().name(name).table(Users::Table).to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(big_pk_auto(IdempotencyKeys::Id))
                    .col(text(IdempotencyKeys::Principal))
                    .col(string_len(IdempotencyKeys::Key, 255))
                    .col(string_len(IdempotencyKeys::RequestHash, 64))
                    .col(small_integer(IdempotencyKeys::Status))
                    .col(text(IdempotencyKeys::Body))
                    .col(text_null(IdempotencyKeys::Location))
                    .col(text_null(IdempotencyKeys::Etag))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .col(timestamp_with_time_zone(IdempotencyKeys::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_principal_key")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::Principal)
                    .col(IdempotencyKeys::Key)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_expires_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::ExpiresAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RateLimitWindows::Table)
                    .if_not_exists()
                    .col(text(RateLimitWindows::Bucket))
                    .col(big_integer(RateLimitWindows::WindowStart))
                    .col(big_integer(RateLimitWindows::Hits))
                    .primary_key(
                        Index::create()
                            .col(RateLimitWindows::Bucket)
                            .col(RateLimitWindows::WindowStart),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RateLimitWindows::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await?;
        for name in [
            "idx_users_name_search_id",
            "idx_users_created_at_id",
            "idx_users_role_id",
            "idx_users_role_name_search_id",
            "idx_users_role_created_at_id",
        ] {
            manager
                .drop_index(Index::drop().name(name).table(Users::Table).to_owned())
                .await?;
        }
        for column in [Users::Version, Users::NameSearch] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Role,
    CreatedAt,
    Version,
    NameSearch,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Id,
    Principal,
    Key,
    RequestHash,
    Status,
    Body,
    Location,
    Etag,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum RateLimitWindows {
    Table,
    Bucket,
    WindowStart,
    Hits,
}
