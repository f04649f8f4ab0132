//! Who is calling: the bearer security scheme and the principal it yields.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{
    domain::{ApiKeySecret, Scope, ScopeSet},
    error::AppError,
    startup::AppState,
    store,
};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: i64,
    pub scopes: ScopeSet,
}

impl Principal {
    /// Fails with 403 unless the principal holds `needed` (or `admin`).
    pub fn require(&self, needed: Scope) -> Result<(), AppError> {
        if self.scopes.allows(needed) {
            Ok(())
        } else {
            Err(AppError::Forbidden { needed })
        }
    }
}

/// An API key sent as `Authorization: Bearer uak_…`. Keys carry scopes: `users:read` for GET,
/// `users:write` for POST/PUT/PATCH/DELETE, `admin` for everything. Get one from the banner
/// the server prints on first start, or with `users-api keys create`.
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKey",
    ty = "bearer",
    bearer_format = "uak_<40 hex digits>",
    checker = "authenticate"
)]
pub struct ApiKeyAuth(pub Principal);

async fn authenticate(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = request
        .data::<AppState>()
        .expect("the application state is attached to every request");
    Ok(verify_key(state, &bearer.token).await?)
}

/// Resolves a presented key to its principal; unknown, malformed and revoked keys are all 401.
pub async fn verify_key(state: &AppState, token: &str) -> Result<Principal, AppError> {
    if !ApiKeySecret::looks_like_key(token) {
        return Err(AppError::Unauthorized(
            "the bearer token is not a users-api key (expected `uak_` followed by 40 hex digits)"
                .into(),
        ));
    }
    let key = store::api_keys::find_active(&state.db, &ApiKeySecret::hash_presented(token))
        .await?
        .ok_or_else(|| {
            AppError::Unauthorized("the API key is unknown or has been revoked".into())
        })?;
    Ok(Principal {
        key_id: key.id,
        scopes: ScopeSet::from_stored(&key.scopes),
    })
}
