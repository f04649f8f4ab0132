//! The users endpoints: each parses, checks scope, calls a store function, maps the outcome.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::users::Model;
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    types::{Email, Example, MaybeUndefined},
};
use sea_orm::DbErr;
use serde_json::Value;

use super::{
    API_PREFIX, ApiTags,
    conditional::{etag, expected_version, none_match},
    cursor_param::CursorText,
    encode::{self, Decimal, EncodeJson},
    payload::{BodySchema, JsonBody, JsonText},
    problem::{ApiResult, CreateErrors, DeleteErrors, ListErrors, OneErrors, WriteOneErrors},
};
use crate::{
    auth::Auth,
    domain::{ListQuery, NewUser, Scope, Sort, SortField, UserChanges, UserFilter},
    error::{AppError, FieldError},
    startup::AppState,
    store::{
        self,
        group_commit::Once,
        idempotency,
        read_cache::{ReadCache, Weight, read_through},
        users::{ListedSink, UserRow},
    },
    timestamp::Stamp,
};

/// A user.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct User {
    /// Server-assigned identifier; ignored if sent in a request.
    #[oai(read_only)]
    pub id: i64,
    /// Display name, 1 to 100 characters, stored trimmed.
    pub name: String,
    /// Free-text role such as `Developer`, 1 to 50 characters, stored trimmed.
    pub role: String,
    /// Email address, unique across users regardless of letter case; `null` when unset.
    #[oai(nullable)]
    pub email: Option<Email>,
    /// When the user was created (RFC 3339, UTC).
    #[oai(read_only)]
    pub created_at: DateTime<Utc>,
    /// When the user was last changed (RFC 3339, UTC).
    #[oai(read_only)]
    pub updated_at: DateTime<Utc>,
    /// Who created the user: `api-key:<id>` or `oauth:<subject>`.
    #[oai(read_only, nullable)]
    pub created_by: Option<String>,
    /// Who last changed the user, in the same form.
    #[oai(read_only, nullable)]
    pub updated_by: Option<String>,
}

impl Example for User {
    fn example() -> Self {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:30:00Z")
            .expect("valid literal")
            .to_utc();
        User {
            id: 1,
            name: "Alice".into(),
            role: "Developer".into(),
            email: Some(Email("alice@example.com".into())),
            created_at: at,
            updated_at: at,
            created_by: Some("api-key:1".into()),
            updated_by: Some("oauth:auth0|5f7c8ec7c33c6c004bbafe82".into()),
        }
    }
}

impl From<Model> for User {
    fn from(model: Model) -> Self {
        User {
            id: model.id,
            name: model.name,
            role: model.role,
            email: model.email.map(Email),
            created_at: model.created_at,
            updated_at: model.updated_at,
            created_by: model.created_by,
            updated_by: model.updated_by,
        }
    }
}

impl User {
    /// This user in the form a page's rows are written from, so one function writes both.
    fn row(&self) -> UserRow<'_> {
        UserRow {
            id: self.id,
            name: self.name.as_bytes(),
            role: self.role.as_bytes(),
            email: self.email.as_ref().map(|email| email.as_bytes()),
            created_at: Stamp::At(self.created_at),
            updated_at: Stamp::At(self.updated_at),
            created_by: self.created_by.as_deref().map(str::as_bytes),
            updated_by: self.updated_by.as_deref().map(str::as_bytes),
        }
    }
}

impl EncodeJson for User {
    fn encode(&self, out: &mut Vec<u8>) {
        write_user(out, &self.row());
    }
}

/// A user as [`User`]'s `ToJSON` writes it.
fn write_user(out: &mut Vec<u8>, user: &UserRow<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(Decimal::new(user.id).as_bytes());
    out.extend_from_slice(b",\"name\":");
    encode::text_bytes(out, user.name);
    out.extend_from_slice(b",\"role\":");
    encode::text_bytes(out, user.role);
    out.extend_from_slice(b",\"email\":");
    encode::optional_text_bytes(out, user.email);
    out.extend_from_slice(b",\"created_at\":");
    encode::stamp(out, &user.created_at);
    out.extend_from_slice(b",\"updated_at\":");
    encode::stamp(out, &user.updated_at);
    out.extend_from_slice(b",\"created_by\":");
    encode::optional_text_bytes(out, user.created_by);
    out.extend_from_slice(b",\"updated_by\":");
    encode::optional_text_bytes(out, user.updated_by);
    out.push(b'}');
}

