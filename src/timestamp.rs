//! Timestamps in the one RFC 3339 form this service stores and sends
//! (`2026-11-24T09:30:00.123456+00:00`), read and written digit by digit; and written in the
//! form its log lines carry (`2026-11-24T09:30:00.123456Z`).
//!
//! A page of 50 users carries 100 timestamps, each read from SQLite and written into JSON.
//! chrono's `fmt`-based `to_rfc3339` took about 700 instructions a timestamp and its general
//! parser about 470; these first took about 290 and 370 (callgrind), which took a 50-user page
//! from 696k to 652k instructions. Writing two digits per table lookup, and handing the bytes
//! over without a UTF-8 check of each, took writing to about 210 with the JSON quotes; parsing
//! is about 280. Anything outside the fixed form (another offset, a leap second, a year past
//! 9999) is left to chrono, so results never differ from its own.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// The longest form written: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+00:00`.
const MAX_LEN: usize = 35;

/// A timestamp written out, as [`DateTime::to_rfc3339`] writes it.
pub struct Rfc3339 {
    bytes: [u8; MAX_LEN],
    len: usize,
}

/// `00` to `99`: two digits written with one lookup instead of two divisions.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("only ASCII is written")
    }

    /// The text's bytes, for a writer that checks its whole output as UTF-8 once.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// `value` (below 100) as two digits at `at`.
    fn pair(&mut self, at: usize, value: u32) {
        let from = 2 * value as usize;
        self.bytes[at..at + 2].copy_from_slice(&PAIRS[from..from + 2]);
    }

    /// `.` and `value` in exactly `count` decimal digits (3, 6 or 9), zero-padded, then `tail`.
    fn fraction(&mut self, mut value: u32, count: usize, tail: &[u8]) {
        let start = self.len + 1;
        self.bytes[self.len] = b'.';
        for slot in self.bytes[start..start + count].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len = start + count;
        self.tail(tail);
    }

    fn tail(&mut self, tail: &[u8]) {
        self.bytes[self.len..self.len + tail.len()].copy_from_slice(tail);
        self.len += tail.len();
    }
}

/// `at` exactly as `to_rfc3339` writes it: `+00:00`, and fractional seconds in 0, 3, 6 or 9
/// digits, the fewest that lose nothing. `None` for a year outside 0–9999 or a leap second.
pub fn write(at: &DateTime<Utc>) -> Option<Rfc3339> {
    let (mut out, nanos) = through_seconds(at)?;
    const OFFSET: &[u8] = b"+00:00";
    match nanos {
        0 => out.tail(OFFSET),
        n if n % 1_000_000 == 0 => out.fraction(n / 1_000_000, 3, OFFSET),
        n if n % 1_000 == 0 => out.fraction(n / 1_000, 6, OFFSET),
        n => out.fraction(n, 9, OFFSET),
    }
    Some(out)
}

/// `at` as log lines carry it, the form of tracing-subscriber's `SystemTime`: microseconds
/// (truncated) and `Z`, as in `2026-11-24T09:30:00.123456Z`. `None` as for [`write`].
///
/// Every log line starts with one; tracing-subscriber's `fmt`-based writer took about 2,300
/// instructions of every request's access-log line for it.
pub fn write_log(at: &DateTime<Utc>) -> Option<Rfc3339> {
    let (mut out, nanos) = through_seconds(at)?;
    out.fraction(nanos / 1_000, 6, b"Z");
    Some(out)
}

/// `YYYY-MM-DDTHH:MM:SS`, and the nanoseconds still to write.
fn through_seconds(at: &DateTime<Utc>) -> Option<(Rfc3339, u32)> {
    let (date, time) = (at.date_naive(), at.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = Rfc3339 {
        bytes: *b"0000-00-00T00:00:00________________",
        len: 19,
    };
    out.pair(0, year / 100);
    out.pair(2, year % 100);
    out.pair(5, date.month());
    out.pair(8, date.day());
    out.pair(11, time.hour());
    out.pair(14, time.minute());
    out.pair(17, time.second());
    Some((out, nanos))
}

/// A timestamp as read from a row: its text when that is the text [`write`] writes (see
/// [`is_written`]), to be sent as it is; otherwise the instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp<'a> {
    Written(&'a [u8]),
    At(DateTime<Utc>),
}

impl Stamp<'_> {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            // `is_written` lets through only text that `parse` reads.
            Stamp::Written(text) => parse_bytes(text).expect("text as `write` writes it"),
            Stamp::At(at) => *at,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fractional seconds of 1 to 9 digits, then `+00:00` or `Z`;
/// `None` for anything else, valid RFC 3339 included (chrono parses those).
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    parse_bytes(text.as_bytes())
}

