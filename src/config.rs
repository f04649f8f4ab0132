//! Command line and environment: every setting in one place, documented by `--help`, read once
//! and turned into the plain settings each layer takes. Nothing below `startup` sees clap.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    connections,
    domain::{NewApiKey, Scope},
    http::{self, OAuthFlowUrls},
    service::{
        self, Limits,
        oauth::{JwksSource, OAuthSettings},
    },
    store::{DbSettings, SqliteSettings},
    telemetry::LogFormat,
};

/// users-api: a versioned, documented, authenticated REST API for users.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, which also runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The `serve` settings in effect: the subcommand's, or those given without one.
    pub fn serve_args(&self) -> &ServeArgs {
        match &self.command {
            Some(Command::Serve(serve)) => serve,
            _ => &self.serve,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve the API (the default).
    Serve(Box<ServeArgs>),
    /// Run database migrations and exit.
    Migrate,
    /// Print the OpenAPI spec (JSON unless --yaml).
    Openapi {
        /// Print YAML instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
    /// Manage API keys; works while the server runs.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once, as the last line of standard output.
    #[command(after_help = "Examples:\n  \
        users-api keys create --name me --scope admin\n  \
        users-api keys create --name ci-reader --scope users:read --expires-at 2027-06-30T00:00:00Z\n  \
        users-api keys create --name app --scope users:read --scope users:write \\\n      \
        --database-url postgres://postgres@127.0.0.1:5432/users")]
    Create {
        /// A label saying who or what uses the key.
        #[arg(long, value_parser = NewApiKey::parse_name)]
        name: String,
        /// A scope to grant (users:read, users:write, admin); repeat for several.
        #[arg(long = "scope", required = true, value_parser = Scope::parse)]
        scopes: Vec<Scope>,
        /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z); never if omitted.
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id; it stops working at once.
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: i64,
    },
}

/// A browser origin as browsers send it: `http` or `https`, a host, maybe a port; nothing
/// else (a path, `*`, `null`) could ever equal an `Origin` header.
fn parse_origin(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let wrong = |why: &str| {
        format!(
            "`{raw}` is not an origin ({why}); write it as scheme://host[:port], e.g. https://app.example.com"
        )
    };
    let uri: poem::http::Uri = raw.parse().map_err(|_| wrong("unreadable"))?;
    let scheme = uri.scheme_str().ok_or_else(|| wrong("no scheme"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(wrong("the scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| wrong("no host"))?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(wrong("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(wrong("an origin has no path"));
    }
    Ok(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

/// A proxy's address (one host) or a CIDR block.
fn parse_proxy(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("`{raw}` is neither an IP address nor a CIDR block such as 10.0.0.0/8")
        })
}

fn parse_expiry(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    NewApiKey::parse_expiry(raw, chrono::Utc::now())
}

/// Settings every command that touches the database shares; global, so given after any
/// subcommand (`users-api keys list --database-url …`).
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: `sqlite://PATH` or `postgres://…`.
    ///
    /// A SQLite file is created if missing. PostgreSQL is for running several instances
    /// against one database; the same migrations run on both.
    #[arg(
        help_heading = "Database",
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://users.db"
    )]
    pub database_url: String,
    /// Most connections this process keeps open to the database.
    ///
    /// On SQLite, user writes go through one more connection of their own.
    #[arg(
        help_heading = "Database",
        long,
        global = true,
        env = "DB_MAX_CONNECTIONS",
        default_value_t = 8
    )]
    pub db_max_connections: u32,
    /// Seconds a request waits for a free connection before it gets a 503.
    #[arg(
        help_heading = "Database",
        long,
        global = true,
        env = "DB_ACQUIRE_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub db_acquire_timeout_secs: u64,
    /// Seconds after which PostgreSQL aborts a statement (0: no limit).
    #[arg(
        help_heading = "Database",
        long,
        global = true,
        env = "DB_STATEMENT_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub db_statement_timeout_secs: u64,
    /// SQLite durability: `normal` survives a crash of the process, `full` also power loss.
    ///
    /// With `normal`, every acknowledged write survives kill -9; `full` also survives the
    /// machine losing power, at a cost in write throughput.
    #[arg(help_heading = "Database", long, global = true, env = "SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSync::Normal)]
    pub sqlite_synchronous: SqliteSync,
    /// Seconds to keep retrying, at start, a database that is not up yet.
    #[arg(
        help_heading = "Database",
        long,
        global = true,
        env = "DB_STARTUP_WAIT_SECS",
        default_value_t = 60
    )]
    pub db_startup_wait_secs: u64,
}

