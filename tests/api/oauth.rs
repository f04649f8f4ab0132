//! OAuth 2.0 access tokens end to end: real RSA and EC keys generated here, a JWKS served on a
//! loopback port, tokens signed per case.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use p256::pkcs8::EncodePrivateKey;
use poem::{
    EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json},
};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app_with};

const ISSUER: &str = "https://idp.test/realms/main";
const AUDIENCE: &str = "users-api";

struct Keys {
    rsa: EncodingKey,
    /// Published later, to test rotation.
    rsa_next: EncodingKey,
    /// Never published: a token signed with it under a published `kid` has a bad signature.
    rsa_forged: EncodingKey,
    ec: EncodingKey,
    /// The RSA public key, as an attacker would use it for an HS256 "signature".
    rsa_public_der: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand_core::OsRng;
        let rsa_key = || rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let rsa = rsa_key();
        let der = |key: &rsa::RsaPrivateKey| {
            EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes())
        };
        let ec = p256::SecretKey::random(&mut rng);
        Keys {
            rsa: der(&rsa),
            rsa_next: der(&rsa_key()),
            rsa_forged: der(&rsa_key()),
            ec: EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()),
            rsa_public_der: rsa.to_public_key().to_pkcs1_der().unwrap().into_vec(),
        }
    })
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

