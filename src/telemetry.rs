//! Logging: tracing-subscriber's formats on standard error, so that standard output carries only
//! what a command is asked to print (a spec, a key).
//!
//! How lines reach standard error is chosen by `--log-writer`. `buffered` (the default): lines
//! are appended to a 64 KiB buffer in memory, written out when it fills and every 100 ms, so
//! that under load one `write(2)` carries hundreds of lines and no thread is woken for any of
//! them; a line can then appear up to 100 ms late, and a process killed with SIGKILL loses the
//! last 100 ms of lines. `thread`: each line is handed to a writer thread of its own
//! (tracing-appender), which writes it at once; under load the hand-off and the thread's
//! wake-ups cost more than the formatting (docs/performance.md has the figures).

use std::{
    io::{self, BufWriter, Stderr, Write},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter,
    fmt::{MakeWriter, writer::BoxMakeWriter},
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one plain line per event, with its spans.
    Pretty,
    /// For log collectors: one JSON object per line, the event's fields at the top level and
    /// the request span's (its `request_id`) under `span`.
    Json,
}

/// How log lines reach standard error (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWriter {
    Buffered,
    Thread,
}

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Installs the global subscriber; `RUST_LOG` overrides the default filter (`default`, with
/// the database driver's chatter at `warn`). Hold the returned guard until the process ends:
/// its drop writes out what is still waiting.
pub fn init(format: LogFormat, writer: LogWriter, default: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn")));
    let (make_writer, guard) = match writer {
        LogWriter::Buffered => {
            let buffer = Buffered::new();
            (
                BoxMakeWriter::new(buffer.clone()),
                LogGuard::Buffered(buffer),
            )
        }
        LogWriter::Thread => {
            // Blocking rather than lossy: under a burst a request waits for room, and no line
            // is lost.
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(false)
                .thread_name("log-writer")
                .finish(io::stderr());
            (BoxMakeWriter::new(writer), LogGuard::Thread(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(make_writer);
    // A second init (tests calling into the library) keeps the first subscriber.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    guard
}

/// Writes out what is still waiting when dropped; for the buffered writer, also flushes it
/// every 100 ms once [`LogGuard::flush_periodically`] has started that on the runtime.
pub enum LogGuard {
    Buffered(Buffered),
    Thread(WorkerGuard),
}

impl LogGuard {
    /// Writes the buffer out every 100 ms from a task of the current runtime, for as long as
    /// the process runs.
    pub fn flush_periodically(&self) {
        if let LogGuard::Buffered(buffer) = self {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(FLUSH_EVERY);
                loop {
                    ticker.tick().await;
                    buffer.flush();
                }
            });
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let LogGuard::Buffered(buffer) = self {
            buffer.flush();
        }
    }
}

/// Standard error behind a shared buffer.
#[derive(Clone)]
pub struct Buffered(Arc<Mutex<BufWriter<Stderr>>>);

impl Buffered {
    fn new() -> Self {
        Buffered(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            io::stderr(),
        ))))
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        // A panic while formatting a line leaves nothing half-done that matters here.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush(&self) {
        let _ = self.lock().flush();
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = LockedBuffer<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedBuffer(self.lock())
    }
}

/// The buffer, locked for one formatted line (tracing-subscriber writes a line whole).
pub struct LockedBuffer<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl Write for LockedBuffer<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
