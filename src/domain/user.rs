//! A user's fields and the two shapes a client writes them in.

use email_address::{EmailAddress, Options};
use serde_json::Value;

use super::fields::{FieldError, FieldReader, bounded_text};

/// A user's display name: 1..=100 characters, stored trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

/// A free-text role such as "Developer": 1..=50 characters, stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(String);

/// A syntactically valid email address, as given (trimmed); compare by [`Email::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl UserName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, String> {
        bounded_text(raw, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form searches and name sorts compare (stored as `name_search`): lowercased.
    pub fn search_key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl Role {
    pub const MAX_CHARS: usize = 50;

    pub fn parse(raw: &str) -> Result<Self, String> {
        bounded_text(raw, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    /// RFC 5321 caps a forward path at 256 octets including the angle brackets.
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if len > Self::MAX_CHARS {
            return Err(format!(
                "must be at most {} characters, got {len}",
                Self::MAX_CHARS
            ));
        }
        let text = raw.trim();
        // Display text ("Ann <ann@x.org>") and domain literals are legal in mail headers but
        // not what anyone means by a user's address; a dotted domain rules out typos like `a@b`.
        let options = Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        EmailAddress::parse_with_options(text, options)
            .map(|_| Self(text.to_owned()))
            .map_err(|err| format!("is not a valid email address ({err})"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is judged on: the whole address lowercased.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A complete user as a client describes it: the body of create and of full replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: UserName,
    pub role: Role,
    pub email: Option<Email>,
}

/// A partial update: `None` leaves a field as it is; `email: Some(None)` clears the address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub name: Option<UserName>,
    pub role: Option<Role>,
    pub email: Option<Option<Email>>,
}

/// A full replace is the change that sets every client-writable field: an absent email clears
/// the address.
impl From<NewUser> for UserChanges {
    fn from(user: NewUser) -> Self {
        UserChanges {
            name: Some(user.name),
            role: Some(user.role),
            email: Some(user.email),
        }
    }
}

impl NewUser {
    /// Reads a create/replace body. Unknown and read-only members (`id`, `created_at`, ...) are
    /// ignored, so bodies copied from a response or from older clients still work.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = FieldReader::new(body)?;
        let name = reader.required("name", UserName::parse);
        let role = reader.required("role", Role::parse);
        let email = reader.string("email", Email::parse).flatten();
        let user = name
            .zip(role)
            .map(|(name, role)| NewUser { name, role, email });
        reader.finish(user)
    }
}

impl UserChanges {
    /// Reads a merge-patch body: absent members stay unchanged, `"email": null` clears it.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = FieldReader::new(body)?;
        let changes = UserChanges {
            name: reader.non_null("name", UserName::parse),
            role: reader.non_null("role", Role::parse),
            email: reader.string("email", Email::parse),
        };
        reader.finish(Some(changes))
    }
}

/// What a write's `If-Match` asks of the user's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// No condition was sent.
    Absent,
    /// `*`: the user only has to exist.
    Any,
    /// The write happens only at this version.
    Version(i64),
    /// No tag sent can ever be current for this user (a weak tag, another user's, garbage).
    Never,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_trimmed_and_counted_in_characters() {
        assert_eq!(UserName::parse("  Alice ").unwrap().as_str(), "Alice");
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
        assert!(UserName::parse(&"é".repeat(101)).is_err());
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
        assert_eq!(UserName::parse("ZoË").unwrap().search_key(), "zoë");
    }

    #[test]
    fn emails_need_a_dotted_domain_and_compare_case_insensitively() {
        let email = Email::parse(" Ann@Example.ORG ").unwrap();
        assert_eq!(email.as_str(), "Ann@Example.ORG");
        assert_eq!(email.key(), "ann@example.org");
        for bad in [
            "ann",
            "ann@",
            "@example.org",
            "ann@localhost",
            "Ann <ann@x.org>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(Email::parse(&long).unwrap_err().contains("at most 254"));
    }

    #[test]
    fn new_user_ignores_unknown_and_read_only_members() {
        let user = NewUser::from_json(&json!({"id": 3, "name": "Alice", "role": "Tester", "x": 1}))
            .unwrap();
        assert_eq!(user.name.as_str(), "Alice");
        assert_eq!(user.email, None);
    }

    #[test]
    fn new_user_reports_every_bad_field_at_once() {
        let errors = NewUser::from_json(&json!({"name": 5, "email": "nope"})).unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/role", "/email"]);
    }

    #[test]
    fn changes_distinguish_absent_from_null_email() {
        assert_eq!(
            UserChanges::from_json(&json!({})).unwrap(),
            UserChanges::default()
        );
        assert_eq!(
            UserChanges::from_json(&json!({"email": null}))
                .unwrap()
                .email,
            Some(None)
        );
        assert!(UserChanges::from_json(&json!({"name": null})).is_err());
        assert!(UserChanges::from_json(&json!([1])).is_err());
    }
}
