//! Integration tests on the embedded SQLite default: the real binary over HTTP. The same modules
//! run against PostgreSQL in `tests/postgres`.

const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

mod api_keys;
mod auth;
mod conditional;
mod durability;
mod errors;
mod events;
mod hardening;
mod helpers;
mod idempotency;
mod limits;
mod listing;
mod oauth;
mod observability;
mod query_plan;
mod readme;
mod scale_out;
mod sdk;
mod spec;
mod sqlite;
mod users;
