//! Logging: tracing-subscriber's formats on standard error, so that standard output carries only
//! what a command is asked to print (a spec, a key). Lines are handed to a writer thread
//! (tracing-appender), so a request never waits for the terminal or a log collector's pipe.

use std::io::{self, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one coloured line per event, with its spans.
    Pretty,
    /// For log collectors: one JSON object per line, the event's fields at the top level and
    /// the request span's (its `request_id`) under `span`.
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default filter (`default`, with
/// the database driver's chatter at `warn`). Hold the returned guard until the process ends:
/// its drop writes out what is still queued.
pub fn init(format: LogFormat, default: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn")));
    // Blocking rather than lossy: under a burst the request waits for room, and no line is lost.
    // The writer thread flushes whenever it has emptied the queue, so through a buffer a line
    // waits for nothing, and under load one write carries many lines instead of one each.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(io::BufWriter::new(io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests calling into the library) keeps the first subscriber.
    let _ = match format {
        LogFormat::Pretty => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    guard
}
