use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, OnceLock, PoisonError},
};

use chrono::{DateTime, Utc};
use entity::users::{ActiveModel, Column, Entity, Model};
use rusqlite::types::{FromSqlError, ValueRef};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, Order,
    QueryFilter, QueryOrder, QuerySelect, Select, SelectModel, Selector, SqlErr, Statement,
    sea_query::{Expr, ExprTrait, LikeExpr, Value},
};

use super::{
    Reads,
    inline_reads::{stamp, timestamp},
};
use crate::{
    domain::{Cursor, ListQuery, NewUser, SortField, SortKey, UserChanges, UserName},
    error::AppError,
    timestamp::Stamp,
};

pub(super) fn not_found(id: i64) -> AppError {
    AppError::NotFound {
        resource: "user",
        id,
    }
}

/// The unique index on the lowercased email is the arbiter of duplicates: checking first and
/// inserting second would race between concurrent requests.
pub(super) fn write_error(err: DbErr) -> AppError {
    conflict(&err).unwrap_or_else(|| AppError::from(err))
}

/// The conflict a failed write means, if it failed on the email's unique index.
pub(super) fn conflict(err: &DbErr) -> Option<AppError> {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => Some(AppError::Conflict(
            "another user already has this email address".into(),
        )),
        _ => None,
    }
}

/// `%` and `_` in a search term are literal, not wildcards.
fn like_contains(term: &str) -> LikeExpr {
    LikeExpr::new(like_pattern(term)).escape('\\')
}

