//! The users endpoints: each parses, checks scope, calls a store function, maps the outcome.

use chrono::{DateTime, Utc};
use entity::users::Model;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::{Email, Example, MaybeUndefined},
};
use serde_json::Value;

use super::{
    ApiTags,
    payload::{BodySchema, JsonBody},
    problem::{ApiResult, CreateErrors, ListErrors, OneErrors, WriteOneErrors},
};
use crate::{
    auth::Auth,
    domain::{NewUser, Scope, UserChanges},
    error::FieldError,
    startup::AppState,
    store,
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
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
    /// Role; surrounding whitespace is trimmed and must leave 1 to 50 characters.
    #[oai(validator(min_length = 1, max_length = 50))]
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
        validator(min_length = 1, max_length = 100)
    )]
    pub name: Option<String>,
    /// New role, 1 to 50 characters after trimming.
    #[oai(
        skip_serializing_if_is_none,
        validator(min_length = 1, max_length = 50)
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

/// One page of users in ascending id order.
#[derive(Debug, Clone, Object)]
pub struct UserPage {
    /// The users on this page, at most `limit` of them.
    pub items: Vec<User>,
    /// Pass as `cursor` to fetch the next page; `null` on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum ListUsersResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(Json<UserPage>),
}

#[derive(ApiResponse)]
pub enum UserResponse {
    /// The user.
    #[oai(status = 200)]
    Ok(Json<User>),
}

#[derive(ApiResponse)]
pub enum CreateUserResponse {
    /// The user was created.
    #[oai(status = 201)]
    Created(
        Json<User>,
        /// The URL of the new user.
        #[oai(header = "Location")]
        String,
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

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// List users
    ///
    /// Returns users in ascending id order, `limit` at a time. To walk the whole collection,
    /// pass each page's `next_cursor` as `cursor` until it is `null`. Pages are keyset-based:
    /// users created or deleted meanwhile never cause duplicates or skips. Needs `users:read`.
    #[oai(path = "/users", method = "get", operation_id = "listUsers")]
    async fn list_users(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// How many users to return, 1 to 200.
        #[oai(
            default = "super::default_page_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
        /// The `next_cursor` of the previous page; omit for the first page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<ListUsersResponse, ListErrors> {
        auth.0.require(Scope::UsersRead)?;
        let after = super::parse_cursor(cursor.0.as_deref())?;
        let page = store::users::list(&state.db, after, limit.0).await?;
        Ok(ListUsersResponse::Ok(Json(UserPage {
            items: page.items.into_iter().map(User::from).collect(),
            next_cursor: page.next.map(|cursor| cursor.encode()),
        })))
    }

    /// Create a user
    ///
    /// The server assigns `id` and the timestamps; the response's `Location` header points at
    /// the new user. Needs `users:write`.
    #[oai(path = "/users", method = "post", operation_id = "createUser")]
    async fn create_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<CreateUserResponse, CreateErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let user = User::from(
            store::users::create(&state.db, body.0, &auth.0.subject.audit_name()).await?,
        );
        let location = format!("/api/v1/users/{}", user.id);
        Ok(CreateUserResponse::Created(Json(user), location))
    }

    /// Get a user
    ///
    /// Needs `users:read`.
    #[oai(path = "/users/:id", method = "get", operation_id = "getUser")]
    async fn get_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
    ) -> ApiResult<UserResponse, OneErrors> {
        auth.0.require(Scope::UsersRead)?;
        let user = store::users::get(&state.db, id.0).await?;
        Ok(UserResponse::Ok(Json(user.into())))
    }

    /// Replace a user
    ///
    /// Sets every writable field: an omitted `email` removes the address. Needs `users:write`.
    #[oai(path = "/users/:id", method = "put", operation_id = "replaceUser")]
    async fn replace_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        body: JsonBody<UserInput>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let user =
            store::users::replace(&state.db, id.0, body.0, &auth.0.subject.audit_name()).await?;
        Ok(UserResponse::Ok(Json(user.into())))
    }

    /// Update a user
    ///
    /// Changes only the members present in the body (JSON merge patch semantics; both
    /// `application/json` and `application/merge-patch+json` are accepted). Needs `users:write`.
    #[oai(path = "/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
        body: JsonBody<UserPatch>,
    ) -> ApiResult<UserResponse, WriteOneErrors> {
        auth.0.require(Scope::UsersWrite)?;
        let user =
            store::users::update(&state.db, id.0, body.0, &auth.0.subject.audit_name()).await?;
        Ok(UserResponse::Ok(Json(user.into())))
    }

    /// Delete a user
    ///
    /// Needs `users:write`.
    #[oai(path = "/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete_user(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The user's id.
        id: Path<i64>,
    ) -> ApiResult<DeleteUserResponse, OneErrors> {
        auth.0.require(Scope::UsersWrite)?;
        store::users::delete(&state.db, id.0).await?;
        Ok(DeleteUserResponse::Deleted)
    }
}
