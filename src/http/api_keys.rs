//! API-key management over HTTP, for principals with the `admin` scope.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use serde_json::Value;

use super::{
    API_PREFIX, ApiTags, State,
    params::CursorText,
    payload::{BodySchema, JsonBody},
    problem::{ApiResult, CreateErrors, ListErrors, OneErrors, RevokeErrors},
    security::Auth,
};
use crate::{
    domain::{FieldError, NewApiKey, Scope, ScopeSet},
    service::ApiKeyView,
    store,
};

// The domain's `Scope`, as the spec names it.
/// A permission an API key or access token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "Scope")]
pub enum ScopeName {
    /// Read users (GET).
    #[oai(rename = "users:read")]
    UsersRead,
    /// Create, replace, update and delete users.
    #[oai(rename = "users:write")]
    UsersWrite,
    /// Everything: all user operations and API-key management.
    #[oai(rename = "admin")]
    Admin,
}

impl From<Scope> for ScopeName {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::UsersRead => ScopeName::UsersRead,
            Scope::UsersWrite => ScopeName::UsersWrite,
            Scope::Admin => ScopeName::Admin,
        }
    }
}

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
    pub scopes: Vec<ScopeName>,
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
            scopes: vec![ScopeName::UsersRead],
            created_at: at,
            expires_at: None,
            last_used_at: Some(at),
            revoked_at: None,
            created_by: Some("api-key:1".into()),
        }
    }
}

impl From<ApiKeyView> for ApiKey {
    fn from(key: ApiKeyView) -> Self {
        ApiKey {
            scopes: ScopeSet::from_stored(&key.scopes)
                .iter()
                .map(ScopeName::from)
                .collect(),
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
            created_by: key.created_by,
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
    pub scopes: Vec<ScopeName>,
    /// When the key stops working (RFC 3339, in the future); omit for a key that does not expire.
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Example for ApiKeyInput {
    fn example() -> Self {
        ApiKeyInput {
            name: "ci-reader".into(),
            scopes: vec![ScopeName::UsersRead],
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
        state: Data<&Arc<State>>,
        /// How many keys to return, 1 to 200.
        #[oai(
            default = "super::default_page_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
        /// The `next_cursor` of the previous page; omit for the first page.
        cursor: Query<Option<CursorText>>,
    ) -> ApiResult<ListApiKeysResponse, ListErrors> {
        let cursor = cursor.0.map(|cursor| cursor.0);
        let page = state
            .service
            .list_api_keys(&auth.0, cursor.as_deref(), limit.0)
            .await?;
        Ok(ListApiKeysResponse::Ok(Json(ApiKeyPage {
            items: page.items.into_iter().map(ApiKey::from).collect(),
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
        state: Data<&Arc<State>>,
        body: JsonBody<ApiKeyInput>,
    ) -> ApiResult<CreateApiKeyResponse, CreateErrors> {
        let (key, secret) = state.service.create_api_key(&auth.0, body.value).await?;
        let location = format!("{API_PREFIX}/api-keys/{}", key.id);
        let created = ApiKeyCreated {
            metadata: key.into(),
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
        state: Data<&Arc<State>>,
        /// The key's id.
        id: Path<i64>,
    ) -> ApiResult<ApiKeyResponse, OneErrors> {
        let key = state.service.get_api_key(&auth.0, id.0).await?;
        Ok(ApiKeyResponse::Ok(Json(key.into())))
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
        state: Data<&Arc<State>>,
        /// The key's id.
        id: Path<i64>,
    ) -> ApiResult<RevokeApiKeyResponse, RevokeErrors> {
        state.service.revoke_api_key(&auth.0, id.0).await?;
        Ok(RevokeApiKeyResponse::Revoked)
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    #[test]
    fn scope_names_in_the_spec_are_the_stored_names() {
        for scope in Scope::ALL {
            let named = ScopeName::from(scope);
            assert_eq!(named.to_json(), Some(serde_json::json!(scope.as_str())));
        }
    }
}
