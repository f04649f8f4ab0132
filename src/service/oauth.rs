//! OAuth 2.0 resource server: verifying JWT access tokens against an identity provider's JWKS.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::RwLock,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::{
    domain::{Principal, Scope, ScopeSet, Subject},
    error::AppError,
};

/// Where the identity provider publishes its signing keys.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl JwksSource {
    /// `http(s)://…` is fetched; anything else is read as a file path.
    pub fn parse(raw: &str) -> Self {
        if raw.starts_with("http://") || raw.starts_with("https://") {
            JwksSource::Url(raw.to_owned())
        } else {
            JwksSource::File(PathBuf::from(raw.trim_start_matches("file://")))
        }
    }
}

/// What a deployment tells us about its identity provider.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    /// Tolerated clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// At most one JWKS refresh per this interval, however many unknown `kid`s arrive.
    pub min_refresh_interval: Duration,
}

/// A verification key and the one algorithm it may be used with.
struct SigningKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

struct RefreshState {
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// Verifies access tokens; keys are cached and refreshed on an unknown `kid`, so the identity
/// provider can rotate keys without a restart.
pub struct OAuthVerifier {
    settings: OAuthSettings,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, SigningKey>>,
    refresh: Mutex<RefreshState>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Optional here only so that its absence is reported as a missing claim by validation
    /// rather than as a malformed token.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

/// `scp` comes as a space-separated string from some providers and an array from others.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

/// How long a JWKS fetch may take before the token is judged without it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl OAuthVerifier {
    /// Builds the verifier and tries a first JWKS load; a failure is logged, not fatal, so an
    /// identity provider that is down does not keep API-key traffic from being served.
    pub async fn new(settings: OAuthSettings) -> Self {
        let verifier = Self {
            settings,
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("a TLS-capable HTTP client"),
            keys: RwLock::new(HashMap::new()),
            refresh: Mutex::new(RefreshState {
                last_attempt: None,
                last_failed: false,
            }),
        };
        verifier.refresh_keys(true).await;
        verifier
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AppError> {
        let header = decode_header(token).map_err(|err| invalid_token(describe(err.kind())))?;
        let kid = header
            .kid
            .ok_or_else(|| invalid_token("the token header has no `kid`"))?;
        if !self.has_key(&kid) && !self.refresh_keys(false).await {
            // The key may well exist; we just could not ask. That is our outage, not a bad token.
            return Err(AppError::Unavailable(
                "the identity provider's signing keys cannot be loaded right now".into(),
            ));
        }
        let claims = {
            let keys = self.keys.read().expect("key cache lock");
            let signing = keys
                .get(&kid)
                .ok_or_else(|| invalid_token("the token is signed with an unknown key"))?;
            // The key decides the algorithm, never the token: this is what defeats `alg: none`
            // and HMAC tokens "signed" with a public key.
            if header.alg != signing.algorithm {
                return Err(invalid_token(
                    "the token's algorithm does not match its signing key",
                ));
            }
            let mut validation = Validation::new(signing.algorithm);
            validation.set_issuer(&[&self.settings.issuer]);
            validation.set_audience(&[&self.settings.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = self.settings.leeway.as_secs();
            validation.validate_nbf = true;
            decode::<Claims>(token, &signing.key, &validation)
                .map_err(|err| invalid_token(describe(err.kind())))?
                .claims
        };
        let scopes = scopes_of(&claims);
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| invalid_token("the token's `sub` claim is empty"))?;
        Ok(Principal {
            subject: Subject::Token(subject),
            scopes,
        })
    }

    fn has_key(&self, kid: &str) -> bool {
        self.keys.read().expect("key cache lock").contains_key(kid)
    }

    /// Reloads the JWKS unless a load was attempted within the minimum interval (or `force`).
    /// Returns `false` only when the keys could not be loaded at the last attempt.
    async fn refresh_keys(&self, force: bool) -> bool {
        let mut state = self.refresh.lock().await;
        let recent = state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.settings.min_refresh_interval);
        if recent && !force {
            return !state.last_failed;
        }
        state.last_attempt = Some(Instant::now());
        match self.load_keys().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "loaded identity provider signing keys");
                *self.keys.write().expect("key cache lock") = keys;
                state.last_failed = false;
            }
            Err(reason) => {
                tracing::warn!(%reason, "could not load identity provider signing keys");
                state.last_failed = true;
            }
        }
        !state.last_failed
    }

    async fn load_keys(&self) -> Result<HashMap<String, SigningKey>, String> {
        let text = match &self.settings.jwks {
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|err| format!("fetching {url}: {err}"))?;
                response.text().await.map_err(|err| err.to_string())?
            }
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|err| format!("reading {}: {err}", path.display()))?,
        };
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|err| format!("not a JWKS: {err}"))?;
        Ok(set.keys.iter().filter_map(signing_key).collect())
    }
}

/// The usable asymmetric keys of a JWKS; symmetric and unknown keys are skipped, so an HS*
/// token can never be checked against published (public) material.
fn signing_key(jwk: &Jwk) -> Option<(String, SigningKey)> {
    let kid = jwk.common.key_id.clone()?;
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), Some(alg)) => match alg {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            _ => return None,
        },
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), alg) => match (&ec.curve, alg) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            _ => return None,
        },
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, SigningKey { key, algorithm }))
}

fn scopes_of(claims: &Claims) -> ScopeSet {
    let mut names: Vec<&str> = Vec::new();
    if let Some(scope) = &claims.scope {
        names.extend(scope.split_whitespace());
    }
    match &claims.scp {
        Some(ScopeClaim::Text(text)) => names.extend(text.split_whitespace()),
        Some(ScopeClaim::List(list)) => names.extend(list.iter().map(String::as_str)),
        None => {}
    }
    // Scopes meant for other APIs are expected in a token and simply confer nothing here.
    ScopeSet::new(names.into_iter().filter_map(|name| Scope::parse(name).ok()))
}

fn invalid_token(description: &str) -> AppError {
    AppError::InvalidToken(description.to_owned())
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "the token comes from an untrusted issuer",
        ErrorKind::InvalidAudience => "the token is meant for another audience",
        ErrorKind::InvalidSignature => "the token signature is invalid",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "the token's algorithm is not accepted",
        ErrorKind::MissingRequiredClaim(_) => {
            "the token lacks a required claim (exp, iss, aud, sub)"
        }
        _ => "the token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn scopes_come_from_scope_or_scp_in_either_form() {
        let c = claims(serde_json::json!({"sub": "a", "scope": "openid users:read other"}));
        assert_eq!(scopes_of(&c).to_stored(), "users:read");
        let c = claims(serde_json::json!({"sub": "a", "scp": ["users:write", "admin"]}));
        assert_eq!(scopes_of(&c).to_stored(), "users:write admin");
        let c = claims(serde_json::json!({"sub": "a", "scp": "users:read"}));
        assert_eq!(scopes_of(&c).to_stored(), "users:read");
        assert!(scopes_of(&claims(serde_json::json!({"sub": "a"}))).is_empty());
    }

    #[test]
    fn jwks_sources_are_urls_or_paths() {
        assert!(matches!(
            JwksSource::parse("https://idp/jwks"),
            JwksSource::Url(_)
        ));
        assert!(matches!(
            JwksSource::parse("/etc/jwks.json"),
            JwksSource::File(_)
        ));
        assert!(
            matches!(JwksSource::parse("file:///etc/jwks.json"), JwksSource::File(p) if p == std::path::Path::new("/etc/jwks.json"))
        );
    }
}
