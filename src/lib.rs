//! users-api: an OpenAPI-first REST service for a users resource.
//!
//! The layers, each using only those below it (see `docs/architecture.md`):
//! [`domain`] ← [`store`] ← [`service`] ← [`http`] ← [`startup`], [`config`] and [`cli`].

pub mod cli;
pub mod config;
pub mod connections;
pub mod domain;
pub mod error;
pub mod http;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
