//! The change feed's use cases: a page of events for pollers, and a stream that catches up
//! from the table, then follows live events, with no gap and no duplicate at the switch.
//!
//! One task per process, the follower, reads each new event once and hands it to every
//! stream through a broadcast channel. A stream that falls behind the channel (a slow reader)
//! is not waited for: it goes back to reading the table from its own position, then rejoins.
//! So writers never wait for readers, and readers never wait for each other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use super::{Service, authorize, rendered::SharedEvent};
use crate::{
    domain::{EventKind, Principal, Scope},
    error::AppError,
    store::{FeedBounds, Store, UserEvent},
};

/// The feed's settings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// Events older than this are pruned.
    pub retention: Duration,
    /// Streams open at once, in all and per principal.
    pub max_streams: usize,
    pub max_streams_per_principal: usize,
    /// The follower reads at most once per this: events committed meanwhile reach the streams
    /// as one batch, a write to each instead of one per event (0: a read per wake-up).
    pub gather: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            retention: Duration::from_secs(168 * 3600),
            max_streams: 512,
            max_streams_per_principal: 64,
            gather: Duration::from_millis(10),
        }
    }
}

/// Events handed from the follower to the streams: one read of the table.
type Batch = Arc<[Arc<SharedEvent>]>;

/// Batches the channel holds for the slowest stream before it has to read the table itself:
/// over a second of events at the default gathering, and at most 64,000 events in memory.
const LIVE_CAPACITY: usize = 128;
/// Events the follower reads from the table at once.
const READ_CHUNK: u64 = 500;
/// Events a stream catching up reads at once: what it holds of its own, not shared with
/// other streams, so a thousand lagging streams hold a bounded amount.
const CATCH_UP_CHUNK: u64 = 100;
/// How long the follower waits for a wake-up before it reads anyway.
const FOLLOW_FALLBACK: Duration = Duration::from_secs(1);
/// How often events past the retention are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Why a stream ended, told to its client as a last comment.
const ENDED_SHUTDOWN: &str = "the server is shutting down; reconnect with Last-Event-ID";
const ENDED_EXPIRED: &str =
    "this stream fell behind the feed's retention; reconnect to learn how to resynchronise";
const ENDED_UNAVAILABLE: &str = "the feed cannot be read right now; reconnect with Last-Event-ID";

/// The live side of the feed, shared by every stream of the process.
pub(super) struct Feed {
    settings: FeedSettings,
    live: broadcast::Sender<Batch>,
    slots: Arc<Semaphore>,
    per_principal: Arc<Mutex<HashMap<String, usize>>>,
    closing: CancellationToken,
}

impl Feed {
    pub fn new(settings: FeedSettings) -> Self {
        Feed {
            settings,
            live: broadcast::channel(LIVE_CAPACITY).0,
            slots: Arc::new(Semaphore::new(settings.max_streams)),
            per_principal: Arc::default(),
            closing: CancellationToken::new(),
        }
    }

