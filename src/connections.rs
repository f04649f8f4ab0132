//! The listening socket's guards, below HTTP: a cap on open connections, a back-off when the
//! process runs out of file descriptors, and what hyper is not given through poem: a timeout
//! for a request's headers (a client that opens a connection and sends nothing, or sends a
//! header line every few seconds, holds it for nothing), one for an idle keep-alive
//! connection, limits on a request's head answered as problems (hyper's own would answer
//! without a body), on shutdown the end of connections with no request in progress, and word
//! of a client that hung up to the response it leaves (an event stream).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use poem::{
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a connection may take over each part of its life, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// From a connection's start, or the first byte of a request, to the end of its headers.
    pub header_read: Duration,
    /// Between a response and the next request on a keep-alive connection, and between two
    /// writes of a response still being sent (an event stream).
    pub idle: Duration,
}

/// How often, at most, running out of file descriptors is logged while it lasts.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long the accept loop waits after a failed accept: without it, a process out of file
/// descriptors would retry at once, forever, one core at 100%.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A TCP acceptor with these guards, and Nagle's algorithm off. A response larger than a
/// segment (a page of users, over a network) goes out as full segments and a short last one,
/// which Nagle holds back until the client has acknowledged the rest; a client delaying that
/// acknowledgement (Linux waits up to 40 ms) delays the response by as much. hyper writes each
/// response's head and body together, so there is nothing for Nagle to coalesce.
pub struct Guarded {
    inner: TcpAcceptor,
    limits: Limits,
    slots: Arc<Semaphore>,
    failures: AcceptFailures,
    shutdown: CancellationToken,
    hangups: Hangups,
}

impl Guarded {
    /// Once `shutdown` is cancelled, connections without a request in progress (idle, or
    /// still sending headers) close at once, so that a graceful stop waits only for requests
    /// the server is working on. `hangups` learns of every connection's client that hangs up.
    pub fn new(
        inner: TcpAcceptor,
        limits: Limits,
        shutdown: CancellationToken,
        hangups: Hangups,
    ) -> Self {
        Guarded {
            inner,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            failures: AcceptFailures::default(),
            shutdown,
            hangups,
        }
    }
}

/// Which open connections' clients have hung up, by the client's address: how a response
/// still being sent learns that nobody reads it. An event stream between two heartbeats writes
/// nothing, so without this it would hold its stream slot until its next write failed: hyper
/// reads the end of the connection and ends its part, but poem's connection task then waits
/// for the response once more.
#[derive(Clone, Default)]
pub struct Hangups(Arc<Mutex<HashMap<SocketAddr, CancellationToken>>>);

impl Hangups {
    /// Ready once the client of the connection from `remote` has closed it; `None` for an
    /// address no open connection has.
    pub fn of(&self, remote: &SocketAddr) -> Option<WaitForCancellationFutureOwned> {
        self.open_connections()
            .get(remote)
            .map(|hangup| hangup.clone().cancelled_owned())
    }

    fn open(&self, remote: SocketAddr) -> Hangup {
        let token = CancellationToken::new();
        self.open_connections().insert(remote, token.clone());
        Hangup {
            remote,
            token,
            hangups: self.clone(),
        }
    }

    fn open_connections(&self) -> MutexGuard<'_, HashMap<SocketAddr, CancellationToken>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's entry in [`Hangups`], which ends with the connection. Its socket closes
/// after the entry goes, so the next connection from the same address cannot lose its own.
struct Hangup {
    remote: SocketAddr,
    token: CancellationToken,
    hangups: Hangups,
}

impl Drop for Hangup {
    fn drop(&mut self) {
        self.token.cancel();
        self.hangups.open_connections().remove(&self.remote);
    }
}

/// Failed accepts since the last log line about them.
#[derive(Default)]
struct AcceptFailures {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn note(&mut self, err: &io::Error) {
        self.unlogged += 1;
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL)
        {
            tracing::error!(
                error = %err,
                failed_accepts = self.unlogged,
                "cannot accept connections (out of file descriptors? raise `ulimit -n` or lower \
                 --max-connections); retrying"
            );
            self.logged_at = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

impl Acceptor for Guarded {
    type Io = Connection;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        // A free slot first: beyond the cap, new connections wait in the kernel's backlog.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, local, remote, scheme)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        // Only a connection already failing refuses it; it ends on its own.
                        tracing::debug!(%err, "TCP_NODELAY not set on an accepted connection");
                    }
                    let shutdown = self.shutdown.clone().cancelled_owned();
                    let hangup = remote.as_socket_addr().map(|addr| self.hangups.open(*addr));
                    let connection = Connection::new(stream, slot, self.limits, shutdown, hangup);
                    return Ok((connection, local, remote, scheme));
                }
                Err(err) => {
                    self.failures.note(&err);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Where a connection is in its request cycle, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request's headers (or waiting for the first byte of the connection's first
    /// request): the header timeout runs.
    Headers,
    /// Headers complete: the request is the server's; the request timeout bounds it.
    Busy,
    /// A response went out; waiting for another request: the idle timeout runs.
    Idle,
    /// A head was refused and answered here: what the client still sends is read and dropped
    /// (closing on unread data would reset the connection and lose the answer), until it
    /// stops or the header timeout ends it.
    Refused,
}

/// An accepted connection: its slot under the cap, and the timeouts.
pub struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    limits: Limits,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    head: Head,
    /// Ready once the server is stopping.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Told when the client hangs up (see [`Hangups`]).
    hangup: Option<Hangup>,
}

/// What has been read of a request's head (its request line and headers).
#[derive(Debug, Default)]
struct Head {
    /// Line ends seen in a row (`\r` ignored); two end the head.
    newlines: u8,
    /// Lines completed, the request line included.
    lines: usize,
    /// Bytes of the line being read, and of the head so far.
    line_bytes: usize,
    bytes: usize,
}

/// Past these, a head is refused here with a problem. hyper's own limits (100 headers, a URI
/// of about 64 KiB) would answer with a bodiless 431 or 414; the edge refuses smaller excesses
/// (more than 64 headers or 16 KiB of them) with the request's id.
const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
const MAX_HEAD_LINES: usize = 1 + 90;
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A head refused before hyper parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    UriTooLong,
    HeadersTooLarge,
}