/// The pattern of [`like_contains`]: the term anywhere, its wildcards escaped.
fn like_pattern(term: &str) -> String {
    let escaped = term
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The query for one page, before its limit: filters, the keyset condition that starts after
/// the cursor, and the order. Every sort is `(key, id)`, matching an index, so a deep page
/// costs what the first one does.
fn page_query(query: &ListQuery, after: Option<&Cursor>) -> Select<Entity> {
    let filter = &query.filter;
    let mut select = Entity::find();
    if let Some(role) = &filter.role {
        select = select.filter(Column::Role.eq(role.as_str()));
    }
    if let Some(email_key) = &filter.email_key {
        select = select.filter(Column::EmailKey.eq(email_key.as_str()));
    }
    if let Some(term) = &filter.name_contains {
        select = select.filter(Column::NameSearch.like(like_contains(term)));
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

/// A user as a listing shows it: the columns a page sends, and `name_search` only when the
/// listing is sorted by name (the next page's cursor starts from it). A page read all eleven
/// columns before, into `Model`s: the three no page shows (`email_key`, `version` and, for
/// other sorts, `name_search`) cost 13% of a 50-user page's instructions (494k against 428k,
/// callgrind).
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct ListedUser {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    /// Selected only when sorting by name; `None` otherwise.
    pub name_search: Option<String>,
}

/// The columns of [`ListedUser`], in the order [`listed_from_row`] reads them.
const LISTED: [Column; 8] = [
    Column::Id,
    Column::Name,
    Column::Role,
    Column::Email,
    Column::CreatedAt,
    Column::UpdatedAt,
    Column::CreatedBy,
    Column::UpdatedBy,
];

/// One page's query, limit and columns included: [`page_query`] reading [`ListedUser`]s.
/// Public so the query plan can be checked, and the inline and pool paths compared.
pub fn page_select(
    query: &ListQuery,
    after: Option<&Cursor>,
    limit: u64,
) -> Selector<SelectModel<ListedUser>> {
    let mut select = page_query(query, after)
        .limit(limit)
        .select_only()
        .columns(LISTED);
    if query.sort.field == SortField::Name {
        select = select.column(Column::NameSearch);
    }
    select.into_model()
}

/// [`page_select`]'s statement for `backend`. Its SQL depends only on the query's shape (which
/// filters are given, the sort, the kind of cursor), so it is built once per shape and kept,
/// and only the values are taken from this query ([`page_values`], in the order the SQL binds
/// them; a test checks both against [`page_select`] for every shape). Built with sea-query on
/// every request, the statement cost 5.5% of a 50-user page's instructions (425k against
/// 402k, callgrind).
pub fn page_statement(
    backend: DbBackend,
    query: &ListQuery,
    after: Option<&Cursor>,
    limit: u64,
) -> Statement {
    static BUILT: LazyLock<Mutex<HashMap<(u32, u32), String>>> = LazyLock::new(Mutex::default);
    let backend_index = match backend {
        DbBackend::Sqlite => 0,
        DbBackend::Postgres => 1,
        _ => 2,
    };
    let key = (backend_index, page_shape(query, after));
    let sql = {
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        built
            .entry(key)
            .or_insert_with(|| page_select(query, after, limit).into_statement(backend).sql)
            .clone()
    };
    Statement::from_sql_and_values(backend, sql, page_values(query, after, limit))
}

/// A number for everything a page query's SQL depends on.
fn page_shape(query: &ListQuery, after: Option<&Cursor>) -> u32 {
    let filter = &query.filter;
    let given = [
        filter.role.is_some(),
        filter.email_key.is_some(),
        filter.name_contains.is_some(),
        filter.created_after.is_some(),
        filter.created_before.is_some(),
        query.sort.descending,
    ];
    let flags = given
        .into_iter()
        .fold(0, |flags, bit| flags << 1 | u32::from(bit));
    let field = match query.sort.field {
        SortField::Id => 0,
        SortField::Name => 1,
        SortField::CreatedAt => 2,
    };
    let cursor = match after.map(|cursor| &cursor.key) {
        None => 0,
        Some(SortKey::Id) => 1,
        Some(SortKey::Name(_)) => 2,
        Some(SortKey::CreatedAt(_)) => 3,
    };
    (flags * 3 + field) * 4 + cursor
}

/// The values [`page_select`] binds, in its order: the filters, the cursor's bounds, the limit.
fn page_values(query: &ListQuery, after: Option<&Cursor>, limit: u64) -> Vec<Value> {
    let filter = &query.filter;
    let mut values: Vec<Value> = Vec::with_capacity(8);
    values.extend(filter.role.as_deref().map(Value::from));
    values.extend(filter.email_key.as_deref().map(Value::from));
    if let Some(term) = &filter.name_contains {
        values.push(like_pattern(term).into());
    }
    values.extend(filter.created_after.map(Value::from));
    values.extend(filter.created_before.map(Value::from));
    if let Some(cursor) = after {
        // As in `page_query`: a key bound only when the sort has a key column.
        let key = match (&cursor.key, query.sort.field) {
            (_, SortField::Id) | (SortKey::Id, _) => None,
            (SortKey::Name(name), _) => Some(Value::from(name.as_str())),
            (SortKey::CreatedAt(at), _) => Some(Value::from(*at)),
        };
        if let Some(key) = key {
            values.extend([key.clone(), key]);
        }
        values.push(cursor.after_id.into());
    }
    values.push(limit.into());
    values
}

/// A user as a page shows it, borrowed from the row it was read from: a page is written out
/// as its rows are read, without a `String` per field, and its timestamps are sent as stored
/// instead of parsed and written again. Read into a [`ListedUser`] and then written, a 50-user
/// page took 401,700 instructions; written from its rows, 319,400 (callgrind).
///
/// Text is as SQLite hands it over, bytes that should be UTF-8: the body they are written
/// into is checked as UTF-8 once when complete, not field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRow<'a> {
    pub id: i64,
    pub name: &'a [u8],
    pub role: &'a [u8],
    pub email: Option<&'a [u8]>,
    pub created_at: Stamp<'a>,
    pub updated_at: Stamp<'a>,
    pub created_by: Option<&'a [u8]>,
    pub updated_by: Option<&'a [u8]>,
}

impl ListedUser {
    /// This user as a page shows it, and its `name_search` (see [`ListedUser`]).
    pub fn row(&self) -> (UserRow<'_>, Option<&str>) {
        let user = UserRow {
            id: self.id,
            name: self.name.as_bytes(),
            role: self.role.as_bytes(),
            email: self.email.as_deref().map(str::as_bytes),
            created_at: Stamp::At(self.created_at),
            updated_at: Stamp::At(self.updated_at),
            created_by: self.created_by.as_deref().map(str::as_bytes),
            updated_by: self.updated_by.as_deref().map(str::as_bytes),
        };
        (user, self.name_search.as_deref())
    }
}

/// What [`list`] hands a page's users to, in order, as it reads them.
pub trait ListedSink {
    fn user(&mut self, user: &UserRow<'_>);
    /// Forgets the users handed over so far: the read starts over (on the pool).
    fn restart(&mut self);
}

/// Keyset pagination over any filter and sort: hands the page's users to `sink` and returns
/// the cursor of the next page, if there is one.
pub async fn list(
    reads: &Reads,
    query: &ListQuery,
    after: Option<&Cursor>,
    limit: u64,
    sink: &mut impl ListedSink,
) -> Result<Option<Cursor>, AppError> {
    // One row more than the page: it only tells that another page exists, which spares a COUNT.
    let statement = page_statement(reads.backend(), query, after, limit + 1);
    let mut walk = Walk {
        sink,
        query,
        limit,
        seen: 0,
        last: None,
        more: false,
    };
    if let Some(inline) = reads.inline() {
        if inline.each(&statement, |row| {
            walk.row(listed_from_row(row)?);
            Ok(())
        }) {
            return Ok(walk.next());
        }
        walk.restart();
    }
    let rows: Vec<ListedUser> = reads.pooled(statement).await?;
    for user in &rows {
        walk.row(user.row());
    }
    Ok(walk.next())
}

/// A page being read (see [`list`]).
struct Walk<'a, S> {
    sink: &'a mut S,
    query: &'a ListQuery,
    limit: u64,
    /// Rows read so far.
    seen: u64,
    /// The sort key and id of the page's last user, once it has been read.
    last: Option<(SortKey, i64)>,
    /// A row beyond the page was read.
    more: bool,
}

impl<S: ListedSink> Walk<'_, S> {
    fn row(&mut self, (user, name_search): (UserRow<'_>, Option<&str>)) {
        self.seen += 1;
        if self.seen > self.limit {
            self.more = true;
            return;
        }
        self.sink.user(&user);
        if self.seen == self.limit {
            let key = match self.query.sort.field {
                SortField::Id => SortKey::Id,
                SortField::Name => SortKey::Name(
                    name_search
                        .expect("page_select selects name_search for a name sort")
                        .to_owned(),
                ),
                SortField::CreatedAt => SortKey::CreatedAt(user.created_at.at()),
            };
            self.last = Some((key, user.id));
        }
    }

    fn restart(&mut self) {
        self.sink.restart();
        (self.seen, self.last, self.more) = (0, None, false);
    }

    fn next(self) -> Option<Cursor> {
        let (key, id) = self.last.filter(|_| self.more)?;
        Some(Cursor::new(key, id, self.query))
    }
}

pub async fn get(reads: &Reads, id: i64) -> Result<Model, AppError> {
    static BY_ID: OnceLock<String> = OnceLock::new();
    reads
        .by_id::<Entity>(&BY_ID, id, from_row)
        .await?
        .ok_or_else(|| not_found(id))
}

/// A user from a row read inline (see `inline_reads`); sea-orm reads the pool's rows.
/// sea-orm selects the columns in the entity's order, so each is read by its position (by
/// name, finding the columns cost more than reading them).
pub fn from_row(row: &rusqlite::Row) -> rusqlite::Result<Model> {
    let at = |column: Column| column as usize;
    Ok(Model {
        id: row.get(at(Column::Id))?,
        name: row.get(at(Column::Name))?,
        role: row.get(at(Column::Role))?,
        email: row.get(at(Column::Email))?,
        email_key: row.get(at(Column::EmailKey))?,
        created_at: timestamp(row, at(Column::CreatedAt))?,
        updated_at: timestamp(row, at(Column::UpdatedAt))?,
        created_by: row.get(at(Column::CreatedBy))?,
        updated_by: row.get(at(Column::UpdatedBy))?,
        version: row.get(at(Column::Version))?,
        name_search: row.get(at(Column::NameSearch))?,
    })
}

/// A page's user from a row read inline (see `inline_reads`): [`LISTED`]'s columns by
/// position, then `name_search` if it was selected.
pub fn listed_from_row<'r>(
    row: &'r rusqlite::Row<'_>,
) -> rusqlite::Result<(UserRow<'r>, Option<&'r str>)> {
    // Text only, as sqlx reads a `String`: a BLOB or a number is refused (and the pool's read
    // reports it).
    let optional_text = |column| match row.get_ref(column)? {
        ValueRef::Text(bytes) => Ok(Some(bytes)),
        ValueRef::Null => Ok(None),
        _ => Err(rusqlite::Error::from(FromSqlError::InvalidType)),
    };
    let text = |column| {
        optional_text(column)?.ok_or_else(|| rusqlite::Error::from(FromSqlError::InvalidType))
    };
    let user = UserRow {
        id: row.get(0)?,
        name: text(1)?,
        role: text(2)?,
        email: optional_text(3)?,
        created_at: stamp(row, 4)?,
        updated_at: stamp(row, 5)?,
        created_by: optional_text(6)?,
        updated_by: optional_text(7)?,
    };
    // The next page's cursor holds it, as text: checked here.
    let name_search = if row.as_ref().column_count() > LISTED.len() {
        Some(row.get_ref(LISTED.len())?.as_str()?)
    } else {
        None
    };
    Ok((user, name_search))
}

/// Inserts a user. `actor` is the audit name of the principal doing the write.
pub async fn create(
    db: &impl ConnectionTrait,
    user: NewUser,
    actor: &str,
) -> Result<Model, AppError> {
    insert(db, user, actor).await.map_err(write_error)
}

/// The INSERT of [`create`], its error left for the caller to classify.
pub(super) async fn insert(
    db: &impl ConnectionTrait,
    user: NewUser,
    actor: &str,
) -> Result<Model, DbErr> {
    new_row(user, actor, super::now()).insert(db).await
}

/// Several users inserted by one statement, in the given order, each with its creator's audit
/// name: the users as stored, in the same order. The statement fails as a whole, leaving
/// nothing of itself (a duplicate email among them or with a stored user included); the error
/// is left for the caller to classify.
pub(super) async fn insert_many(
    db: &impl ConnectionTrait,
    users: &[(&NewUser, &str)],
) -> Result<Vec<Model>, DbErr> {
    let now = super::now();
    let rows = users
        .iter()
        .map(|&(user, actor)| new_row(user.clone(), actor, now));
    let mut inserted = Entity::insert_many(rows).exec_with_returning(db).await?;
    // RETURNING promises no order; the ids ascend in the order the rows were given. Each row
    // is then checked against its request, so no caller is ever sent another's user.
    inserted.sort_by_key(|model| model.id);
    let matches = inserted.len() == users.len()
        && inserted.iter().zip(users).all(|(model, (user, actor))| {
            model.name == user.name.as_str()
                && model.email.as_deref() == user.email.as_ref().map(|e| e.as_str())
                && model.created_by.as_deref() == Some(*actor)
        });
    if !matches {
        return Err(DbErr::Custom(
            "a multi-row insert returned rows that do not match its requests".into(),
        ));
    }
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

/// Applies `changes` in one statement that also bumps the version. With `expected_version`
/// the statement matches only that version, so of concurrent writers holding the same ETag
/// exactly one succeeds and the rest get 412: no update is lost.
pub async fn update(
    db: &impl ConnectionTrait,
    id: i64,
    changes: UserChanges,
    actor: &str,
    expected_version: Option<i64>,
) -> Result<Model, AppError> {
    let updated = apply_update(db, id, changes, actor, expected_version).await;
    matched(db, id, updated).await.map_err(write_error)?
}

/// The UPDATE of [`update`]: `None` when no row matched, its error left for the caller to
/// classify.
pub(super) async fn apply_update(
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
    Ok(statement.exec_with_returning(db).await?.pop())
}

/// One update of [`update_many`].
pub(super) struct Update<'a> {
    pub id: i64,
    pub changes: &'a UserChanges,
    pub actor: &'a str,
    pub expected_version: Option<i64>,
}

/// An update as [`UPDATE_MANY`] reads it from its JSON parameter.
#[derive(serde::Serialize)]
struct UpdateRow<'a> {
    id: i64,
    version: Option<i64>,
    name: Option<&'a str>,
    name_search: Option<String>,
    role: Option<&'a str>,
    set_email: bool,
    email: Option<&'a str>,
    email_key: Option<String>,
    actor: &'a str,
}

