//! Integration tests: the real binary over HTTP. One module per concern.

mod auth;
mod errors;
mod helpers;
mod spec;
mod users;
