use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

/// The change feed: every committed write of a user appends an event in the same transaction.
/// On SQLite, triggers append the events of inserts and updates within the writing statement
/// itself, so a batch of creates stays one statement; deletions (whose actor the row does not
/// hold) and every write on PostgreSQL append theirs from `store::events`.
///
/// An event's public `id` must increase in the order events become visible, so that a reader
/// that moved past an id never misses a smaller one committed later. `seq` is the insertion
/// order; `id` is given once the event is committed:
/// - on SQLite, by a trigger in the inserting statement (`id = seq`): SQLite commits one write
///   transaction at a time, so insertion order is commit order, and `AUTOINCREMENT` never
///   reuses a `seq`, even after the newest events were pruned;
/// - on PostgreSQL, by `user_events_sequence()`, which numbers committed events only, one
///   caller at a time, continuing `user_event_feed.last_id` (see `docs/architecture.md`).
///
/// `user_event_feed` is one row: the last id given (PostgreSQL) and the newest id pruned.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        manager
            .create_table(
                Table::create()
                    .table(UserEvents::Table)
                    .if_not_exists()
                    .col(big_pk_auto(UserEvents::Seq))
                    .col(big_integer_null(UserEvents::Id).unique_key())
                    .col(string_len(UserEvents::Type, 32))
                    .col(big_integer(UserEvents::UserId))
                    .col(text_null(UserEvents::User))
                    .col(text(UserEvents::Actor))
                    .col(timestamp_with_time_zone(UserEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_user_events_type_id")
                    .table(UserEvents::Table)
                    .col(UserEvents::Type)
                    .col(UserEvents::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UserEventFeed::Table)
                    .if_not_exists()
                    .col(integer(UserEventFeed::Singleton).primary_key())
                    .col(big_integer(UserEventFeed::LastId).default(0))
                    .col(big_integer(UserEventFeed::PrunedThrough).default(0))
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(
            "INSERT INTO user_event_feed (singleton, last_id, pruned_through) VALUES (1, 0, 0)",
        )
        .await?;
        match manager.get_database_backend() {
            DbBackend::Sqlite => {
                db.execute_unprepared(
                    "CREATE TRIGGER user_events_number AFTER INSERT ON user_events \
                     WHEN NEW.id IS NULL \
                     BEGIN UPDATE user_events SET id = NEW.seq WHERE seq = NEW.seq; END",
                )
                .await?;
                for (event, trigger, actor, at) in [
                    ("created", "INSERT", "created_by", "created_at"),
                    ("updated", "UPDATE", "updated_by", "updated_at"),
                ] {
                    db.execute_unprepared(&format!(
                        "CREATE TRIGGER user_events_{event} AFTER {trigger} ON users BEGIN \
                         INSERT INTO user_events (type, user_id, user, actor, created_at) \
                         VALUES ('user.{event}', NEW.id, {SNAPSHOT}, \
                         coalesce(NEW.{actor}, ''), NEW.{at}); END"
                    ))
                    .await?;
                }
            }
            DbBackend::Postgres => {
                db.execute_unprepared(
                    "CREATE INDEX idx_user_events_unnumbered ON user_events (seq) WHERE id IS NULL",
                )
                .await?;
                db.execute_unprepared(SEQUENCE_FUNCTION).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS user_events_sequence()")
                .await?;
        }
        manager
            .drop_table(Table::drop().table(UserEventFeed::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UserEvents::Table).to_owned())
            .await
    }
}

/// The user after a change, as `store::events::UserSnapshot` reads it.
const SNAPSHOT: &str = "json_object('id', NEW.id, 'name', NEW.name, 'role', NEW.role, \
    'email', NEW.email, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at, \
    'created_by', NEW.created_by, 'updated_by', NEW.updated_by, 'version', NEW.version)";

/// Numbers committed, unnumbered events (up to 5,000) after the last id given, in insertion
/// order, and returns how many. Callers take turns on an advisory lock held to the end of the
/// transaction, and each statement after it sees every commit before it, so ids are given, and
/// become visible, in increasing order. Events of transactions still running are invisible
/// here and wait for a later call; the readers' wake-up is a `NOTIFY` sent at commit.
const SEQUENCE_FUNCTION: &str = r#"
CREATE FUNCTION user_events_sequence() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    numbered bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7573657273617065);
    WITH pending AS MATERIALIZED (
        SELECT seq, row_number() OVER (ORDER BY seq) AS n
        FROM user_events WHERE id IS NULL ORDER BY seq LIMIT 5000
    ), total AS (
        SELECT count(*) AS n FROM pending
    ), counter AS (
        UPDATE user_event_feed SET last_id = last_id + (SELECT n FROM total)
        WHERE singleton = 1 AND (SELECT n FROM total) > 0
        RETURNING last_id - (SELECT n FROM total) AS base
    )
    UPDATE user_events AS e SET id = counter.base + pending.n
    FROM pending, counter WHERE e.seq = pending.seq;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    IF numbered > 0 THEN
        PERFORM pg_notify('user_events', '');
    END IF;
    RETURN numbered;
END
$$"#;

#[derive(DeriveIden)]
enum UserEvents {
    Table,
    Seq,
    Id,
    Type,
    UserId,
    User,
    Actor,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UserEventFeed {
    Table,
    Singleton,
    LastId,
    PrunedThrough,
}
