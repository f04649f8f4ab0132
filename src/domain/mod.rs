//! Validated domain types: once one exists, it is valid. Their `parse` functions are the edge.

mod api_key;
mod cursor;
mod fields;
mod user;

pub use api_key::{ApiKeySecret, NewApiKey, Scope, ScopeSet};
pub use cursor::Cursor;
pub use user::{Email, NewUser, Role, UserChanges, UserName};