/// The writable fields of a user: the body of `createUser` and `replaceUser`. Members not listed
/// here, read-only ones such as `id` included, are ignored.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct UserInput {
    /// Display name; surrounding whitespace is trimmed and must leave 1 to 100 characters.
    #[oai(validator(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    ))]
    pub name: String,
    /// Role; surrounding whitespace is trimmed and must leave 1 to 50 characters.
    #[oai(validator(
        min_length = 1,
        max_length = 50,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    ))]
    pub role: String,
    /// Optional email address, unique case-insensitively. Omit it or send `null` for none.
    #[oai(nullable, validator(max_length = 254))]
    pub email: Option<Email>,
}

impl Example for UserInput {
    fn example() -> Self {
        UserInput {
            name: "Alice".into(),
            role: "Developer".into(),
            email: Some(Email("alice@example.com".into())),
        }
    }
}

impl BodySchema for UserInput {
    type Parsed = NewUser;
    fn parse(body: &Value) -> Result<NewUser, Vec<FieldError>> {
        NewUser::from_json(body)
    }
}

/// A partial update (JSON merge patch): members left out stay as they are; `"email": null`
/// removes the address. `name` and `role` cannot be null.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct UserPatch {
    /// New display name, 1 to 100 characters after trimming.
    #[oai(
        skip_serializing_if_is_none,
        validator(
            min_length = 1,
            max_length = 100,
            pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
        )
    )]
    pub name: Option<String>,
    /// New role, 1 to 50 characters after trimming.
    #[oai(
        skip_serializing_if_is_none,
        validator(
            min_length = 1,
            max_length = 50,
            pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
        )
    )]
    pub role: Option<String>,
    /// New email address, or `null` to remove it.
    #[oai(nullable, validator(max_length = 254))]
    pub email: MaybeUndefined<Email>,
}

impl Example for UserPatch {
    fn example() -> Self {
        UserPatch {
            name: None,
            role: Some("Tester".into()),
            email: MaybeUndefined::Null,
        }
    }
}

impl BodySchema for UserPatch {
    type Parsed = UserChanges;
    fn parse(body: &Value) -> Result<UserChanges, Vec<FieldError>> {
        UserChanges::from_json(body)
    }
}

/// One page of users.
#[derive(Debug, Clone, Object)]
pub struct UserPage {
    /// The users on this page, at most `limit` of them, in the requested order.
    pub items: Vec<User>,
    /// Pass as `cursor` (with the same filters and sort) to fetch the next page; `null` on the
    /// last page. Also sent as a `Link: <…>; rel="next"` header.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A [`UserPage`]'s JSON body, written as `ToJSON` writes it while the page's rows are read
/// (see `store::users::list`).
pub struct PageBody {
    out: Vec<u8>,
    users: usize,
}

impl PageBody {
    const ITEMS: &[u8] = b"{\"items\":[";

    /// With room for `users` users: a user encodes to about 300 bytes, and a body that had
    /// to grow would be copied each time its buffer doubled.
    pub fn new(users: u64) -> Self {
        let mut out = Vec::with_capacity(64 + 320 * users as usize);
        out.extend_from_slice(Self::ITEMS);
        PageBody { out, users: 0 }
    }

    /// The body; an error if a user's stored text was not UTF-8 (see `UserRow`).
    pub fn finish(mut self, next_cursor: Option<&str>) -> Result<JsonText<UserPage>, AppError> {
        self.out.extend_from_slice(b"],\"next_cursor\":");
        encode::optional_string(&mut self.out, next_cursor);
        self.out.push(b'}');
        let body = String::from_utf8(self.out).map_err(|_| {
            AppError::Database(DbErr::Type(
                "a listed user's stored text is not UTF-8".into(),
            ))
        })?;
        Ok(JsonText::replay(body))
    }
}

impl ListedSink for PageBody {
    fn user(&mut self, user: &UserRow<'_>) {
        if self.users > 0 {
            self.out.push(b',');
        }
        write_user(&mut self.out, user);
        self.users += 1;
    }

