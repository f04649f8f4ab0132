//! The change feed's table: an event appended by every user write, in its transaction; read in
//! id order; pruned from the oldest end past the retention. How ids are given, so that readers
//! never skip one, is in the migration that creates the table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{
    user_event_feed,
    user_events::{ActiveModel, Column, Entity, Model},
    users,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::{domain::EventKind, error::AppError};

/// A committed change of a user, as the feed tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    pub id: i64,
    pub kind: EventKind,
    pub user_id: i64,
    /// The user after the change; `None` for a deletion.
    pub user: Option<UserSnapshot>,
    /// Who made the change: `api-key:<id>` or `oauth:<subject>`.
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// A user as it was right after a change: what the API shows of a user, and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSnapshot {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub version: i64,
}

impl From<&users::Model> for UserSnapshot {
    fn from(model: &users::Model) -> Self {
        UserSnapshot {
            id: model.id,
            name: model.name.clone(),
            role: model.role.clone(),
            email: model.email.clone(),
            created_at: model.created_at,
            updated_at: model.updated_at,
            created_by: model.created_by.clone(),
            updated_by: model.updated_by.clone(),
            version: model.version,
        }
    }
}

/// The ends of the feed: every event up to `pruned_through` is gone, and `newest` is the
/// last one given (or `pruned_through` when none is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedBounds {
    pub pruned_through: i64,
    pub newest: i64,
}

/// The row of an event of `kind` for `user` (the user as the write left it, or as it was
/// before a deletion).
fn row(kind: EventKind, user: &users::Model, actor: &str, now: DateTime<Utc>) -> ActiveModel {
    let snapshot = (kind != EventKind::Deleted).then(|| UserSnapshot::from(user));
    ActiveModel {
        kind: Set(kind.as_str().to_owned()),
        user_id: Set(user.id),
        user: Set(snapshot.map(|snapshot| {
            serde_json::to_string(&snapshot).expect("a snapshot always serialises")
        })),
        actor: Set(actor.to_owned()),
        created_at: Set(now),
        ..Default::default()
    }
}

/// Whether the database writes the event of a `kind` of write itself: on SQLite, triggers
/// append the events of inserts and updates within the writing statement (see the migration),
/// which keeps a batch of creates one statement.
fn by_trigger(db: &impl ConnectionTrait, kind: EventKind) -> bool {
    db.get_database_backend() == DbBackend::Sqlite && kind != EventKind::Deleted
}

/// Appends the event of one write, inside the write's transaction, unless the database does.
pub(super) async fn append(
    db: &impl ConnectionTrait,
    kind: EventKind,
    user: &users::Model,
    actor: &str,
) -> Result<(), DbErr> {
    if by_trigger(db, kind) {
        return Ok(());
    }
    Entity::insert(row(kind, user, actor, super::now()))
        .exec_without_returning(db)
        .await
        .map(drop)
}

/// Appends one `user.created` per new user, in their order, in one statement, unless the
/// database does.
pub(super) async fn append_created(
    db: &impl ConnectionTrait,
    created: &[users::Model],
) -> Result<(), DbErr> {
    if by_trigger(db, EventKind::Created) || created.is_empty() {
        return Ok(());
    }
    let now = super::now();
    let rows = created.iter().map(|user| {
        let actor = user.created_by.as_deref().unwrap_or_default();
        row(EventKind::Created, user, actor, now)
    });
    Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
        .map(drop)
}

impl TryFrom<Model> for UserEvent {
    type Error = DbErr;

    fn try_from(model: Model) -> Result<Self, DbErr> {
        let corrupt = |what: String| DbErr::Custom(format!("event {:?}: {what}", model.id));
        let kind = EventKind::parse(&model.kind)
            .ok_or_else(|| corrupt(format!("unknown type {}", model.kind)))?;
        let user = model
            .user
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|err| corrupt(format!("unreadable user: {err}")))?;
        Ok(UserEvent {
            id: model.id.ok_or_else(|| corrupt("no id yet".into()))?,
            kind,
            user_id: model.user_id,
            user,
            actor: model.actor,
            created_at: model.created_at,
        })
    }
}

/// How many events one pruning transaction deletes at most: a few milliseconds of a writer's
/// time, so that pruning never holds writers up for long.
const PRUNE_CHUNK: u64 = 500;

impl Store {
    /// Up to `limit` events after `after`, in id order; of one kind only with `kind`.
    pub async fn events_after(
        &self,
        after: i64,
        limit: u64,
        kind: Option<EventKind>,
    ) -> Result<Vec<UserEvent>, AppError> {
        let mut select = Entity::find().filter(Column::Id.gt(after));
        if let Some(kind) = kind {
            select = select.filter(Column::Kind.eq(kind.as_str()));
        }
        let rows = select
            .order_by_asc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let events: Result<Vec<_>, DbErr> = rows.into_iter().map(UserEvent::try_from).collect();
        Ok(events?)
    }

    /// Every event up to this id has been pruned.
    pub async fn pruned_through(&self) -> Result<i64, AppError> {
        Ok(user_event_feed::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .map_or(0, |feed| feed.pruned_through))
    }

    /// Where the feed starts and ends now.
    pub async fn feed_bounds(&self) -> Result<FeedBounds, AppError> {
        let pruned_through = self.pruned_through().await?;
        let newest: Option<Option<i64>> = Entity::find()
            .select_only()
            .column_as(Column::Id.max(), "newest")
            .into_tuple()
            .one(&self.db)
            .await?;
        let newest = newest.flatten().unwrap_or(0).max(pruned_through);
        Ok(FeedBounds {
            pruned_through,
            newest,
        })
    }

    /// Deletes the events created before `before`, oldest first, a chunk per transaction;
    /// returns how many. Only ever a prefix of the feed goes, and `pruned_through` moves with
    /// it in the same transaction, so a reader that finds it unmoved after a read has missed
    /// nothing.
    pub async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, AppError> {
        let mut pruned = 0;
        loop {
            let pruned_through = self.pruned_through().await?;
            let ids: Vec<Option<i64>> = Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(Column::Id.gt(pruned_through))
                .filter(Column::CreatedAt.lt(before))
                .order_by_asc(Column::Id)
                .limit(PRUNE_CHUNK)
                .into_tuple()
                .all(&self.db)
                .await?;
            let Some(upto) = ids.last().copied().flatten() else {
                return Ok(pruned);
            };
            let txn = self.db.begin().await?;
            let deleted = Entity::delete_many()
                .filter(Column::Id.gt(pruned_through))
                .filter(Column::Id.lte(upto))
                .exec(&txn)
                .await?;
            user_event_feed::Entity::update_many()
                .col_expr(
                    user_event_feed::Column::PrunedThrough,
                    Expr::case(
                        user_event_feed::Column::PrunedThrough.lt(upto),
                        Expr::val(upto),
                    )
                    .finally(Expr::col(user_event_feed::Column::PrunedThrough))
                    .into(),
                )
                .filter(user_event_feed::Column::Singleton.eq(1))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            pruned += deleted.rows_affected;
            if (ids.len() as u64) < PRUNE_CHUNK {
                return Ok(pruned);
            }
            // Writers go first between two chunks.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
