//! Conditional requests (RFC 9110 §13): strong ETags from the row version, `If-None-Match` for
//! cheap re-reads and `If-Match` for optimistic concurrency.

use entity::users::Model;

use crate::domain::IfMatch;

/// The strong ETag of a user's current representation. Ids are never reused and every write
/// bumps the version, so the pair names one representation for good.
pub fn etag(user: &Model) -> String {
    format!("\"{}-{}\"", user.id, user.version)
}

/// The tags of a list-valued header (`"a", W/"b"`), or `None` for `*`.
fn tags(header: &str) -> Option<Vec<&str>> {
    let header = header.trim();
    if header == "*" {
        return None;
    }
    Some(
        header
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// Whether `If-None-Match` lets the full response through: weak comparison, `W/` is ignored.
pub fn none_match(header: Option<&str>, current: &str) -> bool {
    match header.map(tags) {
        None => true,
        Some(None) => false,
        Some(Some(list)) => !list
            .iter()
            .any(|tag| tag.trim_start_matches("W/") == current),
    }
}

/// What `If-Match` asks of user `id` (strong comparison: weak tags never match).
pub fn if_match(header: Option<&str>, id: i64) -> IfMatch {
    let Some(header) = header else {
        return IfMatch::Absent;
    };
    let Some(list) = tags(header) else {
        return IfMatch::Any;
    };
    let prefix = format!("\"{id}-");
    list.iter()
        .find_map(|tag| {
            tag.strip_prefix(&prefix)?
                .strip_suffix('"')?
                .parse::<i64>()
                .ok()
        })
        .map_or(IfMatch::Never, IfMatch::Version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_honours_star() {
        assert!(none_match(None, "\"1-2\""));
        assert!(!none_match(Some("\"1-2\""), "\"1-2\""));
        assert!(!none_match(Some("W/\"1-2\", \"9-9\""), "\"1-2\""));
        assert!(!none_match(Some("*"), "\"1-2\""));
        assert!(none_match(Some("\"1-1\""), "\"1-2\""));
    }

    #[test]
    fn if_match_yields_the_version_or_never() {
        assert_eq!(if_match(None, 1), IfMatch::Absent);
        assert_eq!(if_match(Some("*"), 1), IfMatch::Any);
        assert_eq!(if_match(Some("\"1-7\""), 1), IfMatch::Version(7));
        assert_eq!(if_match(Some("\"2-3\", \"1-4\""), 1), IfMatch::Version(4));
        for stale in ["W/\"1-7\"", "\"2-7\"", "garbage", "\"1-x\""] {
            assert_eq!(if_match(Some(stale), 1), IfMatch::Never, "{stale}");
        }
    }
}