    fn restart(&mut self) {
        self.out.truncate(Self::ITEMS.len());
        self.users = 0;
    }
}

/// The order of a listing: a field, descending with a leading `-`. Ties are broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum UserSort {
    #[oai(rename = "id")]
    Id,
    #[oai(rename = "-id")]
    IdDesc,
    #[oai(rename = "name")]
    Name,
    #[oai(rename = "-name")]
    NameDesc,
    #[oai(rename = "created_at")]
    CreatedAt,
    #[oai(rename = "-created_at")]
    CreatedAtDesc,
}

impl From<UserSort> for Sort {
    fn from(sort: UserSort) -> Sort {
        let (field, descending) = match sort {
            UserSort::Id => (SortField::Id, false),
            UserSort::IdDesc => (SortField::Id, true),
            UserSort::Name => (SortField::Name, false),
            UserSort::NameDesc => (SortField::Name, true),
            UserSort::CreatedAt => (SortField::CreatedAt, false),
            UserSort::CreatedAtDesc => (SortField::CreatedAt, true),
        };
        Sort { field, descending }
    }
}

#[derive(ApiResponse)]
pub enum ListUsersResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(
        JsonText<UserPage>,
        /// RFC 8288 link to the next page, when there is one.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

/// A user as GET by id sends it: the body and its ETag.
#[derive(Clone)]
pub struct SentUser {
    body: Bytes,
    /// Shared, not a `String`: a hit clones it under the cache's lock.
    etag: Arc<str>,
}

impl Weight for SentUser {
    fn weight(&self) -> usize {
        size_of::<Self>() + self.body.len() + self.etag.len()
    }
}

/// Users as last sent, while the database is unchanged (see `store::read_cache`): a GET by id
/// answered from here skips the read transaction (its file lock, SQLite's mutex, the row) and
/// the encoding, 20.6 → 13.0 µs of server CPU a request (measured under wrk).
pub type UserCache = ReadCache<i64, SentUser>;

/// User `id` as sent, from the cache if there is one and it holds the user.
async fn user_as_sent(state: &AppState, id: i64) -> Result<SentUser, AppError> {
    read_through(state.user_cache.as_ref(), id, || async {
        let user = store::users::get(&state.reads, id).await?;
        Ok(SentUser {
            etag: etag(&user).into(),
            body: JsonText::<User>::new(&user.into()).into_bytes(),
        })
    })
    .await
}

/// A page as a listing sends it: the body and its `Link` header.
#[derive(Clone)]
pub struct SentPage {
    body: Bytes,
    link: Option<Arc<str>>,
}

impl Weight for SentPage {
    fn weight(&self) -> usize {
        size_of::<Self>() + self.body.len() + self.link.as_deref().map_or(0, str::len)
    }
}

/// Pages as last sent, by their request's query string, while the database is unchanged (see
/// `store::read_cache`). Equal query strings ask for the same page, so the same page is what a
/// listing polled again and again (the first page, most often) gets, with no read at all.
pub type PageCache = ReadCache<String, SentPage>;

/// What a listing asks for, as its query parameters said it.
struct PageAsked {
    limit: u64,
    cursor: Option<CursorText>,
    sort: Option<UserSort>,
    role: Option<String>,
    email: Option<Email>,
    q: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
}

/// The page `asked` names, read from the database, with the link to the next one.
async fn read_page(state: &AppState, asked: PageAsked) -> Result<SentPage, AppError> {
    let filter = UserFilter::new(
        asked.role.clone(),
        asked.email.as_ref().map(|email| email.as_str()),
        asked.q.as_deref(),
        asked.created_after,
        asked.created_before,
    )
    .map_err(AppError::BadRequest)?;
    let query = ListQuery {
        filter,
        sort: asked.sort.map(Sort::from).unwrap_or_default(),
    };
    let after = super::parse_cursor(asked.cursor.as_ref(), &query)?;
    let mut body = PageBody::new(asked.limit);
    let next =
        store::users::list(&state.reads, &query, after.as_ref(), asked.limit, &mut body).await?;
    let next_cursor = next.map(|cursor| cursor.encode());
    let link = next_cursor.as_deref().map(|cursor| {
        next_link(
            &[
                ("limit", Some(asked.limit.to_string())),
                ("sort", asked.sort.map(|_| query.sort.as_str())),
                ("role", asked.role),
                ("email", asked.email.map(|email| email.to_string())),
                ("q", asked.q),
                (
                    "created_after",
                    asked.created_after.map(|at| at.to_rfc3339()),
                ),
                (
                    "created_before",
                    asked.created_before.map(|at| at.to_rfc3339()),
                ),
            ],
            cursor,
        )
    });
    Ok(SentPage {
        body: body.finish(next_cursor.as_deref())?.into_bytes(),
        link: link.map(Into::into),
    })
}

#[derive(ApiResponse)]
pub enum GetUserResponse {
    /// The user.
    #[oai(status = 200)]
    Ok(
        JsonText<User>,
        /// Strong validator of this representation; send it back in `If-None-Match` or `If-Match`.
        #[oai(header = "ETag")]
        String,
    ),
    /// The representation matching `If-None-Match` is still current.
    #[oai(status = 304)]
    NotModified(
        /// The current ETag.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum UserResponse {
    /// The user as it now is.
    #[oai(status = 200)]
    Ok(
        JsonText<User>,
        /// The new ETag.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum CreateUserResponse {
    /// The user was created (or, for a retried `Idempotency-Key`, this is the original response).
    #[oai(status = 201)]
    Created(
        JsonText<User>,
        /// The URL of the new user.
        #[oai(header = "Location")]
        String,
        /// The new user's ETag.
        #[oai(header = "ETag")]
        String,
        /// `true` when this response replays an earlier request with the same `Idempotency-Key`.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

#[derive(ApiResponse)]
pub enum DeleteUserResponse {
    /// The user was deleted.
    #[oai(status = 204)]
    Deleted,
}

/// The users resource.
pub struct UsersApi;

fn user_response(model: Model) -> UserResponse {
    let tag = etag(&model);
    UserResponse::Ok(JsonText::new(&model.into()), tag)
}

/// The URL of the next page: this request's filters and sort, with the new cursor.
fn next_link(params: &[(&str, Option<String>)], cursor: &str) -> String {
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .filter_map(|(name, value)| Some((*name, value.as_deref()?)))
        .chain([("cursor", cursor)])
        .collect();
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    format!("<{API_PREFIX}/users?{query}>; rel=\"next\"")
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Users")]
impl UsersApi {
    /// List users
    ///
    /// Returns users `limit` at a time, filtered and sorted as asked (by default in ascending id
    /// order). To walk the whole result, pass each page's `next_cursor` as `cursor`, with the same
    /// filters and sort, until it is `null`, or follow the `Link: rel="next"` header. Pages are
    /// keyset-based: users created or deleted meanwhile never cause duplicates or skips, and a
    /// deep page costs what the first does. Needs `users:read`.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/users", method = "get", operation_id = "listUsers")]
    async fn list_users(
        &self,
        request: &Request,
        auth: Auth,
        state: Data<&AppState>,
        /// How many users to return, 1 to 200.
        #[oai(
            default = "super::default_page_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
        /// The `next_cursor` of the previous page; omit for the first page.
        cursor: Query<Option<CursorText>>,
        /// Order: `id`, `name` or `created_at`, with a leading `-` for descending. Default `id`.
        sort: Query<Option<UserSort>>,
        /// Only users with exactly this role.
        #[oai(validator(min_length = 1, max_length = 50))]
        role: Query<Option<String>>,
        /// Only the user with this email address (compared case-insensitively).
        #[oai(validator(max_length = 254))]
        email: Query<Option<Email>>,
        /// Only users whose name contains this text, case-insensitively.
        #[oai(validator(min_length = 1, max_length = 100))]
        q: Query<Option<String>>,
        /// Only users created after this instant (RFC 3339).
        created_after: Query<Option<DateTime<Utc>>>,
        /// Only users created before this instant (RFC 3339).
        created_before: Query<Option<DateTime<Utc>>>,
    ) -> ApiResult<ListUsersResponse, ListErrors> {
        auth.0.require(Scope::UsersRead)?;
        // The parameters are read from the query string alone: equal strings, equal pages.
        let key = request.uri().query().unwrap_or_default().to_owned();
        let asked = PageAsked {
            limit: limit.0,
            cursor: cursor.0,
            sort: sort.0,
            role: role.0,
            email: email.0,
            q: q.0,
            created_after: created_after.0,
            created_before: created_before.0,
        };
        let page =
            read_through(state.page_cache.as_ref(), key, || read_page(&state, asked)).await?;
        Ok(ListUsersResponse::Ok(
            JsonText::replay(page.body),
            page.link.as_deref().map(String::from),
        ))
    }

    /// Create a user
    ///
    /// The server assigns `id` and the timestamps; the response's `Location` header points at
    /// the new user. Send an `Idempotency-Key` to make retries safe: a retry with the same key
    /// and body returns the original response instead of creating another user. Needs `users:write`.
    #[oai(path = "/users", method = "post", operation_id = "createUser")]
    async fn create_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// A unique value per logical request (a UUID, say), kept for `--idempotency-ttl-secs`
        /// (24 h by default). Reusing it with a different body is a 422.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<CreateUserResponse, CreateErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let actor = auth.0.subject.audit_name();
        let Some(key) = idempotency_key.0 else {
            let model = state.writes.create(body.value, actor).await?;
            return Ok(created(model, None));
        };
        let once = Once {
            key,
            request_hash: body.fingerprint(),
            ttl: state.policy.idempotency_ttl,
            record: |model| idempotency::Recorded {
                status: 201,
                body: JsonText::new(&User::from(model.clone()))
                    .as_str()
                    .to_owned(),
                location: Some(user_location(model.id)),
                etag: Some(etag(model)),
            },
        };
        let outcome = state.writes.create_once(body.value, actor, once).await?;
        match outcome {
            idempotency::Outcome::Fresh(model) => Ok(created(model, Some(false))),
            idempotency::Outcome::Replayed(recorded) => Ok(CreateUserResponse::Created(
                JsonText::replay(recorded.body),
                recorded.location.unwrap_or_default(),
                recorded.etag.unwrap_or_default(),
                Some(true),
            )),
        }
    }

    /// Get a user
    ///
    /// Sends a strong `ETag`; with `If-None-Match` carrying it, an unchanged user is a bodiless
    /// 304. Needs `users:read`.
    #[oai(path = "/users/:id", method = "get", operation_id = "getUser")]
    async fn get_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        /// ETags the client already holds; if one is current the answer is 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> ApiResult<GetUserResponse, OneErrors> {
        auth.0.require(Scope::UsersRead)?;
        let user = user_as_sent(&state, id.0).await?;
        let tag = String::from(&*user.etag);
        if !none_match(if_none_match.0.as_deref(), &tag) {
            return Ok(GetUserResponse::NotModified(tag));
        }
        Ok(GetUserResponse::Ok(JsonText::replay(user.body), tag))
    }

    /// Replace a user
    ///
    /// Sets every writable field: an omitted `email` removes the address. With `If-Match`, the
    /// write happens only if the user is unchanged since that ETag (else 412). Needs `users:write`.
    #[oai(path = "/users/:id", method = "put", operation_id = "replaceUser")]
    async fn replace_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the change is based on (or `*`); a stale one gives 412 and changes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let expected =
            expected_version(if_match.0.as_deref(), id.0, state.policy.require_if_match)?;
        let actor = auth.0.subject.audit_name();
        let changes = body.value.into();
        let user = state.writes.update(id.0, changes, actor, expected).await?;
        Ok(user_response(user))
    }

    /// Update a user
    ///
    /// Changes only the members present in the body (JSON merge patch semantics; both
    /// `application/json` and `application/merge-patch+json` are accepted). With `If-Match`, the
    /// write happens only if the user is unchanged since that ETag (else 412). Needs `users:write`.
    #[oai(path = "/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the change is based on (or `*`); a stale one gives 412 and changes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UserPatch>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let expected =
            expected_version(if_match.0.as_deref(), id.0, state.policy.require_if_match)?;
        let actor = auth.0.subject.audit_name();
        let user = state
            .writes
            .update(id.0, body.value, actor, expected)
            .await?;
        Ok(user_response(user))
    }

    /// Delete a user
    ///
    /// With `If-Match`, deletes only if the user is unchanged since that ETag (else 412).
    /// Needs `users:write`.
    #[oai(path = "/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the deletion is based on (or `*`); a stale one gives 412 and deletes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> ApiResult<DeleteUserResponse, DeleteErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let expected =
            expected_version(if_match.0.as_deref(), id.0, state.policy.require_if_match)?;
        state.writes.delete(id.0, expected).await?;
        Ok(DeleteUserResponse::Deleted)
    }
}

fn user_location(id: i64) -> String {
    format!("{API_PREFIX}/users/{id}")
}

fn created(model: Model, replayed: Option<bool>) -> CreateUserResponse {
    let location = user_location(model.id);
    let tag = etag(&model);
    CreateUserResponse::Created(JsonText::new(&model.into()), location, tag, replayed)
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::{Example, ToJSON};

    use super::*;

    fn encoded(value: &impl EncodeJson) -> String {
        let mut out = Vec::new();
        value.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// `JsonText` sends users as `EncodeJson` writes them; clients and the spec know `ToJSON`'s
    /// bytes.
    #[test]
    fn users_are_encoded_exactly_as_to_json_encodes_them() {
        let full = User::example();
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000006+00:00")
            .unwrap()
            .to_utc();
        let sparse = User {
            id: i64::MAX,
            name: "Zoë \"Q\" \u{1F600}\n".into(),
            role: "back\\slash \u{7f}\u{2028}".into(),
            email: None,
            created_at: at,
            updated_at: Utc::now(),
            created_by: None,
            updated_by: None,
        };
        // Past year 9999 the timestamp is written by chrono.
        let far = chrono::NaiveDate::from_ymd_opt(10_000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let odd = User {
            id: -1,
            created_at: far,
            created_by: Some("\u{0}\t\u{1f}".into()),
            ..full.clone()
        };
        for user in [&full, &sparse, &odd] {
            assert_eq!(encoded(user), user.to_json_string());
        }
        // A page's rows carry their timestamps as stored, when stored as `to_rfc3339` writes.
        let stored = [
            "2026-11-24T09:30:00+00:00",
            "2026-11-24T09:30:00.100+00:00",
            "2026-11-24T09:30:00.000001+00:00",
            "2026-11-24T09:30:00.123456789+00:00",
        ];
        let mut written = Vec::new();
        for text in stored {
            let at = DateTime::parse_from_rfc3339(text).unwrap().to_utc();
            let user = User {
                created_at: at,
                updated_at: at,
                ..full.clone()
            };
            let mut row = user.row();
            assert!(crate::timestamp::is_written(text.as_bytes()));
            let stamp = Stamp::Written(text.as_bytes());
            (row.created_at, row.updated_at) = (stamp, stamp);
            let mut out = Vec::new();
            write_user(&mut out, &row);
            assert_eq!(String::from_utf8(out).unwrap(), user.to_json_string());
            written.push(user);
        }
        for page in [
            UserPage {
                items: vec![full.clone(), sparse.clone(), odd.clone()],
                next_cursor: Some("abc_-1".into()),
            },
            UserPage {
                items: vec![full.clone()],
                next_cursor: None,
            },
            UserPage {
                items: Vec::new(),
                next_cursor: None,
            },
            UserPage {
                items: written,
                next_cursor: None,
            },
        ] {
            // Written as the sink of a listing that started over once.
            let mut body = PageBody::new(1);
            body.user(&odd.row());
            body.restart();
            for user in &page.items {
                body.user(&user.row());
            }
            let body = body.finish(page.next_cursor.as_deref()).unwrap();
            assert_eq!(body.as_str(), page.to_json_string());
        }
    }
}