/// Whether `bytes` are exactly what [`write`] writes for the instant they name, so they can be
/// sent as they are; `false` for any other text, valid timestamps included.
///
/// Every timestamp this service stores on SQLite was written in this form, so a page's 100
/// timestamps are copied from the row into the body instead of parsed and written again
/// (about 500 instructions each, callgrind).
pub fn is_written(bytes: &[u8]) -> bool {
    // `write` writes the fraction in 0, 3, 6 or 9 digits, the fewest that lose nothing: the
    // last three of them are never all zero.
    let digits = match bytes.len() {
        25 => 0,
        29 => 3,
        32 => 6,
        35 => 9,
        _ => return false,
    };
    let Some((head, rest)) = bytes.split_first_chunk::<19>() else {
        return false;
    };
    let (fraction, offset) = rest.split_at(rest.len() - 6);
    let fraction_written = match fraction.split_first() {
        None => true,
        Some((point, fraction)) => {
            *point == b'.'
                && fraction.iter().all(u8::is_ascii_digit)
                && fraction[digits - 3..] != *b"000"
        }
    };
    offset == b"+00:00"
        && fraction_written
        && date_and_time(head).is_some_and(|(date, (hour, minute, second))| {
            date.is_some() && hour < 24 && minute < 60 && second < 60
        })
}

/// The date (`None` if there is no such day) and the hour, minute and second that
/// `YYYY-MM-DDTHH:MM:SS` names; `None` if `head` is not in that form.
fn date_and_time(head: &[u8; 19]) -> Option<(Option<NaiveDate>, (u32, u32, u32))> {
    /// Where `YYYY-MM-DDTHH:MM:SS` has digits.
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let digit = |at: usize| u32::from(head[at].wrapping_sub(b'0'));
    let separated = head[4] == b'-'
        && head[7] == b'-'
        && head[10] == b'T'
        && head[13] == b':'
        && head[16] == b':';
    // One test for all fourteen (a fold, which the compiler unrolls; `any` it did not).
    let largest = DIGITS.iter().fold(0, |largest, &at| largest.max(digit(at)));
    if !separated || largest > 9 {
        return None;
    }
    let pair = |at: usize| digit(at) * 10 + digit(at + 1);
    let date = NaiveDate::from_ymd_opt((pair(0) * 100 + pair(2)) as i32, pair(5), pair(8));
    Some((date, (pair(11), pair(14), pair(17))))
}

