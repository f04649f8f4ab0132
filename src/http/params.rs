//! Query, path and header parameters: how a bad one is reported ([`ParamRules`]), and the
//! `cursor` query parameter of the listings, a type of its own, so that a malformed one is
//! refused with a message that tells the client what to send (the page's `next_cursor`,
//! unchanged), and checked without a regular expression (poem-openapi's `pattern` validator
//! compiles one for every value it checks). A test holds it to the schema it declares.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};
use serde_json::Value;

/// A `next_cursor` sent back: 1 to 1,024 characters of URL-safe base64 without padding, which
/// `Cursor::parse` then decodes and checks against the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorText(pub String);

impl CursorText {
    /// What the spec declares, and [`CursorText::allows`] checks.
    pub const PATTERN: &str = "^[A-Za-z0-9_-]+$";
    pub const MAX_LENGTH: usize = 1024;

    /// Whether `text` matches the declared schema: its length and [`Self::PATTERN`].
    pub fn allows(text: &str) -> bool {
        (1..=Self::MAX_LENGTH).contains(&text.len())
            && text
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    }
}

impl Type for CursorText {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        // Only error messages show it ("failed to parse \"cursor\"").
        "cursor".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(Self::MAX_LENGTH),
            pattern: Some(Self::PATTERN.into()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for CursorText {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        if Self::allows(value) {
            Ok(CursorText(value.to_owned()))
        } else {
            Err(ParseError::custom(format_args!(
                "expected 1 to {} characters of A-Z, a-z, 0-9, `_` and `-`: pass a page's \
                 `next_cursor` unchanged",
                Self::MAX_LENGTH
            )))
        }
    }
}

/// Where an invalid parameter was sent (`in`); absent for a member of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum ParamLocation {
    Query,
    Path,
    Header,
}

/// One parameter a request got wrong, and what to send instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFailure {
    pub location: ParamLocation,
    pub name: String,
    pub message: String,
}

/// The parameters of every operation, read from the spec, so that a request the framework
/// refused for one bad parameter can be told about every bad one, each in words that say what
/// to send (the framework names its own types and stops at the first).
pub struct ParamRules {
    operations: Vec<Operation>,
}

struct Operation {
    method: String,
    /// The path template's segments; `{…}` matches any one segment.
    segments: Vec<String>,
    params: Vec<Param>,
}

struct Param {
    location: ParamLocation,
    name: String,
    required: bool,
    /// The parameter's schema, `$ref` resolved.
    schema: Value,
}

impl ParamRules {
    pub fn new(spec: &Value) -> Self {
        let resolve = |schema: &Value| match schema["$ref"].as_str() {
            Some(reference) => reference
                .strip_prefix("#/components/schemas/")
                .map(|name| spec["components"]["schemas"][name].clone())
                .unwrap_or_default(),
            None => schema.clone(),
        };
        let mut operations = Vec::new();
        for (path, methods) in spec["paths"].as_object().into_iter().flatten() {
            for (method, operation) in methods.as_object().into_iter().flatten() {
                let params = operation["parameters"].as_array().into_iter().flatten();
                let params = params
                    .filter_map(|param| {
                        let location = match param["in"].as_str()? {
                            "query" => ParamLocation::Query,
                            "path" => ParamLocation::Path,
                            "header" => ParamLocation::Header,
                            _ => return None,
                        };
                        Some(Param {
                            location,
                            name: param["name"].as_str()?.to_owned(),
                            required: param["required"] == true,
                            schema: resolve(&param["schema"]),
                        })
                    })
                    .collect();
                operations.push(Operation {
                    method: method.to_uppercase(),
                    segments: path.split('/').map(String::from).collect(),
                    params,
                });
            }
        }
        ParamRules { operations }
    }

    /// The operation `method` on the path split into `segments`.
    fn operation(&self, method: &str, segments: &[&str]) -> Option<&Operation> {
        self.operations.iter().find(|operation| {
            operation.method == method && template_matches(&operation.segments, segments)
        })
    }

