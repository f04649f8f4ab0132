//! Logging setup. Logs go to standard error so that standard output carries only what a
//! command is asked to print (a spec, a key).

use std::{
    cell::RefCell,
    io::{self, BufWriter, IsTerminal, Stderr, Write},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    thread,
    time::Duration,
};

use futures_util::future::Either;
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use self::json_line::{JsonLine, SpanFields};
pub use self::json_line::{REQUEST_TARGET, RequestLine};

use crate::config::LogFormat;

mod json_line;

/// How long a log line may wait in the buffer before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Installs the global subscriber; `RUST_LOG` overrides the default filter (`info`, with the
/// database driver's chatter at `warn`). Hold the returned guard until the process ends: its
/// drop writes out what is still buffered.
pub fn init(format: LogFormat) -> LogFlush {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let writer = BufferedStderr::start();
    let guard = LogFlush(writer.clone());
    let writer_of_lines = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(io::stderr().is_terminal());
    // A second init (tests calling into the library) keeps the first subscriber.
    match format {
        LogFormat::Pretty => {
            let _ = builder.try_init();
        }
        LogFormat::Json => {
            let installed = builder
                .fmt_fields(SpanFields)
                .event_format(JsonLine)
                .try_init();
            if installed.is_ok() {
                let _ = JSON_LINES.set(writer_of_lines);
            }
        }
    }
    guard
}

/// Where JSON log lines go, once the JSON format is installed: request lines are written
/// there directly (see [`RequestLine`]).
static JSON_LINES: OnceLock<BufferedStderr> = OnceLock::new();

/// Runs `work`, a request's, so that every line it logs names the request by its id: with
/// the JSON format, in a task-local value that the format writes as the `request` span's
/// fields would be written (`"span":{"request_id":…,"name":"request"}`); with the other
/// format, in a `request` span. A span cost about 5% of the server's CPU under a GET load
/// (perf: its creation, its entry and exit at every poll, its closing); the task-local, a
/// swap of a thread-local at every poll.
pub fn in_request<F: Future>(request_id: Arc<str>, work: F) -> impl Future<Output = F::Output> {
    if JSON_LINES.get().is_some() {
        Either::Left(json_line::REQUEST_ID.scope(request_id, work))
    } else {
        let span =
            tracing::info_span!(target: REQUEST_TARGET, "request", request_id = &*request_id);
        Either::Right(work.instrument(span))
    }
}

impl RequestLine<'_> {
    /// Logs the line, if `RUST_LOG` lets `info` of [`REQUEST_TARGET`] through.
    pub fn log(&self) {
        if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
            return;
        }
        let Some(lines) = JSON_LINES.get() else {
            return self.event();
        };
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            // Composed before the lock is taken, so that the lock is held for a copy only.
            if self.write(line).is_ok() {
                let _ = lines.lock().write_all(line.as_bytes());
            }
        });
    }
}

/// Standard error behind a 64 KiB buffer that a background thread flushes every
/// [`FLUSH_EVERY`]. Writing every access-log line with its own `write` cost the cheapest route
/// 40% of its throughput (measured: 54k req/s against 95k with no access log); handing lines
/// to a writer thread still woke that thread for nearly every line (65k). Appending to a
/// buffer under an uncontended lock costs neither, and under load one `write` carries
/// hundreds of lines. The price: a line can reach the terminal up to 100 ms late, lines still
/// buffered are lost if the process is killed with SIGKILL, and the thread whose line fills
/// the buffer (a runtime worker) writes it out, holding the lock. Leaving every write to the
/// flush thread, woken early when a second buffer filled, was measured and not kept: on two
/// cores its wake-ups cost GET by id's p99 more than the writes they took off the workers
/// (median 1.88 → 2.10–2.39 ms over four rounds each).
#[derive(Clone)]
struct BufferedStderr(Arc<Mutex<BufWriter<Stderr>>>);

impl BufferedStderr {
    fn start() -> Self {
        let writer = BufferedStderr(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            io::stderr(),
        ))));
        let flusher = writer.clone();
        // A plain thread: logging works before, after and without the async runtime.
        thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                loop {
                    thread::sleep(FLUSH_EVERY);
                    flusher.flush();
                }
            })
            .expect("the log flush thread starts");
        writer
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        // A panic while formatting a line leaves nothing half-done that matters here.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush(&self) {
        let _ = self.lock().flush();
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LockedStderr<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedStderr(self.lock())
    }
}

/// The buffer, locked for one formatted line.
struct LockedStderr<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl Write for LockedStderr<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes out buffered log lines when dropped.
pub struct LogFlush(BufferedStderr);

impl Drop for LogFlush {
    fn drop(&mut self) {
        self.0.flush();
    }
}
