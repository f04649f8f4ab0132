//! Building the application and running the server.

use std::{
    io::{self, Write},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{TryFutureExt, future::Either};
use poem::{
    Endpoint, EndpointExt, IntoResponse, Middleware, Request, Response, Route, Server,
    endpoint::BoxEndpoint,
    error::MethodNotAllowedError,
    get,
    http::Method,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    middleware::{CatchPanic, Cors},
    web::{LocalAddr, RemoteAddr},
};
use sea_orm::DatabaseConnection;

use crate::{
    api::{
        self, API_PREFIX,
        edge::{AllowTable, Edge, render_errors},
        users::{PageCache, UserCache},
    },
    auth::{OAUTH_FLOW_URLS, audit, key_cache::KeyCache, oauth::OAuthVerifier, usage::KeyUsage},
    config::{DbArgs, ServeArgs},
    domain::{NewApiKey, Scope, ScopeSet},
    error::AppError,
    metrics::Metrics,
    rate_limit::{Limits, RateLimiter},
    store::{self, group_commit::Writes},
};

/// What handlers share: built once at start, and attached to every request. One `Arc`, so
/// that attaching it is one atomic count, not one for each of the dozen handles inside it
/// (both runtime threads clone and drop it for every request; perf put the clone at 1.1% of
/// the server's CPU under a GET load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state itself, behind [`AppState`].
pub struct Shared {
    pub db: DatabaseConnection,
    /// The users reads, inline on SQLite (see `store::inline_reads`).
    pub reads: store::Reads,
    pub max_body_bytes: usize,
    /// Present when OAuth access tokens are accepted.
    pub oauth: Option<Arc<OAuthVerifier>>,
    pub key_usage: KeyUsage,
    pub key_cache: KeyCache,
    /// Users as GET by id last sent them, and pages as listings did, on SQLite (see
    /// `store::read_cache`).
    pub user_cache: Option<UserCache>,
    pub page_cache: Option<PageCache>,
    /// User writes (creates, updates, deletes), committed in batches on SQLite (see
    /// `store::group_commit`).
    pub writes: Writes,
    pub policy: Policy,
    /// Present unless every rate limit is off.
    pub limiter: Option<Arc<RateLimiter>>,
    pub metrics: Metrics,
}

impl Shared {
    /// Hits and misses of the read caches there are, by the name the metrics give them.
    pub fn cache_counts(&self) -> [(&'static str, Option<(u64, u64)>); 2] {
        [
            ("user", self.user_cache.as_ref().map(|cache| cache.counts())),
            ("page", self.page_cache.as_ref().map(|cache| cache.counts())),
        ]
    }
}

/// Settings of HTTP behaviour, from the command line.
#[derive(Debug, Clone)]
pub struct Policy {
    pub require_if_match: bool,
    pub idempotency_ttl: chrono::Duration,
    pub request_timeout: Duration,
    pub trust_forwarded_for: bool,
    pub metrics_token: Option<String>,
    pub cors_allow_origins: Vec<String>,
}

impl Policy {
    pub fn from_args(args: &ServeArgs) -> Self {
        Policy {
            require_if_match: args.require_if_match,
            idempotency_ttl: chrono::Duration::seconds(args.idempotency_ttl_secs.max(1) as i64),
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
            trust_forwarded_for: args.trust_forwarded_for,
            metrics_token: args.metrics_token.clone().filter(|t| !t.is_empty()),
            cors_allow_origins: args.cors_allow_origins.clone(),
        }
    }
}

/// The whole HTTP application: API, spec, docs, and the edge every request passes.
pub fn app(state: AppState) -> impl Endpoint {
    let service = api::service();
    let document = api::spec_document();
    let docs = Docs::new(&service, &document);
    let pages = Route::new()
        .nest("/docs", swagger_page(service.swagger_ui(), docs.swagger))
        .at("/redoc", get(html_page(docs.redoc)))
        .at(
            format!("{API_PREFIX}/openapi.json"),
            get(text_document(docs.json, "application/json")),
        )
        .at(
            format!("{API_PREFIX}/openapi.yaml"),
            get(text_document(docs.yaml, "application/yaml")),
        );
    let routes = PagesOrApi {
        pages,
        api: api::routes::routes(api::apis()),
    };
    let allow = AllowTable::new(&document, &[&["/"], PAGES.as_slice()].concat());
    // With CORS, errors become problems below it so that it decorates them too; without, the
    // edge renders them itself and catches panics, saving three layers on every request.
    let cors = (!state.policy.cors_allow_origins.is_empty()).then(|| cors(&state.policy));
    let inner = routes.with_if(cors.is_some(), CorsProblems(cors.unwrap_or_default()));
    Edge::new(inner, state, allow)
}

/// The docs pages and spec files, or else the API. Chosen by a look at the path rather than
/// by a router in front of poem-openapi's own, which cost every API request a second route
/// match and a nest layer (measured with callgrind: 72.5k → 67.7k instructions per GET by id,
/// 46.0k → 40.5k per `/health/live`).
struct PagesOrApi<P, A> {
    pages: P,
    api: A,
}

/// The paths outside the spec: the docs pages and the spec files, all GET-only.
const PAGES: [&str; 5] = [
    "/docs",
    "/docs/oauth-receiver.html",
    "/redoc",
    "/api/v1/openapi.json",
    "/api/v1/openapi.yaml",
];

fn is_page(path: &str) -> bool {
    path.starts_with("/docs/") || PAGES.contains(&path)
}

impl<P: Endpoint, A: Endpoint> Endpoint for PagesOrApi<P, A> {
    type Output = Response;

    // Not an `async fn`, which would hold the request twice (see `Edge::call`).
    fn call(&self, request: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        if is_page(request.uri().path()) {
            Either::Left(self.pages.call(request).map_ok(IntoResponse::into_response))
        } else {
            Either::Right(self.api.call(request).map_ok(IntoResponse::into_response))
        }
    }
}

/// CORS over problem-rendered errors, with panics caught beneath so they get its headers too.
struct CorsProblems(Cors);

impl<E: Endpoint + 'static> Middleware<E> for CorsProblems {
    type Output = BoxEndpoint<'static>;

    fn transform(&self, ep: E) -> Self::Output {
        self.0
            .transform(ep.with(CatchPanic::new()).around(render_errors))
            .map_to_response()
            .boxed()
    }
}

/// The spec in every form it is served in, built once. poem-openapi's docs pages embed the spec
/// it derives; they get the full document instead (with the links it cannot express), so
/// every view shows exactly what `users-api openapi` prints.
struct Docs {
    json: Arc<str>,
    yaml: Arc<str>,
    swagger: Arc<str>,
    redoc: Arc<str>,
}

impl Docs {
    fn new<T: poem_openapi::OpenApi>(
        service: &poem_openapi::OpenApiService<T, ()>,
        document: &serde_json::Value,
    ) -> Self {
        let derived = service.spec();
        let full = serde_json::to_string(document).expect("a JSON document serialises");
        let embed = |html: String| -> Arc<str> {
            assert!(
                html.contains(&derived),
                "the docs page embeds the derived spec"
            );
            html.replacen(&derived, &full, 1).into()
        };
        Docs {
            json: api::render_spec(document, false).into(),
            yaml: api::render_spec(document, true).into(),
            swagger: embed(service.swagger_ui_html()),
            redoc: embed(service.redoc_html()),
        }
    }
}

fn text_document(text: Arc<str>, content_type: &'static str) -> impl Endpoint {
    poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type(content_type)
            .body(text.to_string())
    })
}

