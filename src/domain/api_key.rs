use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fields::{FieldReader, bounded_text};
use crate::error::FieldError;

/// A permission an API key or access token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, poem_openapi::Enum)]
pub enum Scope {
    /// Read users (GET).
    #[oai(rename = "users:read")]
    UsersRead,
    /// Create, replace, update and delete users.
    #[oai(rename = "users:write")]
    UsersWrite,
    /// Everything: all user operations and API-key management.
    #[oai(rename = "admin")]
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

/// The scopes a principal holds.
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
        self.names().collect::<Vec<_>>().join(" ")
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|scope| scope.as_str())
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
        other.0.iter().all(|scope| self.allows(*scope))
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

/// A key as a client asks for it over HTTP.
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
        let name = reader.required("name", |raw| bounded_text(raw, Self::MAX_NAME_CHARS));
        let scopes = reader.required_value("scopes", parse_scope_list);
        let expires_at = reader
            .string("expires_at", |raw| {
                let at = DateTime::parse_from_rfc3339(raw)
                    .map_err(|err| format!("must be an RFC 3339 date-time ({err})"))?
                    .to_utc();
                if at <= now {
                    return Err("must lie in the future".into());
                }
                Ok(at)
            })
            .flatten();
        let key = name.zip(scopes).map(|(name, scopes)| NewApiKey {
            name,
            scopes,
            expires_at,
        });
        reader.finish(key)
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
        Self {
            plaintext: format!("{}{}", Self::PREFIX, hex(&bytes)),
        }
    }

    pub fn plaintext(&self) -> &str {
        &self.plaintext
    }

    pub fn display_prefix(&self) -> &str {
        &self.plaintext[..Self::DISPLAY_LEN]
    }

    pub fn hash(&self) -> String {
        Self::hash_presented(&self.plaintext)
    }

    /// The hash a presented bearer token is looked up by, as stored: hex.
    pub fn hash_presented(token: &str) -> String {
        Self::digest_presented(token).to_hex()
    }

    /// The same hash as bytes: what the key cache is keyed by, saving the hex encoding on the
    /// requests it answers.
    pub fn digest_presented(token: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(token.as_bytes()).into())
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

/// The SHA-256 of an API key's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// The form the database stores.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// Lowercase hex (key digests, body fingerprints). Every authenticated request hashes its
/// key: `write!` per byte cost 8k instructions of it, a tenth of a GET by id (callgrind);
/// this takes a few hundred.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn generated_keys_are_unique_recognisable_and_hash_stably() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a.plaintext(), b.plaintext());
        assert!(ApiKeySecret::looks_like_key(a.plaintext()));
        assert!(a.plaintext().starts_with(a.display_prefix()));
        assert_eq!(a.hash(), ApiKeySecret::hash_presented(a.plaintext()));
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(a.plaintext()));
    }

    #[test]
    fn malformed_tokens_are_not_keys() {
        assert!(!ApiKeySecret::looks_like_key("uak_zz"));
        assert!(!ApiKeySecret::looks_like_key("eyJhbGciOi.eyJzdWIi.sig"));
    }

    #[test]
    fn scope_names_in_the_spec_match_the_stored_names() {
        use poem_openapi::types::ToJSON;
        for scope in Scope::ALL {
            assert_eq!(scope.to_json(), Some(serde_json::json!(scope.as_str())));
        }
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
