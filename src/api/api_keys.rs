//! API-key management over HTTP, for principals with the `admin` scope.

use chrono::{DateTime, Utc};
use entity::api_keys::Model;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use serde_json::Value;

use super::{
    ApiTags,
    cursor_param::CursorText,
    payload::{BodySchema, JsonBody},
    problem::{ApiResult, CreateErrors, ListErrors, OneErrors, RevokeErrors},
};
use crate::{
    auth::{Auth, Subject, audit},
    domain::{ListQuery, NewApiKey, Scope, ScopeSet},
    error::{AppError, FieldError},
    startup::AppState,
    store,
};

/// An API key's metadata. The secret is never shown again after creation, and its hash never.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ApiKey {
    #[oai(read_only)]
    pub id: i64,
    /// A label saying who or what uses the key.
    pub name: String,
    /// The first characters of the key, to tell keys apart.
    #[oai(read_only)]
    pub prefix: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    #[oai(read_only)]
    pub created_at: DateTime<Utc>,
    /// After this instant the key is refused; `null` for a key that does not expire.
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key last authenticated a request (accurate to the server's flush interval).
    #[oai(read_only, nullable)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the key was revoked; `null` while it is live.
    #[oai(read_only, nullable)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who created the key (`api-key:<id>` or `oauth:<subject>`); `null` for keys made with the CLI.
    #[oai(read_only, nullable)]
    pub created_by: Option<String>,
}

impl Example for ApiKey {
    fn example() -> Self {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:30:00Z")
            .expect("valid literal")
            .to_utc();
        ApiKey {
            id: 2,
            name: "ci-reader".into(),
            prefix: "uak_3f9a1c07".into(),
            scopes: vec![Scope::UsersRead],
            created_at: at,
            expires_at: None,
            last_used_at: Some(at),
            revoked_at: None,
            created_by: Some("api-key:1".into()),
        }
    }
}

impl ApiKey {
    fn from_model(model: Model, state: &AppState) -> Self {
        ApiKey {
            last_used_at: state.key_usage.latest(model.id, model.last_used_at),
            scopes: ScopeSet::from_stored(&model.scopes).iter().collect(),
            id: model.id,
            name: model.name,
            prefix: model.prefix,
            created_at: model.created_at,
            expires_at: model.expires_at,
            revoked_at: model.revoked_at,
            created_by: model.created_by,
        }
    }
}

/// A key just created: its metadata and, this once, the key itself.
#[derive(Debug, Clone, Object)]
pub struct ApiKeyCreated {
    #[oai(flatten)]
    pub metadata: ApiKey,
    /// The key, to send as `Authorization: Bearer <key>`. Store it now: it is never shown again.
    #[oai(read_only)]
    pub key: String,
}

/// What to create: a name, the scopes (no more than the caller holds) and an optional expiry.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ApiKeyInput {
    /// 1 to 100 characters after trimming.
    #[oai(validator(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    ))]
    pub name: String,
    /// At least one scope.
    #[oai(validator(min_items = 1))]
    pub scopes: Vec<Scope>,
    /// When the key stops working (RFC 3339, in the future); omit for a key that does not expire.
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Example for ApiKeyInput {
    fn example() -> Self {
        ApiKeyInput {
            name: "ci-reader".into(),
            scopes: vec![Scope::UsersRead],
            expires_at: None,
        }
    }
}

impl BodySchema for ApiKeyInput {
    type Parsed = NewApiKey;
    fn parse(body: &Value) -> Result<NewApiKey, Vec<FieldError>> {
        NewApiKey::from_json(body, store::now())
    }
}

/// One page of keys in ascending id order.
#[derive(Debug, Clone, Object)]
pub struct ApiKeyPage {
    pub items: Vec<ApiKey>,
    /// Pass as `cursor` to fetch the next page; `null` on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum ListApiKeysResponse {
    /// A page of keys.
    #[oai(status = 200)]
    Ok(Json<ApiKeyPage>),
}

#[derive(ApiResponse)]
pub enum ApiKeyResponse {
    /// The key's metadata.
    #[oai(status = 200)]
    Ok(Json<ApiKey>),
}

