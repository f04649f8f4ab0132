//! JSON text written straight into the body, for the bodies the API sends most: a user and a
//! page of users.
//!
//! serde_json looks up every byte of every string in its escape table, keys included. The
//! strings of a user almost never hold a byte JSON escapes (a control character, `"` or `\`),
//! so here a string is checked eight bytes at a time and, when clean, copied whole; the rare
//! string that needs escaping is handed to serde_json, so escaping is exactly serde_json's.
//! Keys are written as literals. Pieces are appended as bytes, and the body is checked as UTF-8
//! once when it is complete, not piece by piece. What each type writes is checked against its
//! `ToJSON` (the encoding poem-openapi documents) in the tests of the type.

use chrono::{DateTime, Utc};

use crate::timestamp::Stamp;

/// A value that writes itself as JSON text, the same text its `ToJSON` writes.
pub trait EncodeJson {
    fn encode(&self, out: &mut Vec<u8>);
}

/// `text` as a JSON string.
pub fn string(out: &mut Vec<u8>, text: &str) {
    text_bytes(out, text.as_bytes());
}

/// `text` as a JSON string, or `null`.
pub fn optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    optional_text_bytes(out, text.map(str::as_bytes));
}

/// Text that should be UTF-8 (as read from a database) as a JSON string. Text that is not is
/// copied as it is, so the check of the whole body refuses it.
pub fn text_bytes(out: &mut Vec<u8>, text: &[u8]) {
    if needs_escape(text) {
        match std::str::from_utf8(text) {
            Ok(text) => serde_json::to_writer(out, text).expect("a str always encodes"),
            Err(_) => out.extend_from_slice(text),
        }
        return;
    }
    quoted(out, text);
}

/// [`text_bytes`], or `null`.
pub fn optional_text_bytes(out: &mut Vec<u8>, text: Option<&[u8]>) {
    match text {
        Some(text) => text_bytes(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// `at` as `to_rfc3339` writes it, as a JSON string (the form `ToJSON` writes).
pub fn timestamp(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    match crate::timestamp::write(at) {
        Some(text) => quoted(out, text.as_bytes()),
        None => string(out, &at.to_rfc3339()),
    }
}

/// A timestamp as read, as [`timestamp`] writes it: text already in that form is copied.
pub fn stamp(out: &mut Vec<u8>, stamp: &Stamp<'_>) {
    match stamp {
        Stamp::Written(text) => quoted(out, text),
        Stamp::At(at) => timestamp(out, at),
    }
}

/// `text` in quotes, for text known to hold nothing JSON escapes.
fn quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

/// Whether any byte of `bytes` is one JSON must escape: below 0x20, `"` or `\`. Bytes of
/// multi-byte characters are all 0x80 or above, so they never match.
fn needs_escape(bytes: &[u8]) -> bool {
    // Per byte, in one 64-bit word: `(w - n) & !w & 0x80` is non-zero for some byte exactly
    // when some byte of `w` is below `n` (for n <= 0x80); with n = 1 it finds a zero byte,
    // which `w ^ c` has where `w` holds `c`.
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let flagged = |word: u64| {
        below(word, 0x20)
            | below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in &mut chunks {
        found |= flagged(u64::from_ne_bytes(chunk.try_into().expect("eight bytes")));
    }
    let rest = chunks.remainder();
    let mut last = [b'a'; 8];
    last[..rest.len()].copy_from_slice(rest);
    (found | flagged(u64::from_ne_bytes(last))) != 0
}

/// A number in decimal, as `Display` writes it, without the formatting machinery.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(value: i64) -> Self {
        let mut out = Decimal {
            digits: [0; 20],
            start: 20,
        };
        let mut rest = value.unsigned_abs();
        loop {
            out.start -= 1;
            out.digits[out.start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            out.start -= 1;
            out.digits[out.start] = b'-';
        }
        out
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("only ASCII is written")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        // Every byte value a str can hold alone, and every ASCII one at every position of
        // strings around the eight-byte word's edges.
        let mut samples: Vec<String> = (0..=0x7f_u8).map(|b| char::from(b).to_string()).collect();
        samples.extend(["é", "\u{2028}", "\u{7f}", "\u{1F600}", "Zoë \"Q\"", ""].map(String::from));
        for len in [1, 7, 8, 9, 15, 16, 17, 24] {
            for at in 0..len {
                for special in (0..=0x7f_u8).map(char::from).chain(['é', '\u{85}']) {
                    let mut text: String = "x".repeat(len);
                    text.replace_range(at..=at, &special.to_string());
                    samples.push(text);
                }
            }
        }
        for text in samples {
            let mut out = Vec::new();
            string(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_copied_for_the_body_check_to_refuse() {
        for text in [&b"Ann\xff"[..], b"\"\xff", b"\xc3", b"\xff\xfe\n"] {
            let mut out = b"[".to_vec();
            text_bytes(&mut out, text);
            assert!(out.windows(text.len()).any(|window| window == text));
            assert!(std::str::from_utf8(&out).is_err());
        }
    }

    #[test]
    fn decimals_match_display() {
        let mut values = vec![0, 1, -1, 9, 10, -10, 99, 100, i64::MIN, i64::MAX];
        values.extend((0..64).map(|shift| (1i64 << shift).wrapping_sub(1)));
        values.extend((0..64).map(|shift| 1i64 << shift));
        values.extend((0..64).map(|shift| (1i64 << shift).wrapping_neg()));
        for value in values {
            assert_eq!(Decimal::new(value).as_str(), value.to_string());
        }
    }
}