    /// Every query and path parameter of the operation `method path` that the request gets
    /// wrong, and always the one the framework refused (`refused`, with its reason), whatever
    /// its location: the framework may check what this does not (a pattern).
    pub fn failures(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        refused: (&str, &str),
    ) -> Vec<ParamFailure> {
        let segments: Vec<&str> = path.split('/').collect();
        let Some(operation) = self.operation(method, &segments) else {
            return Vec::new();
        };
        let (refused_name, reason) = refused;
        let mut failures = Vec::new();
        for param in &operation.params {
            let value = match param.location {
                ParamLocation::Query => query
                    .iter()
                    .find(|(name, _)| *name == param.name)
                    .map(|(_, value)| value.as_str()),
                ParamLocation::Path => operation
                    .segments
                    .iter()
                    .position(|template| *template == format!("{{{}}}", param.name))
                    .map(|at| segments[at]),
                // Headers are checked by the framework alone.
                ParamLocation::Header => None,
            };
            let message = match value {
                None if param.required => Some("is required".to_owned()),
                Some(value) if !accepts(&param.schema, value) => Some(expected(&param.schema)),
                _ if param.name == refused_name => Some(own_words(reason, &param.schema)),
                _ => None,
            };
            failures.extend(message.map(|message| ParamFailure {
                location: param.location,
                name: param.name.clone(),
                message,
            }));
        }
        failures
    }

    /// A failure the operation at `method template` could report: its first path
    /// parameter, else its first query parameter, sent wrong. `None` when it has neither.
    pub fn example_failure(&self, method: &str, template: &str) -> Option<ParamFailure> {
        // A template is a path its own template matches.
        let segments: Vec<&str> = template.split('/').collect();
        let operation = self.operation(method, &segments)?;
        let param = [ParamLocation::Path, ParamLocation::Query]
            .into_iter()
            .find_map(|location| operation.params.iter().find(|p| p.location == location))?;
        Some(ParamFailure {
            location: param.location,
            name: param.name.clone(),
            message: expected(&param.schema),
        })
    }
}

/// Whether a path, split at `/`, fits a spec path template split the same way, in which `{…}`
/// stands for any one segment.
pub fn template_matches(template: &[String], segments: &[&str]) -> bool {
    template.len() == segments.len()
        && template.iter().zip(segments).all(|(part, segment)| {
            part == segment || (part.starts_with('{') && part.ends_with('}'))
        })
}

/// Whether `value` meets what `schema` states of it (its pattern aside).
fn accepts(schema: &Value, value: &str) -> bool {
    let chars = value.chars().count() as u64;
    let long_enough = schema["minLength"].as_u64().is_none_or(|min| chars >= min);
    let short_enough = schema["maxLength"].as_u64().is_none_or(|max| chars <= max);
    let typed = match (schema["type"].as_str(), schema["format"].as_str()) {
        (Some("integer"), _) => value.parse::<i64>().is_ok_and(|n| {
            schema["minimum"].as_f64().is_none_or(|min| n as f64 >= min)
                && schema["maximum"].as_f64().is_none_or(|max| n as f64 <= max)
        }),
        (_, Some("date-time")) => chrono::DateTime::parse_from_rfc3339(value).is_ok(),
        (_, Some("email")) => value.parse::<email_address::EmailAddress>().is_ok(),
        _ => true,
    };
    let listed = schema["enum"]
        .as_array()
        .is_none_or(|values| values.iter().any(|allowed| allowed == value));
    long_enough && short_enough && typed && listed
}

/// What `schema` asks for, as a sentence's predicate: "must be an integer from 1 to 200".
fn expected(schema: &Value) -> String {
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        return format!("must be one of: {}", values.join(", "));
    }
    let number = |bound: &Value| bound.as_f64().map(|n| n as i64);
    match (schema["type"].as_str(), schema["format"].as_str()) {
        (Some("integer"), _) => match (number(&schema["minimum"]), number(&schema["maximum"])) {
            (Some(min), Some(max)) => format!("must be an integer from {min} to {max}"),
            (Some(min), None) => format!("must be an integer of at least {min}"),
            (None, Some(max)) => format!("must be an integer of at most {max}"),
            (None, None) => "must be an integer".to_owned(),
        },
        (_, Some("date-time")) => {
            "must be a date and time in RFC 3339 form, such as 2026-01-31T09:00:00Z".to_owned()
        }
        (_, Some("email")) => "must be an email address, such as ann@example.com".to_owned(),
        _ => match (schema["minLength"].as_u64(), schema["maxLength"].as_u64()) {
            (Some(min), Some(max)) => format!("must be {min} to {max} characters"),
            (None, Some(max)) => format!("must be at most {max} characters"),
            _ => "is not valid here".to_owned(),
        },
    }
}