    /// A stream slot for `principal`, or why there is none.
    fn take_slot(&self, principal: String) -> Result<Slot, AppError> {
        let permit =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| AppError::TooManyStreams {
                    limit: self.settings.max_streams,
                    whose: AppError::STREAMS_OF_SERVER,
                })?;
        let mut open = self.per_principal.lock().expect("stream count lock");
        let count = open.entry(principal.clone()).or_default();
        if *count >= self.settings.max_streams_per_principal {
            return Err(AppError::TooManyStreams {
                limit: self.settings.max_streams_per_principal,
                whose: AppError::STREAMS_OF_CALLER,
            });
        }
        *count += 1;
        Ok(Slot {
            _permit: permit,
            per_principal: self.per_principal.clone(),
            principal,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.settings.max_streams - self.slots.available_permits()
    }
}

/// A stream's place under the limits, given back when the stream ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    per_principal: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_principal.lock().expect("stream count lock");
        if let Some(count) = open.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// A page of the feed.
#[derive(Debug)]
pub struct EventPage {
    pub items: Vec<UserEvent>,
    /// Where the next page starts: the last event's id, or `after` on an empty page.
    pub next_after: i64,
    /// Whether more events (of the kind asked for) follow now.
    pub has_more: bool,
}

/// What a stream sends.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// First: the position the stream starts after.
    Start(i64),
    /// Events, in id order.
    Events(Vec<Arc<SharedEvent>>),
    /// Last: why the stream ends.
    End(&'static str),
}

/// A position is usable while the events after it are all kept and it is not past the newest.
fn check_position(after: i64, bounds: FeedBounds) -> Result<(), AppError> {
    if after < bounds.pruned_through {
        return Err(AppError::EventsExpired {
            after,
            oldest: bounds.pruned_through,
        });
    }
    if after > bounds.newest {
        return Err(AppError::EventsAhead {
            after,
            newest: bounds.newest,
        });
    }
    Ok(())
}

impl Service {
    /// Up to `limit` events after `after` (by default, from the oldest kept), of `kind` only
    /// if given. A position whose events were pruned, or past the newest, is an error (410).
    pub async fn list_events(
        &self,
        principal: &Principal,
        after: Option<i64>,
        limit: u64,
        kind: Option<EventKind>,
    ) -> Result<EventPage, AppError> {
        authorize(principal, Scope::UsersRead)?;
        let mut attempts = 0;
        loop {
            let start = match after {
                Some(after) => after,
                None => self.store.pruned_through().await?,
            };
            let mut items = self.store.events_after(start, limit + 1, kind).await?;
            // Read after the page: unmoved, nothing after `start` had been pruned before it.
            match check_position(start, self.store.feed_bounds().await?) {
                // The oldest moved on while the page was read: read from the new oldest.
                Err(AppError::EventsExpired { .. }) if after.is_none() && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                checked => checked?,
            }
            let has_more = items.len() as u64 > limit;
            items.truncate(limit as usize);
            let next_after = items.last().map_or(start, |event| event.id);
            return Ok(EventPage {
                items,
                next_after,
                has_more,
            });
        }
    }

    /// A stream of the events after `after` (by default, of those to come), of `kind` only if
    /// given, then of live ones. Refused when the position is not usable (410) or every stream
    /// slot, of the server or of the principal, is taken.
    pub async fn subscribe(
        &self,
        principal: &Principal,
        after: Option<i64>,
        kind: Option<EventKind>,
    ) -> Result<impl Stream<Item = StreamItem> + Send + 'static, AppError> {
        authorize(principal, Scope::UsersRead)?;
        let slot = self.feed.take_slot(principal.audit_name())?;
        // Joined before the table is read: whatever the follower hands on from now, the stream
        // receives, and whatever it handed on before is in the table.
        let live = self.feed.live.subscribe();
        let bounds = self.store.feed_bounds().await?;
        let position = match after {
            Some(after) => {
                check_position(after, bounds)?;
                after
            }
            None => bounds.newest,
        };
        let reader = Reader {
            store: self.store.clone(),
            position,
            kind,
            live,
            catching_up: true,
            closing: self.feed.closing.clone(),
            state: ReaderState::Starting,
            _slot: slot,
        };
        Ok(futures_util::stream::unfold(reader, |mut reader| async {
            let item = reader.next().await?;
            Some((item, reader))
        }))
    }

    /// Ends every stream, each with its last comment (one opened after this ends at once);
    /// returns once they have ended, or after `grace`.
    pub async fn close_streams(&self, grace: Duration) {
        self.feed.closing.cancel();
        if self.feed.open_streams() == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.feed.open_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A stream's slot is given back as its last words are handed to the connection, a
        // moment before they are written.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.feed.open_streams()
    }

    /// Starts the follower, from the newest event now, and the pruning of old events.
    pub(super) async fn start_feed(self: &Arc<Self>) -> Result<(), AppError> {
        let newest = self.store.feed_bounds().await?.newest;
        tokio::spawn(follow(
            self.store.clone(),
            newest,
            self.feed.settings.gather,
            self.feed.live.clone(),
            self.feed.closing.clone(),
        ));
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                service.prune_events().await;
                tokio::time::sleep(PRUNE_INTERVAL).await;
            }
        });
        Ok(())
    }

    async fn prune_events(&self) {
        let retention = chrono::Duration::from_std(self.feed.settings.retention)
            .unwrap_or(chrono::Duration::MAX);
        let Some(before) = crate::store::now().checked_sub_signed(retention) else {
            return;
        };
        match self.store.prune_events(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "events past the retention pruned"),
            Err(err) => tracing::warn!(error = %err, "could not prune events"),
        }
    }
}