/// Several updates in one SQLite statement, each as `apply_update` would write it alone; the
/// changes come as one JSON array, so that one prepared statement serves any number of them.
/// Absent name and role keep the stored ones; `set_email` says whether the email changes,
/// since its new value may be null. Public so that its query plan can be checked.
pub const UPDATE_MANY: &str = "UPDATE users SET \
     name = coalesce(c.name, users.name), \
     name_search = coalesce(c.name_search, users.name_search), \
     role = coalesce(c.role, users.role), \
     email = CASE WHEN c.set_email THEN c.email ELSE users.email END, \
     email_key = CASE WHEN c.set_email THEN c.email_key ELSE users.email_key END, \
     updated_at = ?, updated_by = c.actor, version = users.version + 1 \
     FROM (SELECT value ->> 'id' AS id, value ->> 'version' AS version, \
     value ->> 'name' AS name, value ->> 'name_search' AS name_search, \
     value ->> 'role' AS role, value ->> 'set_email' AS set_email, \
     value ->> 'email' AS email, value ->> 'email_key' AS email_key, \
     value ->> 'actor' AS actor FROM json_each(?)) AS c \
     WHERE users.id = c.id AND (c.version IS NULL OR users.version = c.version) \
     RETURNING id, name, role, email, email_key, created_at, updated_at, created_by, \
     updated_by, version, name_search";