/// The framework's reason for refusing a value this module found no fault with, told without
/// the framework's own type names: what one of our parameter types said of it (after
/// `failed to parse "<type>": `), or else what the schema asks for.
fn own_words(reason: &str, schema: &Value) -> String {
    // A number that did not parse is told what a number must be, not Rust's words for it.
    let numeric = matches!(schema["type"].as_str(), Some("integer" | "number"));
    reason
        .split_once("\": ")
        .map(|(_, ours)| {
            // The framework's note on the type it parsed into (an optional header's).
            ours.split(" (occurred while parsing")
                .next()
                .unwrap_or(ours)
        })
        .filter(|ours| {
            !numeric && !ours.contains("failed to parse") && !ours.contains("verification failed")
        })
        .map_or_else(|| expected(schema), |ours| format!("is not valid: {ours}"))
}

#[cfg(test)]
mod tests {
    use poem_openapi::validation::{MaxLength, MinLength, Pattern, Validator};
    use serde_json::json;

    use super::*;

    /// Every query and path parameter the API declares has a message that says what to send,
    /// and a value it accepts and one it refuses are told apart, so a new parameter cannot
    /// fall through to a vague message unnoticed.
    #[test]
    fn every_declared_parameter_is_described() {
        let spec = crate::http::spec_document(None);
        let rules = ParamRules::new(&spec);
        assert!(rules.operations.len() >= 10);
        for operation in &rules.operations {
            for param in &operation.params {
                if param.location == ParamLocation::Header {
                    continue;
                }
                let message = expected(&param.schema);
                assert_ne!(message, "is not valid here", "{}", param.name);
                assert!(!message.contains("int64") && !message.contains("uint64"));
            }
        }
        let limit = json!({"type": "integer", "minimum": 1.0, "maximum": 200.0});
        assert!(accepts(&limit, "200") && !accepts(&limit, "201") && !accepts(&limit, "2x"));
        let instant = json!({"type": "string", "format": "date-time"});
        assert!(accepts(&instant, "2026-01-31T09:00:00Z") && !accepts(&instant, "2026-01-31"));
        let failures = rules.failures(
            "GET",
            "/api/v1/users/abc",
            &[],
            ("id", r#"failed to parse "integer_int64": invalid digit"#),
        );
        assert_eq!(
            failures,
            [ParamFailure {
                location: ParamLocation::Path,
                name: "id".into(),
                message: "must be an integer".into(),
            }]
        );
    }

    /// The check agrees with the validators the schema stands for, as poem-openapi runs them.
    #[test]
    fn allows_what_the_declared_schema_allows() {
        let pattern = Pattern::new(CursorText::PATTERN);
        let (min, max) = (MinLength::new(1), MaxLength::new(CursorText::MAX_LENGTH));
        let mut samples: Vec<String> = (0..=0x7f_u8).map(|b| char::from(b).to_string()).collect();
        samples.extend((0..=0x7f_u8).map(|b| format!("abc{}Z9", char::from(b))));
        samples.extend(
            [
                "",
                "é",
                "a\n",
                "\na",
                "djE6Mg",
                "a-b_c",
                "a=",
                "ab\u{1F600}",
            ]
            .map(String::from),
        );
        samples.extend([1023, 1024, 1025].map(|len| "x".repeat(len)));
        for text in samples {
            let expected = pattern.check(&text) && min.check(&text) && max.check(&text);
            assert_eq!(CursorText::allows(&text), expected, "{text:?}");
            assert_eq!(CursorText::parse_from_parameter(&text).is_ok(), expected);
        }
    }
}
