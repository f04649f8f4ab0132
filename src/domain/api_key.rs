//! Scopes, and API keys: how they are asked for, generated and recognised.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fields::{FieldError, FieldReader, bounded_text};

/// A permission an API key or access token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    /// Everything: all user operations and API-key management.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::UsersRead, Scope::UsersWrite, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == raw)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope `{raw}`; known scopes: {}", known.join(", "))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes a principal holds, each once, in the order first given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut set = Vec::new();
        for scope in scopes {
            if !set.contains(&scope) {
                set.push(scope);
            }
        }
        Self(set)
    }

    /// Parses the space-separated form kept in the database; unknown names are dropped so a
    /// key written by a newer version never grants more than this version understands.
    pub fn from_stored(stored: &str) -> Self {
        Self::new(
            stored
                .split_whitespace()
                .filter_map(|s| Scope::parse(s).ok()),
        )
    }

    pub fn to_stored(&self) -> String {
        let names: Vec<_> = self.iter().map(Scope::as_str).collect();
        names.join(" ")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `admin` implies every other scope.
    pub fn allows(&self, needed: Scope) -> bool {
        self.0.contains(&needed) || self.0.contains(&Scope::Admin)
    }

    /// Whether every scope of `other` is allowed here: a principal may only hand out what it holds.
    pub fn covers(&self, other: &ScopeSet) -> bool {
        other.iter().all(|scope| self.allows(scope))
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

/// A key as it is asked for, over HTTP or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: ScopeSet,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewApiKey {
    pub const MAX_NAME_CHARS: usize = 100;

    /// Reads a create-key body; `now` bounds `expires_at`, which must lie in the future.
    pub fn from_json(body: &Value, now: DateTime<Utc>) -> Result<Self, Vec<FieldError>> {
        let mut reader = FieldReader::new(body)?;
        let name = reader.required("name", Self::parse_name);
        let scopes = reader.required_value("scopes", parse_scope_list);
        let expires_at = reader
            .string("expires_at", |raw| Self::parse_expiry(raw, now))
            .flatten();
        let key = name.zip(scopes).map(|(name, scopes)| NewApiKey {
            name,
            scopes,
            expires_at,
        });
        reader.finish(key)
    }

    pub fn parse_name(raw: &str) -> Result<String, String> {
        bounded_text(raw, Self::MAX_NAME_CHARS)
    }

    /// An RFC 3339 instant after `now`.
    pub fn parse_expiry(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        let at = DateTime::parse_from_rfc3339(raw)
            .map_err(|err| format!("must be an RFC 3339 date-time ({err})"))?
            .to_utc();
        if at <= now {
            return Err("must lie in the future".into());
        }
        Ok(at)
    }
}

fn parse_scope_list(value: &Value) -> Result<ScopeSet, String> {
    let items = value.as_array().ok_or("must be an array of scope names")?;
    if items.is_empty() {
        return Err("must name at least one scope".into());
    }
    let scopes = items
        .iter()
        .map(|item| {
            item.as_str()
                .ok_or_else(|| "must contain only strings".to_owned())
                .and_then(Scope::parse)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScopeSet::new(scopes))
}

/// A freshly generated API key. The plaintext exists only in memory, long enough to be shown
/// once; what is stored is its SHA-256, which suffices because the key carries 160 random bits
/// (a slow password hash buys nothing against brute force at that entropy).
pub struct ApiKeySecret {
    plaintext: String,
}

impl ApiKeySecret {
    /// Recognisable by people and by secret scanners.
    pub const PREFIX: &'static str = "uak_";
    const RANDOM_BYTES: usize = 20;
    /// How much of the key is kept in clear to tell keys apart in listings.
    const DISPLAY_LEN: usize = Self::PREFIX.len() + 8;

    pub fn generate() -> Self {
        let mut bytes = [0u8; Self::RANDOM_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Self {
            plaintext: format!("{}{hex}", Self::PREFIX),
        }
    }

    pub fn plaintext(&self) -> &str {
        &self.plaintext
    }

    pub fn display_prefix(&self) -> &str {
        &self.plaintext[..Self::DISPLAY_LEN]
    }

    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.plaintext)
    }

    /// Whether a bearer token has the shape of one of our keys (as opposed to, say, a JWT).
    pub fn looks_like_key(token: &str) -> bool {
        token.len() == Self::PREFIX.len() + 2 * Self::RANDOM_BYTES
            && token.starts_with(Self::PREFIX)
            && token[Self::PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
    }
}

impl fmt::Debug for ApiKeySecret {
    // Keeps the secret out of any `{:?}` that reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}…)", self.display_prefix())
    }
}

/// The SHA-256 of an API key: what is stored and looked up, never the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of a presented bearer token.
    pub fn of(token: &str) -> Self {
        KeyDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// The form the database stores: lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_recognisable_and_hash_stably() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a.plaintext(), b.plaintext());
        assert!(ApiKeySecret::looks_like_key(a.plaintext()));
        assert!(a.plaintext().starts_with(a.display_prefix()));
        assert_eq!(a.digest(), KeyDigest::of(a.plaintext()));
        assert!(!format!("{a:?}").contains(a.plaintext()));
    }

    /// Stored hashes must stay readable by every later version: the form is pinned (the
    /// SHA-256 of "abc", as any sha256sum prints it).
    #[test]
    fn digests_are_stored_as_lowercase_hex_sha256() {
        assert_eq!(
            KeyDigest::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_tokens_are_not_keys() {
        assert!(!ApiKeySecret::looks_like_key("uak_zz"));
        assert!(!ApiKeySecret::looks_like_key("eyJhbGciOi.eyJzdWIi.sig"));
    }

    #[test]
    fn new_keys_need_known_scopes_and_a_future_expiry() {
        use serde_json::json;
        let now = Utc::now();
        let key = NewApiKey::from_json(
            &json!({"name": "ci", "scopes": ["users:read", "users:read"]}),
            now,
        )
        .unwrap();
        assert_eq!(key.scopes.to_stored(), "users:read");
        assert_eq!(key.expires_at, None);
        let errors = NewApiKey::from_json(
            &json!({"name": " ", "scopes": ["users:delete"], "expires_at": "2000-01-01T00:00:00Z"}),
            now,
        )
        .unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/scopes", "/expires_at"]);
        assert!(NewApiKey::from_json(&json!({"name": "x", "scopes": []}), now).is_err());
    }

    #[test]
    fn a_principal_covers_only_what_it_holds() {
        let writer = ScopeSet::new([Scope::UsersWrite]);
        assert!(writer.covers(&ScopeSet::new([Scope::UsersWrite])));
        assert!(!writer.covers(&ScopeSet::new([Scope::UsersRead])));
        assert!(!writer.covers(&ScopeSet::new([Scope::Admin])));
        assert!(ScopeSet::new([Scope::Admin]).covers(&ScopeSet::new(Scope::ALL)));
    }

    #[test]
    fn admin_implies_every_scope_and_storage_round_trips() {
        let admin = ScopeSet::new([Scope::Admin]);
        assert!(admin.allows(Scope::UsersWrite));
        let read = ScopeSet::from_stored("users:read bogus users:read");
        assert_eq!(read.to_stored(), "users:read");
        assert!(!read.allows(Scope::UsersWrite));
        assert!(Scope::parse("users:delete").is_err());
    }
}