impl DbArgs {
    /// The settings for a command run by the operator; `serve` adds its own for SQLite.
    pub fn settings(&self) -> DbSettings {
        DbSettings {
            url: self.database_url.clone(),
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_secs(self.db_acquire_timeout_secs.max(1)),
            statement_timeout: (self.db_statement_timeout_secs > 0)
                .then(|| Duration::from_secs(self.db_statement_timeout_secs)),
            startup_wait: Duration::from_secs(self.db_startup_wait_secs),
            sqlite: SqliteSettings {
                sync_full: self.sqlite_synchronous == SqliteSync::Full,
                wal_limit_bytes: u64::from(DEFAULT_WAL_LIMIT_MIB) << 20,
                group_commit: true,
            },
        }
    }
}

const DEFAULT_WAL_LIMIT_MIB: u32 = 64;

/// How every command logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: `pretty` for people, `json` for log collectors.
    ///
    /// `RUST_LOG` sets what is logged (e.g. `RUST_LOG=debug`); by default a server logs a
    /// line per request, and the other commands only warnings.
    #[arg(help_heading = "Logging", long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Pretty)]
    pub log_format: LogFormatArg,
}

impl LogArgs {
    pub fn format(&self) -> LogFormat {
        match self.log_format {
            LogFormatArg::Pretty => LogFormat::Pretty,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// Everything `serve` takes, grouped for `--help` in the order a deployment decides them.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    ///
    /// The start-up log line `listening` names the address, so a free port is easy to find.
    #[arg(
        help_heading = "Server",
        long,
        env = "BIND",
        default_value = "127.0.0.1:5000"
    )]
    pub bind: SocketAddr,
    /// Threads that serve requests; one per core if not given.
    ///
    /// The start-up log line `listening` says how many. Fewer leave cores to other busy
    /// processes on the machine (a database, a load generator).
    #[arg(help_heading = "Server", long, env = "WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,
    /// Seconds in-flight requests may take to finish after SIGINT or SIGTERM.
    #[arg(
        help_heading = "Server",
        long,
        env = "SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
    /// Open connections at most; more wait in the kernel's backlog until one closes.
    #[arg(
        help_heading = "Server",
        long,
        env = "MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, from its first byte (or the connection's start).
    ///
    /// A connection that sends nothing, or its headers a line at a time, is closed after this.
    #[arg(
        help_heading = "Server",
        long,
        env = "HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request.
    #[arg(
        help_heading = "Server",
        long,
        env = "IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: u64,
    #[command(flatten)]
    pub db: DbArgs,
    /// Seconds a verified API key is trusted without asking the database again (0: off).
    ///
    /// This bounds how long a revocation made elsewhere (another instance, the CLI) takes to
    /// apply here; one made through this instance applies at once.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "KEY_CACHE_TTL_SECS",
        default_value_t = 5
    )]
    pub key_cache_ttl_secs: u64,
    /// Most API keys kept in that cache.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "KEY_CACHE_CAPACITY",
        default_value_t = 10_000
    )]
    pub key_cache_capacity: usize,
    /// Seconds between writes of the keys' `last_used_at` to the database.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "KEY_USAGE_FLUSH_SECS",
        default_value_t = 60
    )]
    pub key_usage_flush_secs: u64,
    /// Require `If-Match` on PUT, PATCH and DELETE of users (428 without it).
    #[arg(help_heading = "Authentication", long, env = "REQUIRE_IF_MATCH")]
    pub require_if_match: bool,
    /// Seconds an `Idempotency-Key` is remembered.
    #[arg(help_heading = "Authentication", long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub idempotency_ttl_secs: u64,
    /// If set, `GET /metrics` needs `Authorization: Bearer <this token>`.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "METRICS_TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    #[command(flatten)]
    pub oauth: OAuthArgs,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(help_heading = "Limits", long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Requests per window per API key or token subject (0: no limit).
    #[arg(
        help_heading = "Limits",
        long,
        env = "RATE_LIMIT",
        default_value_t = 1200
    )]
    pub rate_limit: u64,
    /// Requests per window per client address without valid credentials (0: no limit).
    #[arg(
        help_heading = "Limits",
        long,
        env = "RATE_LIMIT_ANONYMOUS",
        default_value_t = 120
    )]
    pub rate_limit_anonymous: u64,
    /// The rate-limit window, in seconds.
    #[arg(
        help_heading = "Limits",
        long,
        env = "RATE_LIMIT_WINDOW_SECS",
        default_value_t = 60
    )]
    pub rate_limit_window_secs: u64,
    /// Milliseconds between shares of this instance's rate-limit counts with the others.
    #[arg(
        help_heading = "Limits",
        long,
        env = "RATE_LIMIT_SYNC_MS",
        default_value_t = 500
    )]
    pub rate_limit_sync_ms: u64,
    /// Behind one proxy: the client is the right-most `X-Forwarded-For` address.
    ///
    /// Only behind a proxy that appends the address it received the request from (nginx:
    /// `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`); the rest of the header
    /// is the client's to write, and is ignored.
    #[arg(help_heading = "Limits", long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Behind several proxies: their addresses or CIDR blocks, comma-separated.
    ///
    /// The client is the right-most address, of the peer and the `X-Forwarded-For` hops, that
    /// is not one of these (e.g. `10.0.0.0/8,192.168.1.7`). Implies reading the header.
    #[arg(
        help_heading = "Limits",
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_proxy
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a request may take before it is answered with a 503.
    #[arg(
        help_heading = "Limits",
        long,
        env = "REQUEST_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub request_timeout_secs: u64,
    /// Hours the change feed keeps events; older ones are pruned.
    ///
    /// A reader resuming from an event older than this is told to resynchronise (410).
    #[arg(
        help_heading = "Limits",
        long,
        env = "EVENTS_RETENTION_HOURS",
        default_value_t = 168,
        value_parser = clap::value_parser!(u64).range(1..=87_600)
    )]
    pub events_retention_hours: u64,
    /// Event streams open at once on this server; more are refused with 503.
    ///
    /// Each is an open connection too, counted against --max-connections.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MAX_STREAMS",
        default_value_t = 512
    )]
    pub max_streams: usize,
    /// Event streams open at once per API key or token subject; more are refused with 429.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MAX_STREAMS_PER_PRINCIPAL",
        default_value_t = 64
    )]
    pub max_streams_per_principal: usize,
    /// Browser origins allowed to call the API (CORS); none by default.
    ///
    /// E.g. `https://app.example.com`; repeat the flag or separate origins with commas.
    /// Without any, CORS is off and browsers refuse cross-origin calls.
    #[arg(
        help_heading = "Limits",
        long = "cors-allow-origin",
        env = "CORS_ALLOW_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub cors_allow_origins: Vec<String>,
    #[command(flatten)]
    pub log: LogArgs,
    /// MiB for users kept as GET by id sent them, on SQLite (0: off).
    ///
    /// A kept user is sent only while nothing was committed to the database since it was
    /// read, so it is never stale.
    #[arg(
        help_heading = "Performance",
        long,
        env = "USER_CACHE_MIB",
        default_value_t = 4
    )]
    pub user_cache_mib: usize,
    /// MiB for pages kept as a listing sent them, on SQLite (0: off).
    ///
    /// Kept by query string, and sent only while nothing was committed since, as users are.
    #[arg(
        help_heading = "Performance",
        long,
        env = "PAGE_CACHE_MIB",
        default_value_t = 8
    )]
    pub page_cache_mib: usize,
    /// MiB the SQLite write-ahead log may hold before it is started over (0: SQLite decides).
    ///
    /// Past the limit, writes wait a few ms while the log is started over and its file cut
    /// back to this size. With 0, SQLite runs its checkpoints inside whichever commit crosses
    /// 1,000 pages.
    #[arg(help_heading = "Performance", long, env = "SQLITE_WAL_LIMIT_MIB", default_value_t = DEFAULT_WAL_LIMIT_MIB, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub sqlite_wal_limit_mib: u32,
    /// Commit concurrent user writes on SQLite together (`false`: one transaction each).
    ///
    /// Up to 64 writes share a transaction, and each is answered after that commit, so an
    /// acknowledged write is as durable as one committed alone.
    #[arg(help_heading = "Performance", long, env = "SQLITE_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub sqlite_group_commit: bool,
    /// Milliseconds the change feed gathers new events before sending them to streams (0: at once).
    ///
    /// Events committed within this go to every stream in one write, which spares CPU with
    /// many streams; each event waits up to this long.
    #[arg(
        help_heading = "Performance",
        long,
        env = "EVENTS_BATCH_MS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    pub events_batch_ms: u64,
}

