//! The `cursor` query parameter of the listings: a type of its own, so that a malformed one
//! is refused with a message that tells the client what to send (the page's `next_cursor`,
//! unchanged), and checked without a regular expression (poem-openapi's `pattern` validator
//! compiles one for every value it checks). A test holds it to the schema it declares.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};

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

#[cfg(test)]
mod tests {
    use poem_openapi::validation::{MaxLength, MinLength, Pattern, Validator};

    use super::*;

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
