//! Reading a JSON request body member by member, collecting every problem in one pass.

use serde_json::{Map, Value};

/// A problem with one member of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the offending member: `/name`, or `` for the whole body.
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Collects every field problem in one pass, so a client fixes its request in one round trip.
pub(super) struct FieldReader<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> FieldReader<'a> {
    pub fn new(body: &'a Value) -> Result<Self, Vec<FieldError>> {
        match body {
            Value::Object(object) => Ok(Self {
                object,
                errors: Vec::new(),
            }),
            _ => Err(vec![FieldError::new("", "the body must be a JSON object")]),
        }
    }

    fn reject(&mut self, name: &str, message: impl Into<String>) {
        self.errors
            .push(FieldError::new(format!("/{name}"), message));
    }

    /// `None` when the member is absent or invalid (the error is recorded); `Some(None)` when
    /// it is `null`.
    pub fn value<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        let value = self.object.get(name)?;
        if value.is_null() {
            return Some(None);
        }
        match parse(value) {
            Ok(parsed) => Some(Some(parsed)),
            Err(message) => {
                self.reject(name, message);
                None
            }
        }
    }

    /// Like [`Self::value`], for a member that must be a JSON string.
    pub fn string<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        self.value(name, |value| match value {
            Value::String(text) => parse(text),
            _ => Err("must be a string".into()),
        })
    }

    /// A string member that must be present and not null.
    pub fn required<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let present = self.object.contains_key(name);
        let read = self.string(name, parse);
        self.present_and_non_null(name, present, read)
    }

    /// A member of any JSON type that must be present and not null.
    pub fn required_value<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let present = self.object.contains_key(name);
        let read = self.value(name, parse);
        self.present_and_non_null(name, present, read)
    }

    /// A string member that may be absent but not null.
    pub fn non_null<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let read = self.string(name, parse)?;
        self.present_and_non_null(name, true, Some(read))
    }

    fn present_and_non_null<T>(
        &mut self,
        name: &str,
        present: bool,
        read: Option<Option<T>>,
    ) -> Option<T> {
        match read {
            Some(Some(parsed)) => Some(parsed),
            Some(None) => {
                self.reject(name, "must not be null");
                None
            }
            None if !present => {
                self.reject(name, "is required");
                None
            }
            None => None,
        }
    }

    /// The parsed value if no member was rejected, else every rejection.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(self.errors),
        }
    }
}

/// The rule of every free-text field (a name, a role, a key's label): at most `max` characters
/// as sent (not bytes, so "José" is four), no control characters, not blank; stored trimmed.
///
/// The limit counts the value as sent, surrounding whitespace included, because that is what
/// a JSON Schema `maxLength` counts: a client validating against the spec never sends what
/// the server would refuse, and the server refuses everything the spec calls too long.
pub fn bounded_text(raw: &str, max: usize) -> Result<String, String> {
    let len = raw.chars().count();
    if len > max {
        return Err(format!("must be at most {max} characters, got {len}"));
    }
    // Anywhere in the value, as the spec's pattern says: a tab or a line break around a name
    // is a mistake to report, not whitespace to trim away.
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters (tabs and line breaks included)".into());
    }
    let text = raw.trim();
    if text.is_empty() {
        return Err("must not be blank".into());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_counted_in_characters_and_free_of_controls() {
        assert_eq!(bounded_text("  Alice ", 100).unwrap(), "Alice");
        assert!(bounded_text(&"é".repeat(100), 100).is_ok());
        assert!(bounded_text(&"é".repeat(101), 100).is_err());
        // Surrounding whitespace counts, as the spec's maxLength counts it.
        assert!(bounded_text(&format!(" {} ", "a".repeat(99)), 100).is_err());
        assert!(bounded_text("   ", 100).is_err());
        assert!(bounded_text("a\u{0}b", 100).is_err());
        assert!(bounded_text("a\u{85}b", 100).is_err());
        assert!(
            bounded_text("\ta", 100).is_err(),
            "a tab is not trimmed away"
        );
        assert!(
            bounded_text("a\u{85}", 100).is_err(),
            "nor is NEL, a control character"
        );
    }
}