fn html_page(html: Arc<str>) -> impl Endpoint {
    poem::endpoint::make_sync(move |_| poem::web::Html(html.to_string()))
}

/// Swagger UI's own routes (its OAuth redirect page) with its index page swapped for ours.
/// Both are pages to read: other methods get 405, as everywhere else.
fn swagger_page(ui: impl Endpoint + 'static, html: Arc<str>) -> impl Endpoint {
    ui.around(move |ui, request| {
        let html = html.clone();
        async move {
            if !matches!(*request.method(), Method::GET | Method::HEAD) {
                return Err(MethodNotAllowedError.into());
            }
            if request.uri().path().trim_end_matches('/').is_empty() {
                return Ok(poem::web::Html(html.to_string()).into_response());
            }
            ui.call(request).await.map(IntoResponse::into_response)
        }
    })
}

/// CORS for the configured origins only; what browsers may send and read is what the API uses.
fn cors(policy: &Policy) -> Cors {
    Cors::new()
        .allow_origins(policy.cors_allow_origins.iter().map(String::as_str))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            "authorization",
            "content-type",
            "if-match",
            "if-none-match",
            "idempotency-key",
            "x-request-id",
        ])
        .expose_headers([
            "etag",
            "location",
            "link",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "idempotent-replayed",
            "x-request-id",
        ])
        .max_age(600)
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
    let acceptor = NoDelay(TcpListener::bind(args.bind).into_acceptor().await?);
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .ok_or_else(|| io::Error::other("the listener has no socket address"))?;
    let (db, ()) = open_database(db_args, async |db| bootstrap_admin_key(db, addr).await).await?;
    let shutdown = shutdown_signal()?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let pinned = crate::runtime::pinned();
    tracing::info!(%addr, docs = %format!("http://{addr}/docs"), workers, pinned, "listening");

    let state = app_state(&db, db_args, args, oauth).await?;
    let key_usage = state.key_usage.clone();
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app(state),
            shutdown,
            Some(Duration::from_secs(args.shutdown_grace_secs)),
        )
        .await?;
    key_usage.flush(&db).await;
    db.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The state handlers share, over an open database, with the background tasks it relies on