impl Refusal {
    /// The whole response: a problem, and the connection closed.
    fn response(self) -> Vec<u8> {
        let (status, title, kind, detail) = match self {
            Refusal::UriTooLong => (
                414,
                "URI Too Long",
                "uri-too-long",
                format!("send a request line of at most {MAX_REQUEST_LINE_BYTES} bytes"),
            ),
            Refusal::HeadersTooLarge => (
                431,
                "Request Header Fields Too Large",
                "headers-too-large",
                format!(
                    "send at most {} header lines and {MAX_HEAD_BYTES} bytes of head",
                    MAX_HEAD_LINES - 1
                ),
            ),
        };
        let body = serde_json::json!({
            "type": format!("urn:users-api:problem:{kind}"),
            "title": title,
            "status": status,
            "detail": detail,
        })
        .to_string();
        format!(
            "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\nconnection: close\r\nx-content-type-options: nosniff\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

impl Connection {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        limits: Limits,
        shutdown: WaitForCancellationFutureOwned,
        hangup: Option<Hangup>,
    ) -> Self {
        Connection {
            stream,
            _slot: slot,
            limits,
            phase: Phase::Headers,
            deadline: Box::pin(tokio::time::sleep(limits.header_read)),
            head: Head::default(),
            shutdown: Box::pin(shutdown),
            hangup,
        }
    }

    fn enter(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
    }

    /// Follows a request's bytes until its head ends; a head past the limits is refused.
    fn saw(&mut self, bytes: &[u8]) -> Option<Refusal> {
        if bytes.is_empty() {
            return None;
        }
        if self.phase == Phase::Idle {
            self.enter(Phase::Headers, self.limits.header_read);
            self.head = Head::default();
        }
        if self.phase != Phase::Headers {
            return None;
        }
        let head = &mut self.head;
        for &byte in bytes {
            head.bytes += 1;
            match byte {
                b'\n' => {
                    head.newlines += 1;
                    head.lines += 1;
                    head.line_bytes = 0;
                }
                b'\r' => {}
                _ => {
                    head.newlines = 0;
                    head.line_bytes += 1;
                }
            }
            if head.newlines == 2 {
                self.phase = Phase::Busy;
                return None;
            }
            if head.lines == 0 && head.line_bytes > MAX_REQUEST_LINE_BYTES {
                return Some(Refusal::UriTooLong);
            }
            if head.lines > MAX_HEAD_LINES || head.bytes > MAX_HEAD_BYTES {
                return Some(Refusal::HeadersTooLarge);
            }
        }
        None
    }
}

impl Connection {
    /// Reads and drops what the client sends after a refusal; the end of it (or of the
    /// header time) is the end of the connection.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut dropped = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut dropped) {
                Poll::Ready(Ok(())) if dropped.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    ready!(self.deadline.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Refused {
            // hyper sees the end of the connection, with its head unfinished: it answers
            // nothing more.
            return this.poll_drain(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // The end of the connection: the client hung up (or closed its sending side,
                // which HTTP/1.1 clients do only when done).
                if let Some(hangup) = &this.hangup {
                    hangup.token.cancel();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => match this.saw(&buf.filled()[before..]) {
                None => Poll::Ready(Ok(())),
                Some(refusal) => {
                    buf.set_filled(before);
                    // Small enough for the socket's buffer: written at once, or not at all
                    // if the client reads nothing, which then is its loss.
                    let _ = this.stream.try_write(&refusal.response());
                    let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                    this.enter(Phase::Refused, this.limits.header_read);
                    this.poll_drain(cx)
                }
            },
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending if this.phase == Phase::Busy => Poll::Pending,
            Poll::Pending => {
                if this.shutdown.as_mut().poll(cx).is_ready() {
                    // The server is stopping and this connection has no request in progress:
                    // its end, as hyper sees it, so the stop does not wait for it.
                    return Poll::Ready(Ok(()));
                }
                ready!(this.deadline.as_mut().poll(cx));
                let what = if this.phase == Phase::Headers {
                    "the request's headers did not arrive in time"
                } else {
                    "the connection was idle too long"
                };
                tracing::debug!(what, "closing a connection");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(written) => written?,
            Poll::Pending => {
                // A client that reads nothing of a response for the idle timeout (a stalled
                // event stream) gives up its connection.
                if this.phase == Phase::Idle && this.deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!("closing a connection: the client stopped reading");
                    let stalled = "the client stopped reading the response";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, stalled)));
                }
                return Poll::Pending;
            }
        };
        if written > 0 {
            match this.phase {
                // A response (or a `100 Continue`, after which the body looks like a new
                // head) means the server has the request: from here, the idle timeout.
                Phase::Busy | Phase::Headers => {
                    this.enter(Phase::Idle, this.limits.idle);
                    // The task may already be waiting to read, from while it was busy, with
                    // no timer to wake it; register one now (reads and writes share the
                    // connection's task).
                    let _ = this.deadline.as_mut().poll(cx);
                }
                // More of a response (an event stream's events and heartbeats): a
                // connection that is written to is not idle.
                Phase::Idle => this.enter(Phase::Idle, this.limits.idle),
                Phase::Refused => {}
            }
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use poem::listener::{Listener, TcpListener};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn guarded(limits: Limits) -> (Guarded, std::net::SocketAddr) {
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let guarded = Guarded::new(
            acceptor,
            limits,
            CancellationToken::new(),
            Hangups::default(),
        );
        let addr = *guarded.local_addr()[0].as_socket_addr().unwrap();
        (guarded, addr)
    }

    const SHORT: Limits = Limits {
        max_connections: 1,
        header_read: Duration::from_millis(200),
        idle: Duration::from_millis(400),
    };

    /// A client that hangs up is told of at once, and forgotten with its connection.
    #[tokio::test]
    async fn a_client_hanging_up_is_told_of_and_then_forgotten() {
        let (mut acceptor, addr) = guarded(SHORT).await;
        let hangups = acceptor.hangups.clone();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let (mut server_side, ..) = acceptor.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 18];
        server_side.read_exact(&mut buf).await.unwrap();
        let hung_up = hangups.of(&client_addr).expect("an open connection");
        assert!(hangups.of(&"127.0.0.1:1".parse().unwrap()).is_none());
        drop(client);
        assert_eq!(server_side.read(&mut buf).await.unwrap(), 0);
        tokio::time::timeout(Duration::from_secs(1), hung_up)
            .await
            .expect("told of the hangup");
        drop(server_side);
        assert!(hangups.of(&client_addr).is_none());
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let (mut acceptor, addr) = guarded(SHORT).await;
        let client = TcpStream::connect(addr).await.unwrap();
        let (server_side, ..) = acceptor.accept().await.unwrap();
        assert!(server_side.stream.nodelay().unwrap());
        // The default, so that the assertion above tells the wrapper's doing.
        assert!(!client.nodelay().unwrap());
    }

    #[tokio::test]
    async fn headers_must_arrive_in_time_and_idle_connections_end() {
        let (mut acceptor, addr) = guarded(SHORT).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, ..) = acceptor.accept().await.unwrap();
        // Half a request, then nothing: refused once the header time is up, not before.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let mut read = 0;
        let err = loop {
            match server_side.read(&mut buf[read..]).await {
                Ok(n) => read += n,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );

        // A second connection waited for the first's slot.
        drop((client, server_side));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, ..) = acceptor.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = server_side.read(&mut buf).await.unwrap();
        assert_eq!(server_side.phase, Phase::Busy, "{n} bytes");
        // Busy: no timeout while the server works on the request.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server_side
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(server_side.phase, Phase::Idle);
        let err = server_side.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn headers_end_at_a_blank_line_whatever_the_line_ends() {
        let (mut acceptor, addr) = guarded(SHORT).await;
        for (bytes, busy) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\nHost: x\n\n", true),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", false),
        ] {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (mut connection, ..) = acceptor.accept().await.unwrap();
            for chunk in bytes.chunks(3) {
                assert_eq!(connection.saw(chunk), None);
            }
            assert_eq!(connection.phase == Phase::Busy, busy, "{bytes:?}");
        }
    }
}