/// A JWKS endpoint whose key set a test can change, counting how often it is fetched.
struct Idp {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

#[handler]
fn jwks(Data(state): Data<&(Arc<Mutex<Value>>, Arc<AtomicUsize>)>) -> Json<Value> {
    state.1.fetch_add(1, Ordering::SeqCst);
    Json(state.0.lock().unwrap().clone())
}

async fn start_idp(initial: Vec<Value>) -> Idp {
    let keys = Arc::new(Mutex::new(json!({ "keys": initial })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    let app = Route::new()
        .at("/jwks", get(jwks))
        .data((keys.clone(), fetches.clone()));
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    Idp {
        url: format!("http://{addr}/jwks"),
        keys,
        fetches,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(scope: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "exp": now() + 300, "iat": now(), "scope": scope})
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn app_with_idp(idp: &Idp, extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--oauth-issuer",
        ISSUER,
        "--oauth-audience",
        AUDIENCE,
        "--oauth-jwks-url",
        &idp.url,
        "--oauth-leeway-secs",
        "5",
    ];
    args.extend(extra);
    spawn_app_with(&args).await
}

async fn list_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn assert_rejected(app: &TestApp, token: &str, description: &str) {
    let response = list_with(app, token).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        format!(r#"Bearer error="invalid_token", error_description="{description}""#)
    );
    let problem = assert_problem(response, 401).await;
    assert_eq!(problem["detail"], description);
}

#[tokio::test]
async fn valid_rsa_and_ec_tokens_are_accepted_and_audited() {
    let keys = keys();
    let idp = start_idp(vec![
        jwk(&keys.rsa, Algorithm::RS256, "rsa-1"),
        jwk(&keys.ec, Algorithm::ES256, "ec-1"),
    ])
    .await;
    let app = app_with_idp(&idp, &[]).await;

    let rsa_token = sign(
        Algorithm::RS256,
        "rsa-1",
        &claims("openid users:read users:write"),
        &keys.rsa,
    );
    assert_eq!(list_with(&app, &rsa_token).await.status(), 200);
    let created = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&rsa_token)
        .json(&json!({"name": "Ann", "role": "Dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["created_by"], "oauth:user-42");
    assert_eq!(user["updated_by"], "oauth:user-42");

    // `scp` as an array, signed with the EC key.
    let mut ec_claims = claims("");
    ec_claims["scp"] = json!(["users:write"]);
    ec_claims["sub"] = json!("service-7");
    let ec_token = sign(Algorithm::ES256, "ec-1", &ec_claims, &keys.ec);
    let patched = app
        .client
        .patch(app.url(&format!("/api/v1/users/{}", user["id"])))
        .bearer_auth(&ec_token)
        .json(&json!({"role": "Lead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["created_by"], "oauth:user-42");
    assert_eq!(patched["updated_by"], "oauth:service-7");

    // A key-authenticated write is attributed to the key.
    let by_key: Value = app
        .update_user(user["id"].as_i64().unwrap(), &json!({"role": "Dev"}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        by_key["updated_by"]
            .as_str()
            .unwrap()
            .starts_with("api-key:")
    );

    // Tokens never reach the logs.
    assert!(!app.logs().await.contains(&rsa_token));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_rfc_6750_challenges() {
    let keys = keys();
    let idp = start_idp(vec![jwk(&keys.rsa, Algorithm::RS256, "rsa-1")]).await;
    let app = app_with_idp(&idp, &["--oauth-jwks-min-refresh-secs", "3600"]).await;
    let rs = |claims: &Value| sign(Algorithm::RS256, "rsa-1", claims, &keys.rsa);

    let mut expired = claims("users:read");
    expired["exp"] = json!(now() - 60);
    assert_rejected(&app, &rs(&expired), "the token has expired").await;

    let mut early = claims("users:read");
    early["nbf"] = json!(now() + 600);
    assert_rejected(&app, &rs(&early), "the token is not valid yet").await;

    let mut issuer = claims("users:read");
    issuer["iss"] = json!("https://evil.test");
    assert_rejected(
        &app,
        &rs(&issuer),
        "the token comes from an untrusted issuer",
    )
    .await;

    let mut audience = claims("users:read");
    audience["aud"] = json!("another-api");
    assert_rejected(
        &app,
        &rs(&audience),
        "the token is meant for another audience",
    )
    .await;

    let mut no_sub = claims("users:read");
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_rejected(
        &app,
        &rs(&no_sub),
        "the token lacks a required claim (exp, iss, aud, sub)",
    )
    .await;

    let forged = sign(
        Algorithm::RS256,
        "rsa-1",
        &claims("users:read"),
        &keys.rsa_forged,
    );
    assert_rejected(&app, &forged, "the token signature is invalid").await;

    // `alg: none`, unsigned.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
    assert_rejected(
        &app,
        &format!("{header}.{payload}."),
        "the token is malformed",
    )
    .await;

    // HS256 with the published RSA public key as the HMAC secret: the classic confusion attack.
    let confused = sign(
        Algorithm::HS256,
        "rsa-1",
        &claims("admin"),
        &EncodingKey::from_secret(&keys.rsa_public_der),
    );
    assert_rejected(
        &app,
        &confused,
        "the token's algorithm does not match its signing key",
    )
    .await;

    // A good token lacking the scope is a 403 naming the scope.
    let reader = rs(&claims("users:read"));
    let denied = app
        .client
        .delete(app.url("/api/v1/users/1"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(
        denied.headers()["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="users:write""#
    );
    assert_problem(denied, 403).await;
    let no_scopes = rs(&claims("openid profile"));
    assert_problem(list_with(&app, &no_scopes).await, 403).await;
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_rate_limited_refresh_so_rotation_works() {
    let keys = keys();
    let idp = start_idp(vec![jwk(&keys.rsa, Algorithm::RS256, "rsa-1")]).await;
    let app = app_with_idp(&idp, &["--oauth-jwks-min-refresh-secs", "2"]).await;
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "keys are loaded at start"
    );
    let rotated = sign(
        Algorithm::RS256,
        "rsa-2",
        &claims("users:read"),
        &keys.rsa_next,
    );

    // Immediately after start the refresh window is closed: the unknown kid costs no fetch.
    assert_rejected(&app, &rotated, "the token is signed with an unknown key").await;
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    // The provider rotates; once the window reopens, one token triggers one fetch.
    idp.keys.lock().unwrap()["keys"] = json!([jwk(&keys.rsa_next, Algorithm::RS256, "rsa-2")]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(list_with(&app, &rotated).await.status(), 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    // Many unknown kids within the window: still no further fetch.
    for i in 0..10 {
        let stray = sign(
            Algorithm::RS256,
            &format!("stray-{i}"),
            &claims("users:read"),
            &keys.rsa,
        );
        assert_rejected(&app, &stray, "the token is signed with an unknown key").await;
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "refreshes are rate-limited"
    );
    // The retired key is gone with the refresh.
    let old = sign(Algorithm::RS256, "rsa-1", &claims("users:read"), &keys.rsa);
    assert_rejected(&app, &old, "the token is signed with an unknown key").await;
}

#[tokio::test]
async fn an_unreachable_jwks_leaves_api_keys_working() {
    let keys = keys();
    // A port nothing listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/jwks");
    let app = spawn_app_with(&[
        "--oauth-issuer",
        ISSUER,
        "--oauth-audience",
        AUDIENCE,
        "--oauth-jwks-url",
        &url,
    ])
    .await;
    assert_eq!(
        app.list_users("").await.status(),
        200,
        "API keys work without the provider"
    );
    let token = sign(Algorithm::RS256, "rsa-1", &claims("users:read"), &keys.rsa);
    let problem = assert_problem(list_with(&app, &token).await, 503).await;
    assert_eq!(problem["type"], "urn:users-api:problem:unavailable");
    assert!(
        app.logs()
            .await
            .contains("could not load identity provider signing keys")
    );
}

#[tokio::test]
async fn tokens_are_refused_when_oauth_is_not_configured() {
    let keys = keys();
    let app = crate::helpers::spawn_app().await;
    let token = sign(Algorithm::RS256, "rsa-1", &claims("admin"), &keys.rsa);
    let response = list_with(&app, &token).await;
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn the_live_spec_shows_the_configured_provider() {
    let keys = keys();
    let idp = start_idp(vec![jwk(&keys.rsa, Algorithm::RS256, "rsa-1")]).await;
    let app = app_with_idp(
        &idp,
        &[
            "--oauth-authorization-url",
            "https://idp.test/authorize",
            "--oauth-token-url",
            "https://idp.test/token",
        ],
    )
    .await;
    let spec: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flows = &spec["components"]["securitySchemes"]["OAuth2"]["flows"];
    assert_eq!(
        flows["authorizationCode"]["authorizationUrl"],
        "https://idp.test/authorize"
    );
    assert_eq!(
        flows["clientCredentials"]["tokenUrl"],
        "https://idp.test/token"
    );
    let docs = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        docs.contains("https://idp.test/authorize"),
        "Swagger UI uses the same spec"
    );
}

#[test]
fn half_configured_oauth_refuses_to_start() {
    let output = std::process::Command::new(crate::helpers::BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--oauth-issuer", ISSUER])
        .env_remove("OAUTH_AUDIENCE")
        .env_remove("OAUTH_JWKS_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--oauth-audience"));
}