/// (key-usage flushes, rate-limit syncs, idempotency purges, WAL checkpoints).
pub(crate) async fn app_state(
    db: &DatabaseConnection,
    db_args: &DbArgs,
    args: &ServeArgs,
    oauth: Option<Arc<OAuthVerifier>>,
) -> Result<AppState, AppError> {
    let key_usage = KeyUsage::default();
    key_usage.spawn_flusher(
        db.clone(),
        Duration::from_secs(args.key_usage_flush_secs.max(1)),
    );
    let limits = Limits {
        per_principal: args.rate_limit,
        per_ip: args.rate_limit_anonymous,
        window: Duration::from_secs(args.rate_limit_window_secs.max(1)),
        sync: Duration::from_millis(args.rate_limit_sync_ms.max(10)),
    };
    let limiter = (limits.per_principal > 0 || limits.per_ip > 0).then(|| {
        let limiter = Arc::new(RateLimiter::new(db.clone(), limits));
        limiter.spawn_syncer();
        limiter
    });
    spawn_idempotency_purge(db.clone());
    let reads = store::Reads::new(db, db_args.sqlite_locking).await?;
    const MIB: usize = 1024 * 1024;
    let inline = reads.inline_shared();
    let user_cache = inline
        .clone()
        .and_then(|inline| UserCache::new(inline, args.user_cache_mib * MIB));
    let page_cache = inline.and_then(|inline| PageCache::new(inline, args.page_cache_mib * MIB));
    Ok(AppState(Arc::new(Shared {
        db: db.clone(),
        reads,
        user_cache,
        page_cache,
        max_body_bytes: args.max_body_bytes,
        oauth,
        key_usage,
        writes: Writes::start(db, db_args).await?,
        key_cache: KeyCache::new(
            Duration::from_secs(args.key_cache_ttl_secs),
            args.key_cache_capacity,
        ),
        policy: Policy::from_args(args),
        limiter,
        metrics: Metrics::new(),
    })))
}

/// Expired idempotency records are dropped hourly (a reused key also drops its own).
fn spawn_idempotency_purge(db: DatabaseConnection) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            match store::idempotency::purge_expired(&db).await {
                Ok(purged) if purged > 0 => {
                    tracing::info!(purged, "expired idempotency keys purged")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "could not purge idempotency keys"),
            }
        }
    });
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
    audit::key_created(&key, "bootstrap");
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
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}

/// Accepted connections with Nagle's algorithm off. A response larger than a segment (a page
/// of users, over a network) goes out as full segments and a short last one, which Nagle holds
/// back until the client has acknowledged the rest; a client delaying that acknowledgement
/// (Linux waits up to 40 ms) delays the response by as much. hyper writes each response's head
/// and body together, so there is nothing for Nagle to coalesce.
struct NoDelay(TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let accepted = self.0.accept().await?;
        if let Err(err) = accepted.0.set_nodelay(true) {
            // Only a connection already failing refuses it; it ends on its own.
            tracing::debug!(%err, "TCP_NODELAY not set on an accepted connection");
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let mut acceptor = NoDelay(
            TcpListener::bind("127.0.0.1:0")
                .into_acceptor()
                .await
                .unwrap(),
        );
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server_side, ..) = acceptor.accept().await.unwrap();
        assert!(server_side.nodelay().unwrap());
        // The default, so that the assertion above tells the wrapper's doing.
        assert!(!client.nodelay().unwrap());
    }
}
