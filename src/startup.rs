//! Building the application and running the server.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use poem::{
    Endpoint, EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    middleware::CatchPanic,
    web::Redirect,
};
use sea_orm::DatabaseConnection;

use crate::{
    api::{self, API_PREFIX, edge::edge},
    auth::{OAUTH_FLOW_URLS, oauth::OAuthVerifier, usage::KeyUsage},
    config::{DbArgs, ServeArgs},
    domain::{NewApiKey, Scope, ScopeSet},
    error::AppError,
    store,
};

/// What handlers share: built once at start, cloned cheaply into each request.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub max_body_bytes: usize,
    /// Present when OAuth access tokens are accepted.
    pub oauth: Option<Arc<OAuthVerifier>>,
    pub key_usage: KeyUsage,
}

#[handler]
fn to_docs() -> Redirect {
    Redirect::see_other("/docs")
}

/// The whole HTTP application: API, spec, docs, and the edge every request passes.
pub fn app(state: AppState) -> impl Endpoint {
    let service = api::service();
    Route::new()
        .at("/", get(to_docs))
        .nest("/docs", service.swagger_ui())
        .at(
            format!("{API_PREFIX}/openapi.json"),
            get(service.spec_endpoint()),
        )
        .at(
            format!("{API_PREFIX}/openapi.yaml"),
            get(service.spec_endpoint_yaml()),
        )
        .nest(API_PREFIX, service)
        .data(state)
        .with(CatchPanic::new())
        .around(edge)
}

/// Connects, migrates, then runs `first_start` under the migration lock: what every command
/// touching the database does first. A database that is not up yet (or briefly unreachable) is
/// retried with backoff until `--db-startup-wait-secs` runs out, each failure logged.
pub async fn open_database<T>(
    args: &DbArgs,
    first_start: impl AsyncFn(&DatabaseConnection) -> Result<T, AppError>,
) -> Result<(DatabaseConnection, T), AppError> {
    let deadline = Instant::now() + Duration::from_secs(args.db_startup_wait_secs);
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        let outcome = match store::connect(args).await {
            Ok(db) => store::migrate(&db, async |db| first_start(db).await)
                .await
                .map(|value| (db, value)),
            Err(err) => Err(AppError::from(err)),
        };
        match outcome {
            Err(AppError::Unavailable(reason)) if Instant::now() + delay < deadline => {
                tracing::warn!(
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    %reason,
                    "database not reachable yet; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(AppError::Unavailable(reason)) => {
                return Err(AppError::Unavailable(format!(
                    "gave up on the database after {attempt} attempts: {reason}"
                )));
            }
            other => {
                if attempt > 1 && other.is_ok() {
                    tracing::info!(attempt, "database reachable");
                }
                return other;
            }
        }
    }
    unreachable!("the loop returns")
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to the grace
/// period) before closing the pool, so nothing acknowledged is lost.
pub async fn serve(db_args: &DbArgs, args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let oauth_settings = args.oauth.settings()?;
    if let Some(urls) = args.oauth.flow_urls() {
        // Before the spec is first built, which reads it.
        let _ = OAUTH_FLOW_URLS.set(urls);
    }
    let oauth = match oauth_settings {
        Some(settings) => {
            tracing::info!(issuer = %settings.issuer, audience = %settings.audience, "accepting OAuth access tokens");
            Some(Arc::new(OAuthVerifier::new(settings).await))
        }
        None => None,
    };
    let acceptor = TcpListener::bind(args.bind).into_acceptor().await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .ok_or_else(|| io::Error::other("the listener has no socket address"))?;
    let (db, ()) = open_database(db_args, async |db| bootstrap_admin_key(db, addr).await).await?;
    tracing::info!(%addr, docs = %format!("http://{addr}/docs"), "listening");

    let key_usage = KeyUsage::default();
    key_usage.spawn_flusher(
        db.clone(),
        Duration::from_secs(args.key_usage_flush_secs.max(1)),
    );
    let state = AppState {
        db: db.clone(),
        max_body_bytes: args.max_body_bytes,
        oauth,
        key_usage: key_usage.clone(),
    };
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app(state),
            shutdown_signal(),
            Some(Duration::from_secs(args.shutdown_grace_secs)),
        )
        .await?;
    key_usage.flush(&db).await;
    db.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// A newcomer's first `cargo run` must end with a usable key, so a database without any key
/// gets one admin key, shown once on the terminal (never logged) and never again.
async fn bootstrap_admin_key(db: &DatabaseConnection, addr: SocketAddr) -> Result<(), AppError> {
    if store::api_keys::count(db).await? > 0 {
        return Ok(());
    }
    let bootstrap = NewApiKey {
        name: "bootstrap admin".into(),
        scopes: ScopeSet::new([Scope::Admin]),
        expires_at: None,
    };
    let (key, secret) = store::api_keys::create(db, &bootstrap, None).await?;
    tracing::info!(
        event = "api_key.created",
        key_id = key.id,
        key_prefix = %key.prefix,
        scopes = %key.scopes,
        actor = "bootstrap",
        "API key created"
    );
    let rule = "=".repeat(78);
    println!(
        "{rule}\n  users-api: no API keys existed, so this admin key (id {id}) was created.\n  \
         It is shown only this once; store it now.\n\n    {key}\n\n  \
         Try: curl -H 'Authorization: Bearer {key}' http://{addr}/api/v1/users\n{rule}",
        id = key.id,
        key = secret.plaintext(),
    );
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested; finishing in-flight requests");
}
