//! The users table: reads, keyset pages, and the writes (each one whole, in one transaction,
//! whichever path commits it).

use chrono::{DateTime, Utc};
use entity::users::{ActiveModel, Column, Entity, Model};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, Order,
    QueryFilter, QueryOrder, QuerySelect, Select, SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait, LikeExpr},
};

pub use super::idempotency::{Once, Recorded};
use super::{Page, Store, events, idempotency};
use crate::{
    domain::{Cursor, EventKind, ListQuery, NewUser, SortField, SortKey, UserChanges},
    error::AppError,
};

/// A write of one user, as the service asks for it.
pub enum UserWrite {
    /// Idempotent when it comes with a [`Once`].
    Create(NewUser, Option<Once>),
    /// Applies the changes (every field, for a replace); with a version, only at that version.
    Update {
        id: i64,
        changes: UserChanges,
        expected_version: Option<i64>,
    },
    /// With a version, only at that version.
    Delete {
        id: i64,
        expected_version: Option<i64>,
    },
}

/// What a write did.
#[derive(Debug)]
pub enum Written {
    /// The user as it now is (created or changed), or as it was (deleted).
    User(Model),
    /// An idempotent create that had happened before: its recorded response.
    Replayed(Recorded),
}

impl Store {
    pub async fn get_user(&self, id: i64) -> Result<Model, AppError> {
        Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Keyset pagination over any filter and sort: up to `limit` users after `after`, and the
    /// cursor of the next page if there is one.
    pub async fn list_users(
        &self,
        query: &ListQuery,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Page<Model>, AppError> {
        // One row more than the page: it only tells that another page exists.
        let rows = page_query(query, after)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        Ok(Page::from_rows(rows, limit, |last| {
            let key = match query.sort.field {
                SortField::Id => SortKey::Id,
                SortField::Name => SortKey::Name(last.name_search.clone()),
                SortField::CreatedAt => SortKey::CreatedAt(last.created_at),
            };
            Cursor::new(key, last.id, query)
        }))
    }

    /// Makes `write` as `actor` (an audit name) and returns what it did once it is committed.
    /// A write that fails (a taken email, a stale version, a missing user) leaves nothing.
    pub async fn write_user(&self, write: UserWrite, actor: String) -> Result<Written, AppError> {
        self.check_file()?;
        if let super::Engine::Sqlite(serving) = &self.engine
            && let Some(writer) = serving.writer()
        {
            let outcome = writer.submit(write, actor).await;
            match &outcome {
                Ok(_) => serving.wrote(),
                Err(AppError::Unavailable(_)) => serving.write_failed(),
                Err(_) => {}
            }
            return outcome;
        }
        let txn = self.db.begin().await?;
        match apply(&txn, write, &actor).await? {
            Ok(written) => {
                txn.commit().await?;
                self.wrote();
                Ok(written)
            }
            Err(failed) => {
                txn.rollback().await?;
                Err(failed)
            }
        }
    }
}

/// One write inside `txn`: its own outcome (a conflict, a 404 or 412 included, which leave
/// nothing of the write behind and `txn` usable on SQLite), or the database error that fails
/// the whole transaction.
pub(super) async fn apply(
    txn: &DatabaseTransaction,
    write: UserWrite,
    actor: &str,
) -> Result<Result<Written, AppError>, DbErr> {
    let written = match write {
        UserWrite::Create(user, Some(once)) => {
            return idempotency::create_once(txn, user, actor, &once).await;
        }
        UserWrite::Create(user, None) => insert(txn, user, actor).await.map(Ok),
        UserWrite::Update {
            id,
            changes,
            expected_version,
        } => {
            let updated = update(txn, id, changes, actor, expected_version).await;
            matched(txn, id, updated).await
        }
        UserWrite::Delete {
            id,
            expected_version,
        } => {
            let deleted = delete(txn, id, expected_version, actor).await;
            matched(txn, id, deleted).await
        }
    };
    match written {
        Ok(outcome) => Ok(outcome.map(Written::User)),
        Err(err) => conflict(&err).map(Err).ok_or(err),
    }
}

fn not_found(id: i64) -> AppError {
    AppError::NotFound {
        resource: "user",
        id,
    }
}

/// The conflict a failed write means, if it failed on the email's unique index: that index,
/// not a check before the write, is the arbiter, so concurrent writers cannot both pass.
pub(super) fn conflict(err: &DbErr) -> Option<AppError> {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => Some(AppError::email_taken()),
        _ => None,
    }
}

/// The query for one page, before its limit: filters, the keyset condition that starts after
/// the cursor, and the order. Every sort is `(key, id)`, matching an index, so a deep page
/// costs what the first one does.
pub fn page_query(query: &ListQuery, after: Option<&Cursor>) -> Select<Entity> {
    let filter = &query.filter;
    let mut select = Entity::find();
    if let Some(role) = &filter.role {
        select = select.filter(Column::Role.eq(role.as_str()));
    }
    if let Some(email_key) = &filter.email_key {
        select = select.filter(Column::EmailKey.eq(email_key.as_str()));
    }
    if let Some(term) = &filter.name_contains {
        // `%` and `_` in a search term are literal, not wildcards.
        let escaped = term
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = LikeExpr::new(format!("%{escaped}%")).escape('\\');
        select = select.filter(Column::NameSearch.like(pattern));
    }
    if let Some(at) = filter.created_after {
        select = select.filter(Column::CreatedAt.gt(at));
    }
    if let Some(at) = filter.created_before {
        select = select.filter(Column::CreatedAt.lt(at));
    }

    let descending = query.sort.descending;
    let order = if descending { Order::Desc } else { Order::Asc };
    let key_column = match query.sort.field {
        SortField::Id => None,
        SortField::Name => Some(Column::NameSearch),
        SortField::CreatedAt => Some(Column::CreatedAt),
    };
    if let Some(cursor) = after {
        let id = Expr::col(Column::Id);
        let after_id = Expr::val(cursor.after_id);
        let past_id = if descending {
            id.lt(after_id)
        } else {
            id.gt(after_id)
        };
        let condition = match (&cursor.key, key_column) {
            (SortKey::Name(name), Some(column)) => {
                past_key(column, Expr::val(name.as_str()), past_id, descending)
            }
            (SortKey::CreatedAt(at), Some(column)) => {
                past_key(column, Expr::val(*at), past_id, descending)
            }
            _ => Condition::all().add(past_id),
        };
        select = select.filter(condition);
    }
    if let Some(column) = key_column {
        select = select.order_by(column, order.clone());
    }
    select.order_by(Column::Id, order)
}

/// `key >= v AND (key > v OR id > last)` (mirrored when descending). Equivalent to
/// `key > v OR (key = v AND id > last)`, but the leading bound on `key` lets the planner seek
/// straight to the page's start in the `(key, id)` index instead of scanning up to it.
fn past_key(column: Column, value: Expr, past_id: Expr, descending: bool) -> Condition {
    let key = Expr::col(column);
    let (from, beyond) = if descending {
        (key.clone().lte(value.clone()), key.lt(value))
    } else {
        (key.clone().gte(value.clone()), key.gt(value))
    };
    Condition::all()
        .add(from)
        .add(Condition::any().add(beyond).add(past_id))
}

/// Inserts a user, and its event; an error is left for the caller to classify.
pub(super) async fn insert(
    db: &impl ConnectionTrait,
    user: NewUser,
    actor: &str,
) -> Result<Model, DbErr> {
    let model = new_row(user, actor, super::now()).insert(db).await?;
    events::append(db, EventKind::Created, &model, actor).await?;
    Ok(model)
}

/// Several users inserted by one statement, in the given order, each with its creator's audit
/// name, and their events by another: the users as stored, in the same order. The statement
/// fails as a whole and leaves nothing of itself (on a duplicate email, say); its error is left
/// for the caller to classify.
pub(super) async fn insert_many(
    db: &impl ConnectionTrait,
    users: Vec<(NewUser, &str)>,
) -> Result<Vec<Model>, DbErr> {
    let now = super::now();
    let expected: Vec<(String, Option<String>, String)> = users
        .iter()
        .map(|(user, actor)| {
            let email = user.email.as_ref().map(|email| email.as_str().to_owned());
            (user.name.as_str().to_owned(), email, (*actor).to_owned())
        })
        .collect();
    let rows = users
        .into_iter()
        .map(|(user, actor)| new_row(user, actor, now));
    let mut inserted = Entity::insert_many(rows).exec_with_returning(db).await?;
    // RETURNING promises no order; ids ascend in the order the rows were given. Each row is
    // then checked against its request, so that no caller is ever sent another's user.
    inserted.sort_by_key(|model| model.id);
    let matches = inserted.len() == expected.len()
        && inserted
            .iter()
            .zip(&expected)
            .all(|(model, (name, email, actor))| {
                &model.name == name
                    && &model.email == email
                    && model.created_by.as_deref() == Some(actor.as_str())
            });
    if !matches {
        return Err(DbErr::Custom(
            "a multi-row insert returned rows that do not match its requests".into(),
        ));
    }
    events::append_created(db, &inserted).await?;
    Ok(inserted)
}

/// The row a new user is stored as.
fn new_row(user: NewUser, actor: &str, now: DateTime<Utc>) -> ActiveModel {
    ActiveModel {
        name_search: Set(user.name.search_key()),
        name: Set(user.name.as_str().to_owned()),
        role: Set(user.role.as_str().to_owned()),
        email_key: Set(user.email.as_ref().map(|e| e.key())),
        email: Set(user.email.map(|e| e.as_str().to_owned())),
        created_at: Set(now),
        updated_at: Set(now),
        created_by: Set(Some(actor.to_owned())),
        updated_by: Set(Some(actor.to_owned())),
        version: Set(1),
        ..Default::default()
    }
}

/// Applies `changes` in one statement that also bumps the version, and appends the event.
/// With `expected_version` the statement matches only that version, so of concurrent writers
/// holding the same ETag exactly one succeeds and the rest get 412: no update is lost. `None`
/// when no row matched.
async fn update(
    db: &impl ConnectionTrait,
    id: i64,
    changes: UserChanges,
    actor: &str,
    expected_version: Option<i64>,
) -> Result<Option<Model>, DbErr> {
    let mut statement = Entity::update_many()
        .col_expr(Column::UpdatedAt, Expr::val(super::now()))
        .col_expr(Column::UpdatedBy, Expr::val(actor))
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .filter(Column::Id.eq(id));
    if let Some(name) = changes.name {
        statement = statement
            .col_expr(Column::NameSearch, Expr::val(name.search_key()))
            .col_expr(Column::Name, Expr::val(name.as_str()));
    }
    if let Some(role) = changes.role {
        statement = statement.col_expr(Column::Role, Expr::val(role.as_str()));
    }
    if let Some(email) = changes.email {
        statement = statement
            .col_expr(Column::EmailKey, Expr::val(email.as_ref().map(|e| e.key())))
            .col_expr(
                Column::Email,
                Expr::val(email.map(|e| e.as_str().to_owned())),
            );
    }
    if let Some(version) = expected_version {
        statement = statement.filter(Column::Version.eq(version));
    }
    let updated = statement.exec_with_returning(db).await?.pop();
    if let Some(model) = &updated {
        events::append(db, EventKind::Updated, model, actor).await?;
    }
    Ok(updated)
}

/// Deletes a user, and appends the event; with `expected_version`, only at that version. The
/// user as it was, `None` when no row matched.
async fn delete(
    db: &impl ConnectionTrait,
    id: i64,
    expected_version: Option<i64>,
    actor: &str,
) -> Result<Option<Model>, DbErr> {
    let mut statement = Entity::delete_many().filter(Column::Id.eq(id));
    if let Some(version) = expected_version {
        statement = statement.filter(Column::Version.eq(version));
    }
    let deleted = statement.exec_with_returning(db).await?.pop();
    if let Some(model) = &deleted {
        events::append(db, EventKind::Deleted, model, actor).await?;
    }
    Ok(deleted)
}

/// A conditional write's row or, when it matched none, why: the user is gone (404) or its
/// version moved on (412). Asked inside the write's transaction, so it sees what the write saw.
async fn matched(
    db: &impl ConnectionTrait,
    id: i64,
    written: Result<Option<Model>, DbErr>,
) -> Result<Result<Model, AppError>, DbErr> {
    if let Some(model) = written? {
        return Ok(Ok(model));
    }
    Ok(Err(match Entity::find_by_id(id).one(db).await? {
        Some(_) => AppError::PreconditionFailed,
        None => not_found(id),
    }))
}
