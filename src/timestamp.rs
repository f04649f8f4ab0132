//! Timestamps in the one RFC 3339 form this service stores and sends
//! (`2026-11-24T09:30:00.123456+00:00`), read and written digit by digit; and written in the
//! form its log lines carry (`2026-11-24T09:30:00.123456Z`).
//!
//! A page of 50 users carries 100 timestamps, each read from SQLite and written into JSON.
//! chrono's `fmt`-based `to_rfc3339` took about 700 instructions a timestamp and its general
//! parser about 470; these take about 290 and 370 (callgrind), which took a 50-user page from
//! 696k to 652k instructions. Anything outside the fixed form (another offset, a leap second, a
//! year past 9999) is left to chrono, so results never differ from its own.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// The longest form written: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+00:00`.
const MAX_LEN: usize = 35;

/// A timestamp written out, as [`DateTime::to_rfc3339`] writes it.
pub struct Rfc3339 {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("only ASCII is written")
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// `value` in exactly `count` decimal digits, zero-padded.
    fn digits(&mut self, mut value: u32, count: usize) {
        let end = self.len + count;
        for slot in self.bytes[self.len..end].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len = end;
    }
}

/// `at` exactly as `to_rfc3339` writes it: `+00:00`, and fractional seconds in 0, 3, 6 or 9
/// digits, the fewest that lose nothing. `None` for a year outside 0–9999 or a leap second.
pub fn write(at: &DateTime<Utc>) -> Option<Rfc3339> {
    let (mut out, nanos) = through_seconds(at)?;
    let fraction = match nanos {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1_000 == 0 => Some((n / 1_000, 6)),
        n => Some((n, 9)),
    };
    if let Some((value, count)) = fraction {
        out.push(b'.');
        out.digits(value, count);
    }
    for &byte in b"+00:00" {
        out.push(byte);
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
    out.push(b'.');
    out.digits(nanos / 1_000, 6);
    out.push(b'Z');
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
        bytes: [0; MAX_LEN],
        len: 0,
    };
    out.digits(year, 4);
    out.push(b'-');
    out.digits(date.month(), 2);
    out.push(b'-');
    out.digits(date.day(), 2);
    out.push(b'T');
    out.digits(time.hour(), 2);
    out.push(b':');
    out.digits(time.minute(), 2);
    out.push(b':');
    out.digits(time.second(), 2);
    Some((out, nanos))
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fractional seconds of 1 to 9 digits, then `+00:00` or `Z`;
/// `None` for anything else, valid RFC 3339 included (chrono parses those).
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] of text as SQLite hands it over: the form is ASCII, so it needs no UTF-8 check.
pub fn parse_bytes(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let number = |from: usize, count: usize| -> Option<u32> {
        let field = bytes.get(from..from + count)?;
        field.iter().try_fold(0u32, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let separated = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(at, byte)| bytes.get(at) == Some(&byte));
    if !separated {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let mut rest = &bytes[19..];
    let mut nanos = 0;
    if let Some((b'.', after_point)) = rest.split_first() {
        let count = after_point
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&count) {
            return None;
        }
        let fraction = number(20, count)?;
        nanos = fraction * 10u32.pow(9 - count as u32);
        rest = &after_point[count..];
    }
    if rest != b"+00:00" && rest != b"Z" {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    // A leap second (`:60`) is refused here and left to chrono.
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
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
