//! users-api: an OpenAPI-first REST service for a users resource.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod rate_limit;
pub mod runtime;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod timestamp;
