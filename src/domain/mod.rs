//! Validated domain types: once one exists, it is valid. Their `parse` functions are the edge.

mod api_key;
mod fields;
mod listing;
mod user;

pub use api_key::{ApiKeySecret, KeyDigest, NewApiKey, Scope, ScopeSet, hex};
pub use listing::{Cursor, ListQuery, Sort, SortField, SortKey, UserFilter};
pub use user::{Email, NewUser, Role, UserChanges, UserName};
