//! The users endpoints: each parses, calls one service function, maps the outcome.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::users::Model;
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    types::{Email, Example, MaybeUndefined, ToJSON},
};
use serde_json::Value;

use super::{
    API_PREFIX, ApiTags, State,
    conditional::{self, etag, none_match},
    params::CursorText,
    payload::{BodySchema, JsonBody, JsonBytes},
    problem::{ApiResult, CreateErrors, DeleteErrors, ListErrors, OneErrors, WriteOneErrors},
    security::Auth,
};
use crate::{
    domain::{FieldError, NewUser, Sort, SortField, UserChanges},
    service::{Created, Idempotent, ListRequest, cache::Weight},
    store::{Page, Recorded},
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

/// A user as GET by id sends it, kept by the user cache: the body and its ETag.
#[derive(Clone)]
pub struct SentUser {
    body: Bytes,
    etag: Arc<str>,
}

impl From<Model> for SentUser {
    fn from(model: Model) -> Self {
        SentUser {
            etag: etag(&model).into(),
            body: JsonBytes::text(&User::from(model)).into(),
        }
    }
}

impl Weight for SentUser {
    fn weight(&self) -> usize {
        size_of::<Self>() + self.body.len() + self.etag.len()
    }
}

/// A page as a listing sends it, kept by the page cache: the body and its `Link` header.
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

#[derive(ApiResponse)]
pub enum ListUsersResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(
        JsonBytes<UserPage>,
        /// RFC 8288 link to the next page, when there is one.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum GetUserResponse {
    /// The user.
    #[oai(status = 200)]
    Ok(
        JsonBytes<User>,
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
        JsonBytes<User>,
        /// The new ETag.
        #[oai(header = "ETag")]
        String,
    ),
}

impl From<Model> for UserResponse {
    fn from(model: Model) -> Self {
        let sent = SentUser::from(model);
        UserResponse::Ok(JsonBytes::new(sent.body), sent.etag.to_string())
    }
}

#[derive(ApiResponse)]
pub enum CreateUserResponse {
    /// The user was created (or, for a retried `Idempotency-Key`, this is the original response).
    #[oai(status = 201)]
    Created(
        JsonBytes<User>,
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

/// The response a create sends, and an idempotent retry replays.
fn created_response(model: &Model) -> Recorded {
    Recorded {
        status: 201,
        body: User::from(model.clone()).to_json_string(),
        location: Some(format!("{API_PREFIX}/users/{}", model.id)),
        etag: Some(etag(model)),
    }
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

/// A page of users as a listing sends it, with the link to the next one (carrying the
/// request's own parameters).
fn sent_page(page: Page<Model>, params: &[(&str, Option<String>)]) -> SentPage {
    let next_cursor = page.next.map(|cursor| cursor.encode());
    let link = next_cursor
        .as_deref()
        .map(|cursor| next_link(params, cursor).into());
    let page = UserPage {
        items: page.items.into_iter().map(User::from).collect(),
        next_cursor,
    };
    SentPage {
        body: JsonBytes::text(&page).into(),
        link,
    }
}

/// The users resource.
pub struct UsersApi;

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
        state: Data<&Arc<State>>,
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
        let sort = sort.0.map(Sort::from);
        let asked = ListRequest {
            limit: limit.0,
            cursor: cursor.0.map(|cursor| cursor.0),
            sort: sort.unwrap_or_default(),
            role: role.0,
            email: email.0.map(|email| email.0),
            q: q.0,
            created_after: created_after.0,
            created_before: created_before.0,
        };
        let params = [
            ("limit", Some(asked.limit.to_string())),
            ("sort", sort.map(|sort| sort.as_str())),
            ("role", asked.role.clone()),
            ("email", asked.email.clone()),
            ("q", asked.q.clone()),
            (
                "created_after",
                asked.created_after.map(|at| at.to_rfc3339()),
            ),
            (
                "created_before",
                asked.created_before.map(|at| at.to_rfc3339()),
            ),
        ];
        // Equal query strings ask for equal pages: the cache keeps pages by it.
        let key = request.uri().query().unwrap_or_default().to_owned();
        let page = state
            .service
            .list_users(&auth.0, asked, state.pages.as_ref(), key, |page| {
                sent_page(page, &params)
            })
            .await?;
        Ok(ListUsersResponse::Ok(
            JsonBytes::new(page.body),
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
        state: Data<&Arc<State>>,
        /// A unique value per logical request (a UUID, say), kept for `--idempotency-ttl-secs`
        /// (24 h by default). Reusing it with a different body is a 422.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<CreateUserResponse, CreateErrors> {
        let idempotent = idempotency_key.0.map(|key| Idempotent {
            key,
            request_hash: body.fingerprint(),
            record: created_response,
        });
        let replayed = idempotent.is_some().then_some(false);
        let (recorded, replayed) = match state
            .service
            .create_user(&auth.0, body.value, idempotent)
            .await?
        {
            Created::User(model) => (created_response(&model), replayed),
            Created::Replayed(recorded) => (recorded, Some(true)),
        };
        Ok(CreateUserResponse::Created(
            JsonBytes::new(recorded.body),
            recorded.location.unwrap_or_default(),
            recorded.etag.unwrap_or_default(),
            replayed,
        ))
    }

    /// Get a user
    ///
    /// Sends a strong `ETag`; with `If-None-Match` carrying it, an unchanged user is a bodiless
    /// 304. Needs `users:read`.
    #[oai(path = "/users/:id", method = "get", operation_id = "getUser")]
    async fn get_user(
        &self,
        auth: Auth,
        state: Data<&Arc<State>>,
        /// The user's id.
        id: Path<i64>,
        /// ETags the client already holds; if one is current the answer is 304.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> ApiResult<GetUserResponse, OneErrors> {
        let user = state
            .service
            .get_user(&auth.0, id.0, state.users.as_ref(), SentUser::from)
            .await?;
        let tag = user.etag.to_string();
        if !none_match(if_none_match.0.as_deref(), &tag) {
            return Ok(GetUserResponse::NotModified(tag));
        }
        Ok(GetUserResponse::Ok(JsonBytes::new(user.body), tag))
    }

    /// Replace a user
    ///
    /// Sets every writable field: an omitted `email` removes the address. With `If-Match`, the
    /// write happens only if the user is unchanged since that ETag (else 412). Needs `users:write`.
    #[oai(path = "/users/:id", method = "put", operation_id = "replaceUser")]
    async fn replace_user(
        &self,
        auth: Auth,
        state: Data<&Arc<State>>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the change is based on (or `*`); a stale one gives 412 and changes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        let condition = conditional::if_match(if_match.0.as_deref(), id.0);
        let user = state
            .service
            .replace_user(&auth.0, id.0, body.value, condition)
            .await?;
        Ok(user.into())
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
        state: Data<&Arc<State>>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the change is based on (or `*`); a stale one gives 412 and changes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UserPatch>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        let condition = conditional::if_match(if_match.0.as_deref(), id.0);
        let user = state
            .service
            .update_user(&auth.0, id.0, body.value, condition)
            .await?;
        Ok(user.into())
    }

    /// Delete a user
    ///
    /// With `If-Match`, deletes only if the user is unchanged since that ETag (else 412).
    /// Needs `users:write`.
    #[oai(path = "/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete_user(
        &self,
        auth: Auth,
        state: Data<&Arc<State>>,
        /// The user's id.
        id: Path<i64>,
        /// The ETag the deletion is based on (or `*`); a stale one gives 412 and deletes nothing.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> ApiResult<DeleteUserResponse, DeleteErrors> {
        let condition = conditional::if_match(if_match.0.as_deref(), id.0);
        state.service.delete_user(&auth.0, id.0, condition).await?;
        Ok(DeleteUserResponse::Deleted)
    }
}
