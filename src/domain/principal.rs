//! Who is calling, once their credentials have been checked.

use std::fmt;

use super::{Scope, ScopeSet};

/// Who acted, as recorded in audit fields and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    ApiKey(i64),
    /// The `sub` claim of an OAuth access token.
    Token(String),
}

/// `api-key:<id>` or `oauth:<sub>`: the form stored in `created_by`/`updated_by` and logged.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::ApiKey(id) => write!(f, "api-key:{id}"),
            Subject::Token(sub) => write!(f, "oauth:{sub}"),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: Subject,
    pub scopes: ScopeSet,
}

impl Principal {
    /// Whether the principal holds `needed` (or `admin`, which implies every scope).
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.allows(needed)
    }

    /// The audit name of [`Subject`].
    pub fn audit_name(&self) -> String {
        self.subject.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_names_say_what_kind_of_credential_acted() {
        assert_eq!(Subject::ApiKey(7).to_string(), "api-key:7");
        assert_eq!(
            Subject::Token("auth0|x".into()).to_string(),
            "oauth:auth0|x"
        );
    }
}