#[derive(ApiResponse)]
pub enum CreateApiKeyResponse {
    /// The key was created; the body holds the secret, this once.
    #[oai(status = 201)]
    Created(
        Json<ApiKeyCreated>,
        /// The URL of the new key's metadata.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum RevokeApiKeyResponse {
    /// The key is revoked (or already was); it is refused from now on.
    #[oai(status = 204)]
    Revoked,
}

/// API-key management.
pub struct ApiKeysApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::ApiKeys")]
impl ApiKeysApi {
    /// List API keys
    ///
    /// Metadata only, in ascending id order, revoked keys included. Needs `admin`.
    #[oai(path = "/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list_api_keys(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// How many keys to return, 1 to 200.
        #[oai(
            default = "super::default_page_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
        /// The `next_cursor` of the previous page; omit for the first page.
        cursor: Query<Option<CursorText>>,
    ) -> ApiResult<ListApiKeysResponse, ListErrors> {
        auth.0.require(Scope::Admin)?;
        let after = super::parse_cursor(cursor.0.as_ref(), &ListQuery::default())?;
        let page = store::api_keys::list(&state.db, after.as_ref(), limit.0).await?;
        Ok(ListApiKeysResponse::Ok(Json(ApiKeyPage {
            items: page
                .items
                .into_iter()
                .map(|key| ApiKey::from_model(key, &state))
                .collect(),
            next_cursor: page.next.map(|cursor| cursor.encode()),
        })))
    }

    /// Create an API key
    ///
    /// Returns the key itself once, in `key`; only its hash is stored. The new key cannot hold
    /// scopes its creator lacks. Needs `admin`.
    #[oai(path = "/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create_api_key(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: JsonBody<ApiKeyInput>,
    ) -> ApiResult<CreateApiKeyResponse, CreateErrors> {
        let principal = auth.0;
        principal.require(Scope::Admin)?;
        let new_key = body.value;
        if !principal.scopes.covers(&new_key.scopes) {
            return Err(AppError::Validation(vec![FieldError::new(
                "/scopes",
                "cannot grant scopes the caller does not hold",
            )])
            .into());
        }
        let actor = principal.subject.audit_name();
        let (model, secret) =
            store::api_keys::create(&state.db, &new_key, Some(actor.clone())).await?;
        audit::key_created(&model, &actor);
        let location = format!("/api/v1/api-keys/{}", model.id);
        let created = ApiKeyCreated {
            metadata: ApiKey::from_model(model, &state),
            key: secret.plaintext().to_owned(),
        };
        Ok(CreateApiKeyResponse::Created(Json(created), location))
    }

    /// Get an API key
    ///
    /// Metadata only. A revoked key is gone (404); its record stays in `listApiKeys`. Needs `admin`.
    #[oai(path = "/api-keys/:id", method = "get", operation_id = "getApiKey")]
    async fn get_api_key(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The key's id.
        id: Path<i64>,
    ) -> ApiResult<ApiKeyResponse, OneErrors> {
        auth.0.require(Scope::Admin)?;
        let key = store::api_keys::get(&state.db, id.0).await?;
        if key.revoked_at.is_some() {
            return Err(AppError::KeyRevoked { id: id.0 }.into());
        }
        Ok(ApiKeyResponse::Ok(Json(ApiKey::from_model(key, &state))))
    }

    /// Revoke an API key
    ///
    /// The key is refused from the next request on and `getApiKey` answers 404 for it; its record
    /// stays in `listApiKeys` with `revoked_at`, for audit. Revoking a revoked key succeeds. A key
    /// cannot revoke itself (409). Needs `admin`.
    #[oai(
        path = "/api-keys/:id",
        method = "delete",
        operation_id = "revokeApiKey"
    )]
    async fn revoke_api_key(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// The key's id.
        id: Path<i64>,
    ) -> ApiResult<RevokeApiKeyResponse, RevokeErrors> {
        auth.0.require(Scope::Admin)?;
        if auth.0.subject == Subject::ApiKey(id.0) {
            // Revoking the key in hand would lock its holder out mid-session; that is done with
            // another admin key, deliberately.
            return Err(AppError::Conflict(
                "a key cannot revoke itself; revoke it with another admin key".into(),
            )
            .into());
        }
        let key = store::api_keys::revoke(&state.db, id.0).await?;
        state.key_cache.forget(key.id);
        audit::key_revoked(&key, &auth.0.subject.audit_name());
        Ok(RevokeApiKeyResponse::Revoked)
    }
}