/// Reads every new event once, in id order, and hands it to the streams.
async fn follow(
    store: Store,
    mut last: i64,
    gather: Duration,
    live: broadcast::Sender<Batch>,
    closing: CancellationToken,
) {
    let mut failing = false;
    let mut read_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            () = store.events_changed(FOLLOW_FALLBACK) => {}
        }
        // What commits within `gather` of the last read goes out with this one.
        tokio::time::sleep_until(read_at + gather).await;
        read_at = tokio::time::Instant::now();
        loop {
            match store.events_after(last, READ_CHUNK, None).await {
                Ok(events) => {
                    failing = false;
                    let Some(newest) = events.last() else { break };
                    last = newest.id;
                    let full = events.len() as u64 == READ_CHUNK;
                    // No stream listening is no error: they read the table when they come.
                    let shared = events.into_iter().map(SharedEvent::new).map(Arc::new);
                    let _ = live.send(shared.collect());
                    if !full {
                        break;
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "cannot read new events; retrying");
                        failing = true;
                    }
                    break;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Starting,
    Running,
    Ended,
}

/// One stream's reading: from the table while behind, from the follower once caught up.
struct Reader {
    store: Store,
    /// The last event this stream has passed (sent, or skipped as not of its kind).
    position: i64,
    kind: Option<EventKind>,
    live: broadcast::Receiver<Batch>,
    catching_up: bool,
    closing: CancellationToken,
    state: ReaderState,
    _slot: Slot,
}

impl Reader {
    async fn next(&mut self) -> Option<StreamItem> {
        match self.state {
            ReaderState::Ended => return None,
            ReaderState::Starting => {
                self.state = ReaderState::Running;
                return Some(StreamItem::Start(self.position));
            }
            ReaderState::Running => {}
        }
        loop {
            if self.closing.is_cancelled() {
                return self.end(ENDED_SHUTDOWN);
            }
            if self.catching_up {
                match self.read_table().await {
                    Ok(events) if events.is_empty() => continue,
                    Ok(events) => return Some(StreamItem::Events(events)),
                    Err(reason) => return self.end(reason),
                }
            }
            let received = tokio::select! {
                biased;
                () = self.closing.cancelled() => return self.end(ENDED_SHUTDOWN),
                received = self.live.recv() => received,
            };
            match received {
                Ok(batch) => {
                    let events = self.pass(batch.iter().cloned());
                    if !events.is_empty() {
                        return Some(StreamItem::Events(events));
                    }
                }
                // Too slow for the channel: back to the table from where this stream is.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return self.end(ENDED_SHUTDOWN),
            }
        }
    }

    fn end(&mut self, reason: &'static str) -> Option<StreamItem> {
        self.state = ReaderState::Ended;
        Some(StreamItem::End(reason))
    }

    /// The events after the position, of the stream's kind, moving the position past them.
    fn pass(&mut self, events: impl Iterator<Item = Arc<SharedEvent>>) -> Vec<Arc<SharedEvent>> {
        let mut passed = Vec::new();
        for event in events {
            if event.id <= self.position {
                continue;
            }
            self.position = event.id;
            if self.kind.is_none_or(|kind| kind == event.kind) {
                passed.push(event);
            }
        }
        passed
    }

    /// The next chunk from the table; once a chunk is short, the stream is caught up and
    /// follows live events. Its events are of every kind, so that the position moves past
    /// what the stream does not want too.
    async fn read_table(&mut self) -> Result<Vec<Arc<SharedEvent>>, &'static str> {
        let from = self.position;
        let unavailable = |err: AppError| {
            tracing::warn!(error = %err, "a stream cannot read the feed");
            ENDED_UNAVAILABLE
        };
        let events = self
            .store
            .events_after(from, CATCH_UP_CHUNK, None)
            .await
            .map_err(unavailable)?;
        let pruned_through = self.store.pruned_through().await.map_err(unavailable)?;
        if from < pruned_through {
            return Err(ENDED_EXPIRED);
        }
        if (events.len() as u64) < CATCH_UP_CHUNK {
            self.catching_up = false;
        }
        Ok(self.pass(
            events
                .into_iter()
                .map(|event| Arc::new(SharedEvent::new(event))),
        ))
    }
}
