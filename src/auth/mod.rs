//! Who is calling: the bearer credentials (API keys and OAuth access tokens) and the principal
//! they yield.

pub mod audit;
pub mod key_cache;
pub mod key_hash;
pub mod oauth;
pub mod usage;

use std::sync::OnceLock;

use poem::{Request, RequestBody, http::header};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaOAuthFlow, MetaOAuthFlows, MetaOAuthScope, MetaSecurityScheme, Registry},
};

use self::key_cache::CachedKey;
use crate::{
    api::edge::RequestContext,
    domain::{ApiKeySecret, KeyDigest, Scope, ScopeSet},
    error::AppError,
    rate_limit::Bucket,
    startup::AppState,
    store,
};

/// Who acted, as recorded in audit fields and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    ApiKey(i64),
    /// The `sub` claim of an OAuth access token.
    Token(String),
}

impl Subject {
    /// `api-key:<id>` or `oauth:<sub>`: the form stored in `created_by`/`updated_by`.
    pub fn audit_name(&self) -> String {
        match self {
            Subject::ApiKey(id) => format!("api-key:{id}"),
            Subject::Token(sub) => format!("oauth:{sub}"),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Subject,
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

/// Bearer credentials: an API key or an OAuth 2.0 access token, told apart by shape (keys have
/// the `uak_` prefix, JWTs three dot-separated segments). The spec offers both schemes on every
/// protected operation, so Swagger UI's Authorize dialog shows both.
pub struct Auth(pub Principal);

pub const API_KEY_SCHEME: &str = "ApiKey";
pub const OAUTH_SCHEME: &str = "OAuth2";

/// The identity provider's endpoints for the live spec's OAuth2 flows. Set once at start from
/// configuration, before the spec is first built: the spec is assembled by poem-openapi from
/// static registrations, so this is the one way configuration can reach it. Unset (as in
/// `users-api openapi`), the spec shows placeholders.
pub static OAUTH_FLOW_URLS: OnceLock<OAuthFlowUrls> = OnceLock::new();

#[derive(Debug, Clone)]
pub struct OAuthFlowUrls {
    pub authorization_url: String,
    pub token_url: String,
}

const PLACEHOLDER_AUTHORIZATION_URL: &str = "https://identity-provider.invalid/authorize";
const PLACEHOLDER_TOKEN_URL: &str = "https://identity-provider.invalid/token";

fn oauth_flow(authorization_url: Option<&'static str>, token_url: &'static str) -> MetaOAuthFlow {
    MetaOAuthFlow {
        authorization_url,
        token_url: Some(token_url),
        refresh_url: None,
        scopes: [
            (Scope::UsersRead, "Read users"),
            (
                Scope::UsersWrite,
                "Create, replace, update and delete users",
            ),
            (Scope::Admin, "Everything, including API-key management"),
        ]
        .into_iter()
        .map(|(scope, description)| MetaOAuthScope {
            name: scope.as_str(),
            description: Some(description),
        })
        .collect(),
    }
}

impl<'a> ApiExtractor<'a> for Auth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            API_KEY_SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "An API key sent as `Authorization: Bearer uak_…`. Keys carry scopes: \
                     `users:read` for reads, `users:write` for writes, `admin` for everything \
                     including key management. The server prints an admin key on first start; \
                     create more with `users-api keys create` or `POST /api/v1/api-keys`.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("uak_<40 hex digits>"),
                flows: None,
                openid_connect_url: None,
            },
        );
        let (authorization_url, token_url) = match OAUTH_FLOW_URLS.get() {
            Some(urls) => (urls.authorization_url.as_str(), urls.token_url.as_str()),
            None => (PLACEHOLDER_AUTHORIZATION_URL, PLACEHOLDER_TOKEN_URL),
        };
        registry.create_security_scheme(
            OAUTH_SCHEME,
            MetaSecurityScheme {
                ty: "oauth2",
                description: Some(
                    "An OAuth 2.0 access token (a JWT) from the identity provider this deployment \
                     trusts, sent as `Authorization: Bearer <jwt>`. Scopes come from the `scope` \
                     or `scp` claim. A running server shows its provider's URLs here; the \
                     committed spec has placeholders.",
                ),
                name: None,
                key_in: None,
                scheme: None,
                bearer_format: None,
                flows: Some(MetaOAuthFlows {
                    implicit: None,
                    password: None,
                    client_credentials: Some(oauth_flow(None, token_url)),
                    authorization_code: Some(oauth_flow(Some(authorization_url), token_url)),
                }),
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![API_KEY_SCHEME, OAUTH_SCHEME]
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let token = bearer_token(request)?;
        let state = request
            .data::<AppState>()
            .expect("the application state is attached to every request");
        let outcome = authenticate(state, token).await;
        // A principal is limited as such; bad credentials count against the address, so
        // guessing keys is throttled like any anonymous traffic.
        let context = request.extensions().get::<RequestContext>();
        let bucket = match &outcome {
            Ok(principal) => Some(Bucket::Principal(principal.subject.clone())),
            Err(AppError::InvalidToken(_)) => context.and_then(|c| c.client_ip).map(Bucket::Ip),
            Err(_) => None,
        };
        if let (Some(limiter), Some(bucket)) = (&state.limiter, bucket)
            && let Some(decision) = limiter.check(&bucket).await
        {
            if let Some(context) = context {
                context.rate_limit.set(decision);
            }
            if !decision.allowed {
                return Err(AppError::RateLimited {
                    retry_after: decision.reset.max(1),
                }
                .into());
            }
        }
        Ok(Auth(outcome?))
    }
}

/// A key the cache does not hold, from the database; a live one is then cached.
async fn load_key(state: &AppState, digest: KeyDigest) -> Result<CachedKey, AppError> {
    let key = store::api_keys::find_by_hash(&state.db, &digest.to_hex())
        .await?
        .ok_or_else(|| AppError::InvalidToken("the API key is unknown".into()))?;
    if key.revoked_at.is_some() {
        return Err(AppError::InvalidToken(
            "the API key has been revoked".into(),
        ));
    }
    let principal = Principal {
        subject: Subject::ApiKey(key.id),
        scopes: ScopeSet::from_stored(&key.scopes),
    };
    let cached = || CachedKey {
        key_id: key.id,
        principal: principal.clone(),
        expires_at: key.expires_at,
    };
    state.key_cache.put(digest, cached());
    Ok(cached())
}

/// The token of an `Authorization: Bearer` header (the scheme name is case-insensitive).
fn bearer_token(request: &Request) -> Result<&str, AppError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(AppError::MissingCredentials)?
        .to_str()
        .map_err(|_| AppError::MissingCredentials)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AppError::MissingCredentials),
    }
}

