//! Validated domain types: once one exists, it is valid. Their `parse` functions are the only
//! place each rule is written; the HTTP layer's schemas are checked against them by a test.
//!
//! Nothing here depends on another module of the crate, on HTTP or on the database.

mod api_key;
mod event;
mod fields;
mod listing;
mod principal;
mod user;

pub use api_key::{ApiKeySecret, KeyDigest, NewApiKey, Scope, ScopeSet};
pub use event::EventKind;
pub use fields::{FieldError, bounded_text};
pub use listing::{Cursor, ListQuery, ParamError, Sort, SortField, SortKey, UserFilter};
pub use principal::{Principal, Subject};
pub use user::{Email, IfMatch, NewUser, Role, UserChanges, UserName};