impl ServeArgs {
    /// The database settings, SQLite's write path included.
    pub fn db_settings(&self) -> DbSettings {
        let mut settings = self.db.settings();
        settings.sqlite.wal_limit_bytes = u64::from(self.sqlite_wal_limit_mib) << 20;
        settings.sqlite.group_commit = self.sqlite_group_commit;
        settings
    }

    /// The guards on every connection.
    pub fn connection_limits(&self) -> connections::Limits {
        connections::Limits {
            max_connections: self.max_connections.max(1),
            header_read: Duration::from_secs(self.header_read_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
        }
    }

    /// The service's settings; an error for a half-configured identity provider.
    pub fn service_settings(&self) -> Result<service::Settings, String> {
        Ok(service::Settings {
            require_if_match: self.require_if_match,
            idempotency_ttl: chrono::Duration::seconds(self.idempotency_ttl_secs.max(1) as i64),
            key_cache_ttl: Duration::from_secs(self.key_cache_ttl_secs),
            key_cache_capacity: self.key_cache_capacity,
            key_usage_flush: Duration::from_secs(self.key_usage_flush_secs.max(1)),
            limits: Limits {
                per_principal: self.rate_limit,
                per_ip: self.rate_limit_anonymous,
                window: Duration::from_secs(self.rate_limit_window_secs.max(1)),
                sync: Duration::from_millis(self.rate_limit_sync_ms.max(10)),
            },
            oauth: self.oauth.settings()?,
            feed: service::FeedSettings {
                retention: Duration::from_secs(self.events_retention_hours * 3600),
                max_streams: self.max_streams,
                max_streams_per_principal: self.max_streams_per_principal,
                gather: Duration::from_millis(self.events_batch_ms),
            },
        })
    }

    pub fn http_settings(&self) -> http::Settings {
        const MIB: usize = 1024 * 1024;
        http::Settings {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            forwarded: if !self.trusted_proxies.is_empty() {
                http::Forwarded::TrustedProxies(self.trusted_proxies.clone())
            } else if self.trust_forwarded_for {
                http::Forwarded::LastHop
            } else {
                http::Forwarded::Ignore
            },
            metrics_token: self.metrics_token.clone().filter(|t| !t.is_empty()),
            cors_allow_origins: self.cors_allow_origins.clone(),
            user_cache_bytes: self.user_cache_mib * MIB,
            page_cache_bytes: self.page_cache_mib * MIB,
            oauth_flows: self.oauth.flow_urls(),
            // Well within the idle timeout, which a stream's writes keep from running out.
            stream_heartbeat: Duration::from_secs(15)
                .min(Duration::from_secs(self.idle_timeout_secs) / 2)
                .max(Duration::from_millis(500)),
        }
    }
}

/// OAuth 2.0 access tokens: off unless issuer, audience and JWKS are all given.
#[derive(Debug, Clone, Args)]
pub struct OAuthArgs {
    /// The `iss` tokens must carry, e.g. `https://idp.example.com/realms/main`.
    #[arg(help_heading = "OAuth", long, env = "OAUTH_ISSUER")]
    pub oauth_issuer: Option<String>,
    /// The `aud` tokens must carry: this API's identifier at the identity provider.
    #[arg(help_heading = "OAuth", long, env = "OAUTH_AUDIENCE")]
    pub oauth_audience: Option<String>,
    /// The identity provider's JWKS: an `https://` URL, or a path to a JWKS file.
    #[arg(help_heading = "OAuth", long, env = "OAUTH_JWKS_URL")]
    pub oauth_jwks_url: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(
        help_heading = "OAuth",
        long,
        env = "OAUTH_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub oauth_leeway_secs: u64,
    /// A token with an unknown `kid` reloads the JWKS at most this often, in seconds.
    #[arg(
        help_heading = "OAuth",
        long,
        env = "OAUTH_JWKS_MIN_REFRESH_SECS",
        default_value_t = 30
    )]
    pub oauth_jwks_min_refresh_secs: u64,
    /// The provider's authorization endpoint, shown in the live spec for Swagger UI's Authorize.
    #[arg(help_heading = "OAuth", long, env = "OAUTH_AUTHORIZATION_URL")]
    pub oauth_authorization_url: Option<String>,
    /// The provider's token endpoint, shown in the live spec for Swagger UI's Authorize.
    #[arg(help_heading = "OAuth", long, env = "OAUTH_TOKEN_URL")]
    pub oauth_token_url: Option<String>,
}

impl OAuthArgs {
    /// `None` when OAuth is off; an error when it is half configured, which is never intended.
    fn settings(&self) -> Result<Option<OAuthSettings>, String> {
        match (
            &self.oauth_issuer,
            &self.oauth_audience,
            &self.oauth_jwks_url,
        ) {
            (None, None, None) => Ok(None),
            (Some(issuer), Some(audience), Some(jwks)) => Ok(Some(OAuthSettings {
                issuer: issuer.clone(),
                audience: audience.clone(),
                jwks: JwksSource::parse(jwks),
                leeway: Duration::from_secs(self.oauth_leeway_secs),
                min_refresh_interval: Duration::from_secs(self.oauth_jwks_min_refresh_secs),
            })),
            _ => Err(
                "OAuth needs all of --oauth-issuer, --oauth-audience and --oauth-jwks-url".into(),
            ),
        }
    }

    /// The flow endpoints to show in the live spec, when both are configured.
    fn flow_urls(&self) -> Option<OAuthFlowUrls> {
        Some(OAuthFlowUrls {
            authorization_url: self.oauth_authorization_url.clone()?,
            token_url: self.oauth_token_url.clone()?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Pretty,
    Json,
}