/// [`parse`] of text as SQLite hands it over: the form is ASCII, so it needs no UTF-8 check.
pub fn parse_bytes(bytes: &[u8]) -> Option<DateTime<Utc>> {
    /// What a fraction of `n` digits is multiplied by to count nanoseconds.
    const SCALE: [u32; 10] = [
        0,
        100_000_000,
        10_000_000,
        1_000_000,
        100_000,
        10_000,
        1_000,
        100,
        10,
        1,
    ];
    let (head, rest) = bytes.split_first_chunk::<19>()?;
    let (date, (hour, minute, second)) = date_and_time(head)?;
    let (nanos, offset) = match rest.split_first() {
        Some((b'.', after_point)) => {
            let count = after_point
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let scale = *SCALE.get(count).filter(|_| count > 0)?;
            let (fraction, offset) = after_point.split_at(count);
            let value = fraction
                .iter()
                .fold(0, |value, &byte| value * 10 + u32::from(byte - b'0'));
            (value * scale, offset)
        }
        _ => (0, rest),
    };
    if offset != b"+00:00" && offset != b"Z" {
        return None;
    }
    // A leap second (`:60`) is refused here and left to chrono.
    Some(
        date?
            .and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, SecondsFormat, TimeZone};

    use super::*;

    /// Timestamps spread over years 0–9999, with fractions of every width `to_rfc3339` picks.
    fn samples() -> Vec<DateTime<Utc>> {
        let first = Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap();
        let span = (Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() - first).num_seconds();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..20_000)
            .map(|i| {
                let seconds = (next() % span as u64) as i64;
                let nanos = (next() % 1_000_000_000) as i64;
                let nanos = match i % 5 {
                    0 => 0,
                    1 => nanos / 1_000_000 * 1_000_000,
                    2 => nanos / 1_000 * 1_000,
                    _ => nanos,
                };
                first + Duration::seconds(seconds) + Duration::nanoseconds(nanos)
            })
            .chain([
                first,
                Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
                Utc.with_ymd_and_hms(2024, 2, 29, 12, 0, 0).unwrap(),
            ])
            .collect()
    }

    #[test]
    fn writes_what_to_rfc3339_writes() {
        for at in samples() {
            assert_eq!(write(&at).unwrap().as_str(), at.to_rfc3339(), "{at:?}");
        }
    }

    #[test]
    fn writes_the_log_form() {
        for at in samples() {
            let expected = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            assert_eq!(write_log(&at).unwrap().as_str(), expected, "{at:?}");
        }
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 9, 30, 0).unwrap() + Duration::nanoseconds(999);
        assert_eq!(
            write_log(&at).unwrap().as_str(),
            "2026-11-24T09:30:00.000000Z"
        );
    }

    #[test]
    fn reads_what_chrono_reads() {
        for at in samples() {
            for form in [
                SecondsFormat::AutoSi,
                SecondsFormat::Millis,
                SecondsFormat::Nanos,
            ] {
                for use_z in [false, true] {
                    let text = at.to_rfc3339_opts(form, use_z);
                    let chrono = DateTime::parse_from_rfc3339(&text).unwrap().to_utc();
                    assert_eq!(parse(&text), Some(chrono), "{text}");
                }
            }
        }
        assert_eq!(
            parse("2026-11-24T09:30:00.1+00:00"),
            Some(
                Utc.with_ymd_and_hms(2026, 11, 24, 9, 30, 0).unwrap() + Duration::milliseconds(100)
            )
        );
    }

    /// What `is_written` must answer: whether `text` is what `write` writes for the instant
    /// `parse` (or chrono, for what `parse` leaves to it) reads from it.
    fn written_by_write(text: &str) -> bool {
        let at = parse(text).or_else(|| Some(DateTime::parse_from_rfc3339(text).ok()?.to_utc()));
        at.and_then(|at| write(&at))
            .is_some_and(|written| written.as_str() == text)
    }

    #[test]
    fn knows_the_text_write_writes() {
        let mut texts = Vec::new();
        for at in samples() {
            for form in [
                SecondsFormat::AutoSi,
                SecondsFormat::Millis,
                SecondsFormat::Micros,
                SecondsFormat::Nanos,
            ] {
                texts.push(at.to_rfc3339_opts(form, false));
                texts.push(at.to_rfc3339_opts(form, true));
            }
        }
        // Every byte of a written timestamp replaced by every character a timestamp holds,
        // and by others: impossible dates and times, other fractions and offsets.
        let written = write(&Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap());
        let base = written.unwrap().as_str().to_owned() + ".120";
        for at in 0..base.len() {
            for replacement in "0123456789-:.+TZ é".chars() {
                let mut text: Vec<char> = base.chars().collect();
                text[at] = replacement;
                texts.push(text.into_iter().collect());
            }
        }
        texts.extend(
            [
                "2023-02-29T00:00:00+00:00",
                "2026-04-31T00:00:00+00:00",
                "2026-11-24T24:00:00+00:00",
                "2026-11-24T09:60:00+00:00",
                "2016-12-31T23:59:60+00:00",
                "2026-11-24T09:30:00.000+00:00",
                "2026-11-24T09:30:00.120000+00:00",
                "2026-11-24T09:30:00.123000000+00:00",
                "2026-11-24T09:30:00.1+00:00",
                "2026-11-24T09:30:00.123+01:00",
                "2026-11-24T09:30:00.123-00:00",
                "2026-11-24 09:30:00.123+00:00",
                "2026-11-24T09:30:00.12a+00:00",
                "0000-01-01T00:00:00+00:00",
                "9999-12-31T23:59:59.999999999+00:00",
            ]
            .map(String::from),
        );
        let mut accepted = 0;
        for text in &texts {
            let expected = written_by_write(text);
            assert_eq!(is_written(text.as_bytes()), expected, "{text}");
            // What `Stamp::at` counts on.
            assert!(!expected || parse(text).is_some(), "{text}");
            accepted += usize::from(expected);
        }
        // Both answers were met, many times.
        assert!(accepted > 20_000 && texts.len() - accepted > 20_000);
    }

    #[test]
    fn leaves_other_forms_to_chrono() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        assert!(write(&leap).is_none());
        assert!(write_log(&leap).is_none());
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        assert!(write(&far).is_none());
        assert!(write_log(&far).is_none());
        for text in [
            "2026-11-24T10:30:00+01:00",
            "2026-11-24 09:30:00+00:00",
            "2016-12-31T23:59:60.5+00:00",
            "2026-11-24T09:30:00.1234567891+00:00",
            "2026-11-24T09:30:00.+00:00",
            "2026-02-30T09:30:00+00:00",
            "2026-11-24T09:30:00+00:00 ",
            "2026-11-24T09:30",
            "+2026-11-24T09:30:00+00:00",
            "",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
