//! How a listing is asked for: filters, a sort, and the opaque cursor that continues it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Email;

/// What users can be ordered by; ties are always broken by id, in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Id,
    Name,
    CreatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            field: SortField::Id,
            descending: false,
        }
    }
}

impl Sort {
    /// `id`, `name`, `created_at`, each optionally prefixed with `-` for descending order.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (descending, name) = match raw.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, raw),
        };
        let field = match name {
            "id" => SortField::Id,
            "name" => SortField::Name,
            "created_at" => SortField::CreatedAt,
            _ => {
                return Err(format!(
                    "cannot sort by `{raw}`; use id, name or created_at, with a leading - for descending order"
                ));
            }
        };
        Ok(Sort { field, descending })
    }

    pub fn as_str(&self) -> String {
        let name = match self.field {
            SortField::Id => "id",
            SortField::Name => "name",
            SortField::CreatedAt => "created_at",
        };
        if self.descending {
            format!("-{name}")
        } else {
            name.to_owned()
        }
    }
}

/// Narrowing a listing; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Exact role.
    pub role: Option<String>,
    /// Exact address, compared case-insensitively (as [`Email::key`]).
    pub email_key: Option<String>,
    /// Lowercased substring of the name.
    pub name_contains: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// A parameter of a listing that cannot be used as sent: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub name: &'static str,
    pub message: String,
}

impl ParamError {
    fn new(name: &'static str, message: impl Into<String>) -> Self {
        ParamError {
            name,
            message: message.into(),
        }
    }
}

impl UserFilter {
    pub fn new(
        role: Option<String>,
        email: Option<&str>,
        q: Option<&str>,
        created_after: Option<DateTime<Utc>>,
        created_before: Option<DateTime<Utc>>,
    ) -> Result<Self, ParamError> {
        let email_key = email
            .map(|raw| {
                Email::parse(raw)
                    .map(|email| email.key())
                    .map_err(|err| ParamError::new("email", err))
            })
            .transpose()?;
        if let (Some(after), Some(before)) = (created_after, created_before)
            && after >= before
        {
            return Err(ParamError::new(
                "created_after",
                "must be earlier than `created_before`",
            ));
        }
        Ok(UserFilter {
            role,
            email_key,
            name_contains: q
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase),
            created_after,
            created_before,
        })
    }
}

/// A whole listing request: what a cursor is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: UserFilter,
    pub sort: Sort,
}

impl ListQuery {
    /// A digest of the filters and sort. A cursor carries it, so a cursor replayed against a
    /// different query is refused instead of silently paging through the wrong result.
    pub fn fingerprint(&self) -> String {
        let canonical = json!([
            self.sort.as_str(),
            self.filter.role,
            self.filter.email_key,
            self.filter.name_contains,
            self.filter.created_after.map(|at| at.to_rfc3339()),
            self.filter.created_before.map(|at| at.to_rfc3339()),
        ]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        URL_SAFE_NO_PAD.encode(&digest[..9])
    }
}

/// The sort-key value of the last row of a page: where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Name(String),
    CreatedAt(DateTime<Utc>),
}

/// An opaque continuation token: the last row's sort key and id, bound to its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: SortKey,
    pub after_id: i64,
    fingerprint: String,
}

impl Cursor {
    const VERSION: u64 = 2;

    pub fn new(key: SortKey, after_id: i64, query: &ListQuery) -> Self {
        Cursor {
            key,
            after_id,
            fingerprint: query.fingerprint(),
        }
    }

    pub fn encode(&self) -> String {
        let key = match &self.key {
            SortKey::Id => Value::Null,
            SortKey::Name(name) => json!(name),
            SortKey::CreatedAt(at) => json!(at.to_rfc3339()),
        };
        let payload = json!([Self::VERSION, self.fingerprint, self.after_id, key]);
        URL_SAFE_NO_PAD.encode(payload.to_string())
    }

