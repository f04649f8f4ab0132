//! The whole integration suite against PostgreSQL (one fresh database per test), plus what only
//! a networked database has: coming up late and going away for a while.
//!
//! Needs PostgreSQL at `USERS_API_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, with rights to create databases).

const BACKEND: helpers::Backend = helpers::Backend::Postgres;

#[path = "../api/api_keys.rs"]
mod api_keys;
#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/conditional.rs"]
mod conditional;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/errors.rs"]
mod errors;
#[path = "../api/events.rs"]
mod events;
#[path = "../api/hardening.rs"]
mod hardening;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/idempotency.rs"]
mod idempotency;
#[path = "../api/limits.rs"]
mod limits;
#[path = "../api/listing.rs"]
mod listing;
#[path = "../api/oauth.rs"]
mod oauth;
#[path = "../api/observability.rs"]
mod observability;
#[path = "../api/query_plan.rs"]
mod query_plan;
mod resilience;
#[path = "../api/scale_out.rs"]
mod scale_out;
#[path = "../api/sdk.rs"]
mod sdk;
#[path = "../api/spec.rs"]
mod spec;
#[path = "../api/users.rs"]
mod users;