/// The rows `updates` changed (SQLite only), in no particular order: an update whose user is
/// gone or whose expected version moved on returns none. The caller keeps the ids distinct, and
/// lets at most one of them change an email: SQLite checks the email's unique index row by row
/// in an order of its own, so two email changes in one statement could pass (one freeing the
/// address the other takes) where, one after the other, the first would have failed. The
/// statement fails as a whole and leaves nothing of itself (on a duplicate email, say); the
/// error is left for the caller to classify.
pub(super) async fn update_many(
    db: &impl ConnectionTrait,
    updates: &[Update<'_>],
) -> Result<Vec<Model>, DbErr> {
    let rows: Vec<UpdateRow> = updates
        .iter()
        .map(|update| {
            let changes = update.changes;
            let email = changes.email.as_ref();
            UpdateRow {
                id: update.id,
                version: update.expected_version,
                name: changes.name.as_ref().map(|name| name.as_str()),
                name_search: changes.name.as_ref().map(UserName::search_key),
                role: changes.role.as_ref().map(|role| role.as_str()),
                set_email: email.is_some(),
                email: email.and_then(|email| email.as_ref().map(|email| email.as_str())),
                email_key: email.and_then(|email| email.as_ref().map(|email| email.key())),
                actor: update.actor,
            }
        })
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|err| DbErr::Custom(err.to_string()))?;
    let statement = Statement::from_sql_and_values(
        DbBackend::Sqlite,
        UPDATE_MANY,
        [Value::from(super::now()), Value::from(rows)],
    );
    let updated = Model::find_by_statement(statement).all(db).await?;
    // Each row must be one of the updates', at most once, written for its caller: no caller
    // is ever sent another's user.
    let mut seen = Vec::with_capacity(updated.len());
    for model in &updated {
        let ours = updates.iter().any(|update| {
            update.id == model.id && model.updated_by.as_deref() == Some(update.actor)
        });
        if !ours || seen.contains(&model.id) {
            return Err(DbErr::Custom(
                "a multi-row update returned rows that do not match its requests".into(),
            ));
        }
        seen.push(model.id);
    }
    Ok(updated)
}

