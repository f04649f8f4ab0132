//! The security schemes of the spec, and the extractor that turns a request's bearer
//! credentials into the principal its handler acts for.

use std::sync::Arc;

use poem::{
    Request, RequestBody,
    http::{HeaderMap, header},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaOAuthFlow, MetaOAuthFlows, MetaOAuthScope, MetaSecurityScheme, Registry},
};
use serde_json::{Value, json};

use super::{State, edge::RequestContext};
use crate::{
    domain::{Principal, Scope},
    error::AppError,
};

/// Bearer credentials: an API key or an OAuth 2.0 access token. The spec offers both schemes
/// on every protected operation, so Swagger UI's Authorize dialog shows both.
pub struct Auth(pub Principal);

const API_KEY_SCHEME: &str = "ApiKey";
const OAUTH_SCHEME: &str = "OAuth2";

/// The identity provider's endpoints, shown in the served spec's OAuth2 flows.
#[derive(Debug, Clone)]
pub struct OAuthFlowUrls {
    pub authorization_url: String,
    pub token_url: String,
}

const PLACEHOLDER_AUTHORIZATION_URL: &str = "https://identity-provider.invalid/authorize";
const PLACEHOLDER_TOKEN_URL: &str = "https://identity-provider.invalid/token";

/// Every scope, and what it allows.
const SCOPES: [(Scope, &str); 3] = [
    (Scope::UsersRead, "Read users"),
    (
        Scope::UsersWrite,
        "Create, replace, update and delete users",
    ),
    (Scope::Admin, "Everything, including API-key management"),
];

const OAUTH_DESCRIPTION: &str = "An OAuth 2.0 access token (a JWT) from the identity provider \
    this deployment trusts (`--oauth-issuer`), sent as `Authorization: Bearer <jwt>`. Scopes come \
    from the `scope` or `scp` claim.";

/// A flow of the derived spec; its placeholder URLs never reach a served document
/// ([`describe_oauth`] replaces them).
fn oauth_flow(authorization_url: Option<&'static str>) -> MetaOAuthFlow {
    MetaOAuthFlow {
        authorization_url,
        token_url: Some(PLACEHOLDER_TOKEN_URL),
        refresh_url: None,
        scopes: SCOPES
            .iter()
            .map(|(scope, description)| MetaOAuthScope {
                name: scope.as_str(),
                description: Some(description),
            })
            .collect(),
    }
}

/// Makes a spec document's OAuth2 scheme say what this deployment does: with the identity
/// provider's endpoints (`urls`), OAuth 2.0 flows a client (Swagger UI's Authorize) can run;
/// without them, a bearer JWT obtained elsewhere, with no made-up URLs.
pub fn describe_oauth(spec: &mut Value, urls: Option<&OAuthFlowUrls>) {
    let scheme = &mut spec["components"]["securitySchemes"][OAUTH_SCHEME];
    match urls {
        Some(urls) => {
            let flows = &mut scheme["flows"];
            flows["authorizationCode"]["authorizationUrl"] = json!(urls.authorization_url);
            for flow in ["authorizationCode", "clientCredentials"] {
                flows[flow]["tokenUrl"] = json!(urls.token_url);
            }
        }
        None => {
            let scopes: Vec<String> = SCOPES
                .iter()
                .map(|(scope, what)| format!("`{scope}`: {what}"))
                .collect();
            *scheme = json!({
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": format!(
                    "{OAUTH_DESCRIPTION} Scopes: {}. Get the token from the identity provider \
                     (this document names no authorization URLs; a server started with \
                     `--oauth-authorization-url` and `--oauth-token-url` shows its flows here).",
                    scopes.join("; ")
                ),
            });
        }
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
        registry.create_security_scheme(
            OAUTH_SCHEME,
            MetaSecurityScheme {
                ty: "oauth2",
                description: Some(OAUTH_DESCRIPTION),
                name: None,
                key_in: None,
                scheme: None,
                bearer_format: None,
                flows: Some(MetaOAuthFlows {
                    implicit: None,
                    password: None,
                    client_credentials: Some(oauth_flow(None)),
                    authorization_code: Some(oauth_flow(Some(PLACEHOLDER_AUTHORIZATION_URL))),
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
        let token = bearer_token(request.headers()).ok_or(AppError::MissingCredentials)?;
        let state = request
            .data::<Arc<State>>()
            .expect("the state is attached to every request");
        let context = request.extensions().get::<RequestContext>();
        let client = context.and_then(|context| context.client_ip);
        let (principal, decision) = state.service.admit(token, client).await;
        if let (Some(context), Some(decision)) = (context, decision) {
            context.rate_limit.set(decision);
        }
        let principal = principal?;
        if let Some(context) = context {
            // Set once: an operation has one security extractor.
            let _ = context.caller.set(principal.subject.clone());
        }
        Ok(Auth(principal))
    }
}

/// The token of an `Authorization: Bearer` header (the scheme name is case-insensitive), if
/// the request has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Some(token.trim())
        }
        _ => None,
    }
}
