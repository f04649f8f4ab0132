//! The key lifecycle as structured log events, one shape wherever a key is made or revoked
//! (CLI, first start, HTTP), so one log search finds them all. Secrets and hashes never appear.

use entity::api_keys::Model;

/// `actor` is the audit name of whoever created the key (`cli`, `bootstrap`, `api-key:7`, ...).
pub fn key_created(key: &Model, actor: &str) {
    tracing::info!(
        event = "api_key.created",
        key_id = key.id,
        key_prefix = %key.prefix,
        scopes = %key.scopes,
        actor,
        "API key created"
    );
}

pub fn key_revoked(key: &Model, actor: &str) {
    tracing::info!(
        event = "api_key.revoked",
        key_id = key.id,
        key_prefix = %key.prefix,
        actor,
        "API key revoked"
    );
}
