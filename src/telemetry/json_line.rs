//! JSON log lines, written straight into the output.
//!
//! The lines are those of tracing-subscriber's JSON format with `flatten_event` and
//! `with_current_span`: timestamp, level, the event's fields, target, and the current span's
//! fields with its name. That format stores a span's fields as JSON text, and for every event
//! parses them back into a `serde_json::Value` to write them out again; it also formats each
//! field into a temporary string before escaping it. Together that was 21k instructions of
//! every access-log line (callgrind), a fifth of a GET by id. Here the span's text is copied as
//! it is, fields are escaped as they are formatted, by table, and the timestamp is written digit
//! by digit: about 6k a line. The request span's fields are kept by [`SpanFields`] in the same
//! text `JsonFields` keeps, for about 1.8k instructions a span instead of 3.9k. A test checks
//! the lines, byte for byte, against tracing-subscriber's own.

use std::{
    borrow::Cow,
    fmt::{self, Write},
    sync::Arc,
};

use chrono::Utc;
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::Record,
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

use crate::timestamp;

pub struct JsonLine;

impl<S> FormatEvent<S, SpanFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records from the `log` crate carry their real level and target as fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        writer.write_str("{\"timestamp\":\"")?;
        match timestamp::write_log(&Utc::now()) {
            Some(now) => writer.write_str(now.as_str())?,
            None => SystemTime.format_time(&mut writer)?,
        }
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
        // Without a span, the request the task answers, if it stands in for its span.
        if span.is_none()
            && let Ok(written) = REQUEST_ID.try_with(|id| request_span(&mut writer, id))
        {
            written?;
        } else if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            // A span's fields are kept as the text of a JSON object: `{"k":v,...}`.
            let inner = extensions
                .get::<FormattedFields<SpanFields>>()
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

tokio::task_local! {
    /// The id of the request the current task answers, where it stands in for the request's
    /// span (see [`super::in_request`]).
    pub(super) static REQUEST_ID: Arc<str>;
}

/// `,"span":{…}` as a `request` span whose one field is `request_id` is written.
fn request_span(out: &mut Writer<'_>, request_id: &str) -> fmt::Result {
    out.write_str(",\"span\":{\"request_id\":")?;
    string(out, request_id)?;
    out.write_str(",\"name\":\"request\"}")
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
        self.entry(field, |out| float(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| debugged(out, value));
    }
}

/// A span's fields, kept as tracing-subscriber's `JsonFields` keeps them: the text of a JSON
/// object, keys in order, a repeated key's last value. `JsonFields` collects the values into a
/// map of `serde_json::Value`s and serialises it, about 3,000 instructions for the one field
/// of every request's span (callgrind); here each value is written once, as event fields are.
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut values = SpanValues::new();
        fields.record(&mut values);
        // Composed in a buffer sized for a request span, then written whole: written piece by
        // piece, the span's empty string regrew several times.
        let mut text = String::with_capacity(TEXT_CAPACITY);
        values.write(&mut Writer::new(&mut text))?;
        writer.write_str(&text)
    }

    /// Fields recorded after the span began (`Span::record`) join those it has.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut values = SpanValues::new();
        if !current.fields.is_empty() {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
            for (name, value) in object {
                values.entries.push((Cow::Owned(name), value.to_string()));
            }
        }
        fields.record(&mut values);
        current.fields.clear();
        values.write(&mut current.as_writer())
    }
}

/// Room for a request span's text (`{"request_id":"<uuid>"}` is 53 bytes) without regrowing.
const TEXT_CAPACITY: usize = 64;

/// Each field's name and its value as JSON text, in the order recorded.
struct SpanValues {
    entries: Vec<(Cow<'static, str>, String)>,
    result: fmt::Result,
}

impl SpanValues {
    fn new() -> Self {
        SpanValues {
            entries: Vec::with_capacity(1),
            result: Ok(()),
        }
    }

    fn add(&mut self, name: &'static str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let mut text = String::with_capacity(TEXT_CAPACITY);
        if self.result.is_ok() {
            self.result = value(&mut Writer::new(&mut text));
        }
        self.entries.push((Cow::Borrowed(name), text));
    }

