//! Building the application and running the server.

use std::{io, net::SocketAddr, time::Duration};

use poem::{
    Endpoint, EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    middleware::CatchPanic,
    web::Redirect,
};
use sea_orm::{DatabaseConnection, DbErr};

use crate::{
    api::{self, API_PREFIX, edge::edge},
    config::{DbArgs, ServeArgs},
    domain::{Scope, ScopeSet},
    error::AppError,
    store,
};

/// What handlers share: built once at start, cloned cheaply into each request.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub max_body_bytes: usize,
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

/// Connects and migrates: what every command touching the database does first.
pub async fn open_database(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = store::connect(url).await?;
    store::migrate(&db).await?;
    Ok(db)
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to the grace
/// period) before closing the pool, so nothing acknowledged is lost.
pub async fn serve(db_args: &DbArgs, args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let db = open_database(&db_args.database_url).await?;
    let acceptor = TcpListener::bind(args.bind).into_acceptor().await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .ok_or_else(|| io::Error::other("the listener has no socket address"))?;
    bootstrap_admin_key(&db, addr).await?;
    tracing::info!(%addr, docs = %format!("http://{addr}/docs"), "listening");

    let state = AppState {
        db: db.clone(),
        max_body_bytes: args.max_body_bytes,
    };
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app(state),
            shutdown_signal(),
            Some(Duration::from_secs(args.shutdown_grace_secs)),
        )
        .await?;
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
    let (key, secret) =
        store::api_keys::create(db, "bootstrap admin", &ScopeSet::new([Scope::Admin])).await?;
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
