//! Wiring: the configuration read once, turned into the store, the service and the HTTP app,
//! and the server run until a signal stops it.

use std::{
    error::Error,
    io::{self, Write},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use poem::{
    Server,
    listener::{Acceptor, Listener, TcpListener},
};

use crate::{
    config::{DbArgs, ServeArgs},
    connections::{Guarded, Hangups},
    domain::{NewApiKey, Scope, ScopeSet},
    error::AppError,
    http,
    service::{self, Service},
    store::Store,
};

/// How long a stop waits for event streams to send their last comment.
const STREAMS_GRACE: Duration = Duration::from_secs(2);

/// Opens the database for a command run by the operator (`migrate`, `keys`): migrated, with
/// a service that has no caches, limits or identity provider.
pub async fn open_for_command(db: &DbArgs) -> Result<(Store, Service), AppError> {
    let (store, ()) = Store::open(&db.settings(), async |_| Ok(())).await?;
    let service = Service::new(store.clone(), service::Settings::default()).await;
    Ok((store, service))
}

/// Why the server cannot listen on `addr`, and what to change.
fn cannot_listen(addr: std::net::SocketAddr, err: io::Error) -> io::Error {
    let advice = match err.kind() {
        io::ErrorKind::AddrInUse => {
            "another process is listening there; stop it, or choose another address with \
             --bind or BIND (port 0 picks a free one)"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges; choose another with --bind or BIND"
        }
        io::ErrorKind::AddrNotAvailable => {
            "no network interface of this machine has that address; choose another with --bind \
             or BIND"
        }
        _ => "choose another address with --bind or BIND",
    };
    io::Error::new(
        err.kind(),
        format!("cannot listen on {addr}: {err}; {advice}"),
    )
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to the grace
/// period) before closing the database, so nothing acknowledged is lost.
pub async fn serve(args: &ServeArgs) -> Result<(), Box<dyn Error>> {
    let service_settings = args.service_settings()?;
    let db_settings = args.db_settings();
    let acceptor = TcpListener::bind(args.bind)
        .into_acceptor()
        .await
        .map_err(|err| cannot_listen(args.bind, err))?;
    let stopping = tokio_util::sync::CancellationToken::new();
    let hangups = Hangups::default();
    let acceptor = Guarded::new(
        acceptor,
        args.connection_limits(),
        stopping.clone(),
        hangups.clone(),
    );
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .ok_or_else(|| io::Error::other("the listener has no socket address"))?;
    let (store, ()) = Store::open(&db_settings, async |store| {
        bootstrap_admin_key(store, addr).await
    })
    .await?;
    let store = store.serve(&db_settings).await?;
    let service = Arc::new(Service::new(store.clone(), service_settings).await);
    service.start_background().await?;
    let signal = shutdown_signal()?;
    let streams = service.clone();
    let shutdown = async move {
        signal.await;
        // Streams end first, each with its last comment, so that their clients reconnect
        // elsewhere instead of waiting out the grace period.
        streams.close_streams(STREAMS_GRACE).await;
        stopping.cancel();
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%addr, docs = %format!("http://{addr}/docs"), workers, "listening");

    let app = http::app(http::State::new(
        service.clone(),
        args.http_settings(),
        hangups,
    ));
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app,
            shutdown,
            Some(Duration::from_secs(args.shutdown_grace_secs)),
        )
        .await?;
    service.flush().await;
    store.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// A newcomer's first `cargo run` must end with a usable key, so a database without any key
/// gets one admin key, shown once on the terminal (never logged) and never again.
async fn bootstrap_admin_key(store: &Store, addr: SocketAddr) -> Result<(), AppError> {
    let service = Service::new(store.clone(), service::Settings::default()).await;
    if service.any_api_key().await? {
        // The first key was shown once, at the first start; say how to make another.
        tracing::info!(
            "API keys exist, so none is created; a lost key cannot be shown again, but a new \
             admin key can be made, beside the running server too: \
             users-api keys create --name NAME --scope admin"
        );
        return Ok(());
    }
    let bootstrap = NewApiKey {
        name: "bootstrap admin".into(),
        scopes: ScopeSet::new([Scope::Admin]),
        expires_at: None,
    };
    let (key, secret) = service
        .create_api_key_as_operator(bootstrap, "bootstrap")
        .await?;
    let rule = "=".repeat(78);
    let mut out = io::stdout().lock();
    let shown = writeln!(
        out,
        "{rule}\n  users-api: no API keys existed, so this admin key (id {id}) was created.\n  \
         It is shown only this once; store it now.\n\n    {key}\n\n  \
         Try: curl -H 'Authorization: Bearer {key}' http://{addr}/api/v1/users\n{rule}",
        id = key.id,
        key = secret.plaintext(),
    )
    .and_then(|()| out.flush());
    // A closed standard output is no reason not to serve; the key is, though, of no use.
    if let Err(err) = shown {
        tracing::warn!(
            key_id = key.id,
            error = %err,
            "the bootstrap admin key could not be shown; revoke it with `users-api keys revoke` \
             and create one with `users-api keys create`"
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, before the caller announces
/// it is listening: installed lazily (on the future's first poll), a signal arriving in between
/// would kill the process the default way instead of shutting it down gracefully.
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}