    fn write(mut self, out: &mut Writer<'_>) -> fmt::Result {
        self.result?;
        // Stable: a repeated name keeps its values in recorded order, and the last one wins.
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        out.write_char('{')?;
        let mut separator = "";
        for (at, (name, value)) in self.entries.iter().enumerate() {
            if self.entries.get(at + 1).is_some_and(|next| next.0 == *name) {
                continue;
            }
            out.write_str(separator)?;
            string(out, name)?;
            out.write_char(':')?;
            out.write_str(value)?;
            separator = ",";
        }
        out.write_char('}')
    }
}

/// Value for value as `JsonFields` records them.
impl Visit for SpanValues {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field.name(), |out| string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field.name(), |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field.name(), |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field.name(), |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.add(field.name(), |out| float(out, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.add(field.name(), |out| {
            out.write_char('[')?;
            for (at, byte) in value.iter().enumerate() {
                if at > 0 {
                    out.write_char(',')?;
                }
                write!(out, "{byte}")?;
            }
            out.write_char(']')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // The metadata of `log` records is not a field; a raw identifier loses its `r#`.
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.add(name, |out| debugged(out, value));
    }
}

/// One request's access-log line: what [`JsonLine`] writes for the edge's `request` event,
/// raised inside the request's span, written here without going through `tracing`. Through
/// it, the dispatch, the span lookup and the field visitors took 8% of the server's CPU under
/// a GET load (perf); here it is a handful of writes. A test checks that both lines are the
/// same, byte for byte.
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub operation: &'a str,
    pub request_id: &'a str,
}

/// The target request lines are logged under, and filtered by (`RUST_LOG`): the edge's.
pub const REQUEST_TARGET: &str = "users_api::api::edge";

impl RequestLine<'_> {
    pub fn write(&self, out: &mut String) -> fmt::Result {
        let mut out = Writer::new(out);
        out.write_str("{\"timestamp\":\"")?;
        match timestamp::write_log(&Utc::now()) {
            Some(now) => out.write_str(now.as_str())?,
            None => SystemTime.format_time(&mut out)?,
        }
        out.write_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":")?;
        string(&mut out, self.method)?;
        out.write_str(",\"path\":")?;
        string(&mut out, self.path)?;
        write!(out, ",\"status\":{},\"latency_ms\":", self.status)?;
        float(&mut out, self.latency_ms)?;
        out.write_str(",\"operation\":")?;
        string(&mut out, self.operation)?;
        out.write_str(",\"target\":")?;
        string(&mut out, REQUEST_TARGET)?;
        request_span(&mut out, self.request_id)?;
        out.write_str("}\n")
    }