    /// Decodes a cursor for `query`; one that was altered, or issued for another query (other
    /// filters or sort), is an error.
    pub fn parse(raw: &str, query: &ListQuery) -> Result<Self, ParamError> {
        let invalid = || {
            ParamError::new(
                "cursor",
                "is not one this API issued for this query: pass a page's `next_cursor` \
                 unchanged, with the same filters and sort",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        let payload: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let [version, fingerprint, after_id, key] = payload
            .as_array()
            .and_then(|items| <&[Value; 4]>::try_from(items.as_slice()).ok())
            .ok_or_else(invalid)?;
        if version.as_u64() != Some(Self::VERSION)
            || fingerprint.as_str() != Some(&query.fingerprint())
        {
            return Err(invalid());
        }
        let after_id = after_id
            .as_i64()
            .filter(|id| *id >= 0)
            .ok_or_else(invalid)?;
        let key = match (query.sort.field, key) {
            (SortField::Id, Value::Null) => SortKey::Id,
            (SortField::Name, Value::String(name)) => SortKey::Name(name.clone()),
            (SortField::CreatedAt, Value::String(at)) => SortKey::CreatedAt(
                DateTime::parse_from_rfc3339(at)
                    .map_err(|_| invalid())?
                    .to_utc(),
            ),
            _ => return Err(invalid()),
        };
        Ok(Cursor {
            key,
            after_id,
            fingerprint: fingerprint.as_str().unwrap_or_default().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sort: &str) -> ListQuery {
        ListQuery {
            sort: Sort::parse(sort).unwrap(),
            ..ListQuery::default()
        }
    }

    #[test]
    fn sorts_parse_with_direction() {
        assert_eq!(Sort::parse("-created_at").unwrap().as_str(), "-created_at");
        assert!(!Sort::parse("name").unwrap().descending);
        assert!(Sort::parse("email").is_err());
        assert!(Sort::parse("--id").is_err());
    }

    #[test]
    fn cursors_round_trip_for_their_own_query_only() {
        let by_name = query("-name");
        let cursor = Cursor::new(SortKey::Name("zoë".into()), 42, &by_name);
        assert_eq!(
            Cursor::parse(&cursor.encode(), &by_name),
            Ok(cursor.clone())
        );
        assert!(
            Cursor::parse(&cursor.encode(), &query("name")).is_err(),
            "another sort"
        );
        let filtered = ListQuery {
            filter: UserFilter::new(Some("Dev".into()), None, None, None, None).unwrap(),
            ..by_name
        };
        assert!(
            Cursor::parse(&cursor.encode(), &filtered).is_err(),
            "other filters"
        );
    }

    #[test]
    fn tampered_cursors_are_rejected() {
        let q = query("id");
        let good = Cursor::new(SortKey::Id, 7, &q).encode();
        let mut flipped = good.clone().into_bytes();
        flipped[3] ^= 1;
        for bad in [
            String::new(),
            "!!".into(),
            String::from_utf8(flipped).unwrap(),
            URL_SAFE_NO_PAD.encode(r#"[2,"x",7,null]"#),
            URL_SAFE_NO_PAD.encode(format!(r#"[2,"{}",-1,null]"#, q.fingerprint())),
            URL_SAFE_NO_PAD.encode(format!(r#"[2,"{}",7,"name"]"#, q.fingerprint())),
        ] {
            assert!(Cursor::parse(&bad, &q).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn filters_normalise_and_check_their_bounds() {
        let filter =
            UserFilter::new(None, Some("Ann@Example.org"), Some("  ZoË "), None, None).unwrap();
        assert_eq!(filter.email_key.as_deref(), Some("ann@example.org"));
        assert_eq!(filter.name_contains.as_deref(), Some("zoë"));
        let now = Utc::now();
        assert!(UserFilter::new(None, None, None, Some(now), Some(now)).is_err());
        assert!(UserFilter::new(None, Some("nope"), None, None, None).is_err());
    }
}