/// A conditional write's row or, when it matched none, why: the user is gone (404) or its
/// version moved on (412). Asked on the connection (or transaction) that wrote, so it sees what
/// the write saw. The write's own error is left for the caller to classify.
pub(super) async fn matched(
    db: &impl ConnectionTrait,
    id: i64,
    written: Result<Option<Model>, DbErr>,
) -> Result<Result<Model, AppError>, DbErr> {
    if let Some(model) = written? {
        return Ok(Ok(model));
    }
    Ok(Err(match Entity::find_by_id(id).one(db).await {
        Ok(Some(_)) => AppError::PreconditionFailed,
        Ok(None) => not_found(id),
        Err(err) => err.into(),
    }))
}

/// Deletes a user; with `expected_version`, only at that version (else 412).
pub async fn delete(
    db: &impl ConnectionTrait,
    id: i64,
    expected_version: Option<i64>,
) -> Result<(), AppError> {
    let deleted = apply_delete(db, id, expected_version).await;
    matched(db, id, deleted).await?.map(drop)
}

/// The DELETE of [`delete`]: the user as it was, `None` when no row matched.
pub(super) async fn apply_delete(
    db: &impl ConnectionTrait,
    id: i64,
    expected_version: Option<i64>,
) -> Result<Option<Model>, DbErr> {
    let mut statement = Entity::delete_many().filter(Column::Id.eq(id));
    if let Some(version) = expected_version {
        statement = statement.filter(Column::Version.eq(version));
    }
    Ok(statement.exec_with_returning(db).await?.pop())
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::{Sort, UserFilter};

    /// For every shape of page query on each backend, and for two sets of values per shape
    /// (the first builds the SQL and keeps it, the second reuses it): the kept statement is
    /// what sea-query builds for the query.
    #[test]
    fn kept_page_statements_equal_what_sea_query_builds() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:30:00.123456+00:00")
            .unwrap()
            .to_utc();
        let mut shapes = 0;
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            for flags in 0..32u32 {
                for sort in ["id", "-id", "name", "-name", "created_at", "-created_at"] {
                    for cursor in 0..4 {
                        for round in 0..2 {
                            let bit = |n: u32| flags & (1 << n) != 0;
                            let text = ["Dev", "a_%\\b"][round];
                            let query = ListQuery {
                                filter: UserFilter {
                                    role: bit(0).then(|| text.to_owned()),
                                    email_key: bit(1).then(|| format!("{round}@example.org")),
                                    name_contains: bit(2).then(|| text.to_lowercase()),
                                    created_after: bit(3).then_some(at),
                                    created_before: bit(4)
                                        .then(|| at + Duration::days(round as i64 + 1)),
                                },
                                sort: Sort::parse(sort).unwrap(),
                            };
                            let key = match cursor {
                                1 => Some(SortKey::Id),
                                2 => Some(SortKey::Name(text.to_lowercase())),
                                3 => Some(SortKey::CreatedAt(at + Duration::hours(round as i64))),
                                _ => None,
                            };
                            let after = key.map(|key| Cursor::new(key, 40 + round as i64, &query));
                            let limit = [51, 201][round];
                            let kept = page_statement(backend, &query, after.as_ref(), limit);
                            let built =
                                page_select(&query, after.as_ref(), limit).into_statement(backend);
                            let shape = format!(
                                "{backend:?} flags={flags} sort={sort} cursor={cursor} round={round}"
                            );
                            assert_eq!(kept.sql, built.sql, "{shape}");
                            assert_eq!(kept.values, built.values, "{shape}");
                        }
                        shapes += 1;
                    }
                }
            }
        }
        assert_eq!(shapes, 2 * 32 * 6 * 4);
    }
}