    /// The same line as a `tracing` event, for the other log format; raised in the request's
    /// span, which gives it the request id.
    pub fn event(&self) {
        tracing::info!(
            target: REQUEST_TARGET,
            method = self.method,
            path = self.path,
            status = self.status,
            latency_ms = self.latency_ms,
            operation = self.operation,
            "request"
        );
    }
}

/// serde_json's form: shortest round-trip digits, and `null` for NaN and infinities.
fn float(out: &mut Writer<'_>, value: f64) -> fmt::Result {
    match serde_json::Number::from_f64(value) {
        Some(number) => write!(out, "{number}"),
        None => out.write_str("null"),
    }
}

fn debugged(out: &mut Writer<'_>, value: &dyn fmt::Debug) -> fmt::Result {
    out.write_char('"')?;
    write!(Escaped(&mut *out), "{value:?}")?;
    out.write_char('"')
}

fn string(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what passes through as serde_json escapes a string's contents: quote, backslash
/// and control characters, nothing else.
struct Escaped<'w, 'a>(&'w mut Writer<'a>);

/// For each byte, 0 if it stands for itself in a JSON string, else the letter of its escape
/// (`u` for `\u00XX`). A table lookup per byte, and the plain runs between escapes written
/// whole: a `match` per byte cost about 15 instructions a byte (callgrind).
const ESCAPE: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table
};

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut plain_from = 0;
        while let Some(offset) = bytes[plain_from..]
            .iter()
            .position(|&byte| ESCAPE[usize::from(byte)] != 0)
        {
            let at = plain_from + offset;
            self.0.write_str(&text[plain_from..at])?;
            let byte = bytes[at];
            match ESCAPE[usize::from(byte)] {
                b'u' => write!(self.0, "\\u{byte:04x}")?,
                letter => {
                    self.0.write_char('\\')?;
                    self.0.write_char(char::from(letter))?;
                }
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
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 😀 </ \
            return \r backspace \u{8} form feed \u{c} nul \0 unit separator \u{1f}\"";
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
            // Fields recorded later: into a span with none yet, then into one with some.
            let late = tracing::info_span!("late", r#type = ?"raw", first = tracing::field::Empty,
                second = tracing::field::Empty, bytes = tracing::field::Empty);
            late.record("first", "one");
            late.in_scope(|| tracing::info!("after one"));
            late.record("second", 2.5);
            late.record("bytes", &b"\x00\xff"[..]);
            late.record("first", "replaced");
            late.in_scope(|| tracing::info!("after more"));
            let empty = tracing::info_span!("empty", later = tracing::field::Empty);
            empty.record("later", true);
            empty.in_scope(|| tracing::info!("recorded into an empty span"));
            let dup = tracing::info_span!("dup", z = 1, a = 1, z = 2, "log.target" = ?"skipped",
                "r#named" = ?0);
            dup.in_scope(|| tracing::info!("repeated names"));
        });
        tracing::info!("outside any span: {}, {:?}", tricky, "debug\"ged");
        tracing::warn!(target: "other::target", empty = "", "");
    }

    /// Each line as written, but for its timestamp, which is checked and cut out.
    fn lines(subscriber: impl FnOnce(Lines) -> Box<dyn Subscriber + Send + Sync>) -> Vec<String> {
        let out = Lines::default();
        tracing::subscriber::with_default(subscriber(out.clone()), emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.split_inclusive('\n').map(without_timestamp).collect()
    }

    /// A line as written, but for its timestamp, which is checked and cut out.
    fn without_timestamp(line: &str) -> String {
        assert!(line.ends_with('\n'), "{line}");
        serde_json::from_str::<Value>(line).expect(line);
        let rest = line.strip_prefix("{\"timestamp\":\"").expect(line);
        let (stamp, rest) = rest.split_at(27);
        // `SystemTime`'s form: microseconds and `Z`.
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
        assert_eq!((&stamp[19..20], &stamp[26..]), (".", "Z"), "{stamp}");
        rest.to_owned()
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_format() {
        let ours = lines(|out| {
            Box::new(
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(out)
                    .fmt_fields(SpanFields)
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
        assert_eq!(ours.len(), 11);
        // Byte for byte: the same keys in the same order, the same escapes and number forms.
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_request_line_is_the_line_of_its_event() {
        let requests = [
            RequestLine {
                method: "GET",
                path: "/api/v1/users/8",
                status: 200,
                latency_ms: 0.012,
                operation: "getUser",
                request_id: "8d70a92c-57c4-4570-81c9-bb795c2edb64",
            },
            RequestLine {
                method: "PATCH",
                path: "/api/v1/users/\"%0a\\\u{1}é",
                status: 412,
                latency_ms: 1234.5,
                operation: "unmatched",
                request_id: "caller-chosen_id.1:2",
            },
            RequestLine {
                method: "DELETE",
                path: "",
                status: 500,
                latency_ms: 3.0,
                operation: "other",
                request_id: "x",
            },
        ];
        // The event in the request's span, or with an id in the task-local that stands in
        // for the span: `Some(None)` the request's own id, `Some(Some(id))` another one.
        let events = |in_span: bool, in_task: Option<Option<&str>>| -> Vec<String> {
            requests
                .iter()
                .map(|request| {
                    let out = Lines::default();
                    let subscriber = tracing_subscriber::fmt()
                        .with_writer(out.clone())
                        .fmt_fields(SpanFields)
                        .event_format(JsonLine)
                        .finish();
                    let event = || match in_span {
                        true => tracing::info_span!("request", request_id = request.request_id)
                            .in_scope(|| request.event()),
                        false => request.event(),
                    };
                    tracing::subscriber::with_default(subscriber, || match in_task {
                        Some(id) => {
                            let id = Arc::from(id.unwrap_or(request.request_id));
                            REQUEST_ID.sync_scope(id, event)
                        }
                        None => event(),
                    });
                    let line = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
                    without_timestamp(&line)
                })
                .collect()
        };
        let in_span = events(true, None);
        assert_eq!(
            events(false, Some(None)),
            in_span,
            "the task-local as the span"
        );
        assert_eq!(events(true, Some(Some("other"))), in_span, "a span wins");
        let events = in_span;
        let written: Vec<String> = requests
            .iter()
            .map(|request| {
                let mut line = String::new();
                request.write(&mut line).unwrap();
                without_timestamp(&line)
            })
            .collect();
        assert_eq!(written, events);
    }
}
