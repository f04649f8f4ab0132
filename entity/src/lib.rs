//! sea-orm entities: one module per table, shaped as `sea-orm-cli generate entity` writes them.

pub mod api_keys;
pub mod idempotency_keys;
pub mod rate_limit_windows;
pub mod user_event_feed;
pub mod user_events;
pub mod users;