/// Resolves a bearer token to its principal, by its shape.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, AppError> {
    if ApiKeySecret::looks_like_key(token) {
        return verify_key(state, token).await;
    }
    if token.split('.').count() == 3 {
        return match &state.oauth {
            // Boxed: see `verify_key`.
            Some(verifier) => Box::pin(verifier.verify(token)).await,
            None => Err(AppError::InvalidToken(
                "this server accepts no OAuth access tokens: no identity provider is configured"
                    .into(),
            )),
        };
    }
    Err(AppError::InvalidToken(
        "the bearer token is neither a users-api key nor a JWT access token".into(),
    ))
}

/// Unknown, revoked and expired keys are all 401; a use is noted for `last_used_at`.
/// Live keys are served from the key cache for up to its TTL.
async fn verify_key(state: &AppState, token: &str) -> Result<Principal, AppError> {
    let digest = ApiKeySecret::digest_presented(token);
    let key = match state.key_cache.get(&digest) {
        Some(cached) => cached,
        // Boxed, as `read_through` boxes its read: the lookup's future is large, and held
        // inline it would be copied with every request's future, cached key or not.
        None => Box::pin(load_key(state, digest)).await?,
    };
    let now = store::now();
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(AppError::InvalidToken("the API key has expired".into()));
    }
    state.key_usage.record(key.key_id, now);
    Ok(key.principal)
}
