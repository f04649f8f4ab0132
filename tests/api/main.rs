//! Integration tests: the real binary over HTTP. One module per concern.

mod api_keys;
mod auth;
mod errors;
mod helpers;
mod oauth;
mod spec;
mod users;
