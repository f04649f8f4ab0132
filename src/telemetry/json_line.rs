//! JSON log lines, written straight into the output.
//!
//! The lines are those of tracing-subscriber's JSON format with `flatten_event` and
//! `with_current_span`: timestamp, level, the event's fields, target, and the current span's
//! fields with its name. That format stores a span's fields as JSON text, and for every event
//! parses them back into a `serde_json::Value` to write them out again; it also formats each
//! field into a temporary string before escaping it. Together that was 21k instructions of
//! every access-log line (callgrind), a fifth of a GET by id. Here the span's text is copied as
//! it is and fields are escaped as they are formatted: about 9k a line. A test checks the lines
//! against tracing-subscriber's own.

use std::fmt::{self, Write};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormattedFields,
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records from the `log` crate carry their real level and target as fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level().as_str())?;
        let mut fields = FieldWriter {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;

        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            // JsonFields keeps a span's fields as the text of a JSON object: `{"k":v,...}`.
            let inner = extensions
                .get::<FormattedFields<JsonFields>>()
                .and_then(|fields| fields.fields.strip_prefix('{')?.strip_suffix('}'))
                .unwrap_or_default();
            if !inner.is_empty() {
                writer.write_str(inner)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.metadata().name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as tracing-serde would: numbers and booleans bare,
/// anything formatted with `Debug` or `Display` as a string.
struct FieldWriter<'w, 'a> {
    out: &'w mut Writer<'a>,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's form: shortest round-trip digits, and `null` for NaN and infinities.
        self.entry(field, |out| match serde_json::Number::from_f64(value) {
            Some(number) => write!(out, "{number}"),
            None => out.write_str("null"),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn string(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what passes through as serde_json escapes a string's contents: quote, backslash
/// and control characters, nothing else.
struct Escaped<'w, 'a>(&'w mut Writer<'a>);

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain_from = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain_from..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain_from = at + 1;
        }
        self.0.write_str(&text[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn emit() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 😀 </";
        let request = tracing::info_span!("request", request_id = %"abc-123");
        request.in_scope(|| {
            tracing::info!(
                method = %"GET",
                path = %tricky,
                status = 200u16,
                latency_ms = 1.25,
                operation = "getUser",
                "request"
            );
            let error = io::Error::other(tricky);
            tracing::error!(error = %error, code = -7i64, ok = false, "request failed");
            let inner = tracing::info_span!("inner", b = 2, a = "one", c = ?Some(3));
            inner.in_scope(|| tracing::warn!(big = 1u128 << 100, ratio = f64::NAN, "nested"));
            let bare = tracing::debug_span!("bare");
            bare.in_scope(|| tracing::info!(list = ?vec!["x", "y\"z"], "no span fields"));
            tracing::info!(parent: &inner, whole = 3.0, "explicit parent");
        });
        tracing::info!("outside any span: {}, {:?}", tricky, "debug\"ged");
        tracing::warn!(target: "other::target", empty = "", "");
    }

    fn lines(subscriber: impl FnOnce(Lines) -> Box<dyn Subscriber + Send + Sync>) -> Vec<Value> {
        let out = Lines::default();
        tracing::subscriber::with_default(subscriber(out.clone()), emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let mut value: Value = serde_json::from_str(line).expect(line);
                let stamp = value.as_object_mut().unwrap().shift_remove("timestamp");
                let stamp = stamp.expect("a timestamp");
                chrono::DateTime::parse_from_rfc3339(stamp.as_str().unwrap()).unwrap();
                value
            })
            .collect()
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_format() {
        let ours = lines(|out| {
            Box::new(
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(out)
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLine)
                    .finish(),
            )
        });
        let theirs = lines(|out| {
            Box::new(
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(out)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
            )
        });
        assert_eq!(ours.len(), 7);
        for (ours, theirs) in ours.iter().zip(&theirs) {
            // Equal as values, and in the same key order.
            assert_eq!(ours, theirs);
            assert_eq!(ours.to_string(), theirs.to_string());
        }
        assert_eq!(ours.len(), theirs.len());
    }
}
