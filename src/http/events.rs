//! The change feed's endpoints: a page of events, and the same events as Server-Sent Events.

use std::{sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use poem::{
    Body, IntoResponse, Response,
    web::{Data, RemoteAddr},
};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Query},
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::{Email, ToJSON, Type},
};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{
    ApiTags, State,
    payload::JsonBytes,
    problem::{ApiResult, FeedErrors},
    security::Auth,
    users::User,
};
use crate::{
    domain::EventKind,
    service::{self, StreamItem},
    store::{UserEvent, UserSnapshot},
};

/// What happened to the user: `user.created`, `user.updated` (a replace or a partial
/// update) or `user.deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventType {
    #[oai(rename = "user.created")]
    Created,
    #[oai(rename = "user.updated")]
    Updated,
    #[oai(rename = "user.deleted")]
    Deleted,
}

impl From<EventType> for EventKind {
    fn from(kind: EventType) -> Self {
        match kind {
            EventType::Created => EventKind::Created,
            EventType::Updated => EventKind::Updated,
            EventType::Deleted => EventKind::Deleted,
        }
    }
}

impl From<EventKind> for EventType {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Created => EventType::Created,
            EventKind::Updated => EventType::Updated,
            EventKind::Deleted => EventType::Deleted,
        }
    }
}

/// A committed change of a user. Ids increase in the order changes were committed, the same
/// for every reader; a reader that has event `n` has every event before it.
// No example: the recommended lint checks examples with a validator that refuses `nullable`
// without a `type`, the form `user` needs (see `http::spec`). Swagger UI makes one up.
#[derive(Debug, Clone, Object)]
pub struct Event {
    /// The event's position in the feed: pass it as `after` (or `Last-Event-ID`) to resume.
    pub id: i64,
    // No doc comment: poem-openapi would wrap the reference in an `allOf` to carry it, which
    // openapi-python-client cannot read for an enum. `EventType`'s own says what it is.
    #[oai(rename = "type")]
    pub event_type: EventType,
    /// The user the change was made to.
    pub user_id: i64,
    /// The user right after the change, as `GET /api/v1/users/{id}` showed it then; `null`
    /// for a deletion.
    #[oai(nullable)]
    pub user: Option<User>,
    /// Who made the change: `api-key:<id>` or `oauth:<subject>`.
    pub actor: String,
    /// When the change was committed (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
}

impl From<&UserSnapshot> for User {
    fn from(user: &UserSnapshot) -> Self {
        User {
            id: user.id,
            name: user.name.clone(),
            role: user.role.clone(),
            email: user.email.clone().map(Email),
            created_at: user.created_at,
            updated_at: user.updated_at,
            created_by: user.created_by.clone(),
            updated_by: user.updated_by.clone(),
        }
    }
}

impl From<&UserEvent> for Event {
    fn from(event: &UserEvent) -> Self {
        Event {
            id: event.id,
            event_type: event.kind.into(),
            user_id: event.user_id,
            user: event.user.as_ref().map(User::from),
            actor: event.actor.clone(),
            created_at: event.created_at,
        }
    }
}

/// A page of the change feed.
#[derive(Debug, Clone, Object)]
pub struct EventPage {
    /// Events after `after`, in id order.
    pub items: Vec<Event>,
    /// Pass as `after` for the next page: the last event's id, or `after` itself when the
    /// page is empty (poll again later with it).
    pub next_after: i64,
    /// Whether more events follow right now; when `false`, this page reached the newest.
    pub has_more: bool,
}

impl From<service::EventPage> for EventPage {
    fn from(page: service::EventPage) -> Self {
        EventPage {
            items: page.items.iter().map(Event::from).collect(),
            next_after: page.next_after,
            has_more: page.has_more,
        }
    }
}

#[derive(ApiResponse)]
pub enum ListEventsResponse {
    /// A page of events.
    #[oai(status = 200)]
    Ok(JsonBytes<EventPage>),
}

/// Server-Sent Events (`text/event-stream`), each an [`Event`]: `id:` its id, `event:` its
/// type, `data:` the event as JSON on one line.
pub struct EventStream(Body);

impl Payload for EventStream {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        Event::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Event::register(registry);
    }
}

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .header("Cache-Control", "no-store")
            // Proxies that buffer responses (nginx) pass this one on as it comes.
            .header("X-Accel-Buffering", "no")
            .body(self.0)
    }
}

#[derive(ApiResponse)]
pub enum StreamEventsResponse {
    /// The stream: first a `retry:` hint and the `id:` it starts after (with no data, so that
    /// a client that reconnects before any event resumes from there), then each event, and a
    /// comment line when there is nothing to send for a while. It ends, with a comment saying
    /// why, when the server shuts down; reconnect with `Last-Event-ID`.
    #[oai(status = 200)]
    Ok(EventStream),
}

/// How long a client is asked to wait before reconnecting, in milliseconds.
const RETRY_MS: u64 = 2000;

/// One event as the stream sends it.
fn frame(event: &UserEvent) -> Bytes {
    let data = Event::from(event).to_json_string();
    let kind = event.kind.as_str();
    Bytes::from(format!("id: {}\nevent: {kind}\ndata: {data}\n\n", event.id))
}

/// The text of one stream item, a piece per event: an event is rendered once for all
/// streams, and each stream's connection holds the shared bytes, not a copy.
fn render(item: StreamItem) -> Vec<Bytes> {
    match item {
        StreamItem::Start(position) => vec![Bytes::from(format!(
            "retry: {RETRY_MS}\nid: {position}\n\n"
        ))],
        StreamItem::Events(events) => events.iter().map(|event| event.rendered(frame)).collect(),
        StreamItem::End(reason) => vec![Bytes::from(format!(": {reason}\n\n"))],
    }
}

/// The stream's items as text, with a comment after each `heartbeat` without one, until
/// the client hangs up.
fn with_heartbeat(
    items: impl Stream<Item = StreamItem> + Send + 'static,
    heartbeat: Duration,
    hangup: Option<WaitForCancellationFutureOwned>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut pieces = Box::pin(items.map(render).flat_map(futures_util::stream::iter));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut hangup = hangup.map(Box::pin);
    futures_util::stream::poll_fn(move |cx| {
        if let Poll::Ready(piece) = pieces.poll_next_unpin(cx) {
            ticks.reset();
            return Poll::Ready(piece.map(Ok));
        }
        // Quiet, and nobody reads it any more: ending it now frees its slot. (A busy stream
        // is not asked: its next write fails.)
        if hangup
            .as_mut()
            .is_some_and(|hangup| hangup.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(None);
        }
        ticks
            .poll_tick(cx)
            .map(|_| Some(Ok(Bytes::from_static(b": keep-alive\n\n"))))
    })
}

/// The change feed.
pub struct EventsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Events")]
impl EventsApi {
    /// List events
    ///
    /// The change feed as pages: every committed create, replace, update and delete of a user,
    /// in the order committed. Start without `after` (from the oldest event kept), then pass
    /// each page's `next_after` as `after`; an empty page means you are up to date, so poll
    /// again later with the same `after`. Events are kept for `--events-retention-hours`
    /// (7 days by default): an `after` older than that is a 410, and you resynchronise from
    /// `GET /api/v1/users`. Needs `users:read`.
    #[oai(path = "/events", method = "get", operation_id = "listEvents")]
    async fn list_events(
        &self,
        auth: Auth,
        state: Data<&Arc<State>>,
        /// The id of the last event you have (0 for all); omit for the oldest kept.
        #[oai(validator(minimum(value = "0")))]
        after: Query<Option<i64>>,
        /// How many events to return, 1 to 1000.
        #[oai(
            default = "default_event_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u64>,
        /// Only events of this type.
        #[oai(name = "type")]
        event_type: Query<Option<EventType>>,
    ) -> ApiResult<ListEventsResponse, FeedErrors> {
        let kind = event_type.0.map(EventKind::from);
        let page = state
            .service
            .list_events(&auth.0, after.0, limit.0, kind)
            .await?;
        let body = JsonBytes::text(&EventPage::from(page));
        Ok(ListEventsResponse::Ok(JsonBytes::new(body)))
    }

    /// Stream events
    ///
    /// The change feed as Server-Sent Events, live. With `Last-Event-ID` (sent by
    /// `EventSource` when it reconnects) or `after`, the stream first sends exactly the events
    /// after that id, then live ones, with no gap and no duplicate between the two; without
    /// either, it starts with the next new event. Writes on other instances arrive within a
    /// second. Streams are limited per server (`--max-streams`, then 503) and per caller
    /// (`--max-streams-per-principal`, then 429). Needs `users:read`.
    #[oai(path = "/events/stream", method = "get", operation_id = "streamEvents")]
    async fn stream_events(
        &self,
        auth: Auth,
        state: Data<&Arc<State>>,
        /// The id of the last event you have; `Last-Event-ID` wins when both are sent.
        #[oai(validator(minimum(value = "0")))]
        after: Query<Option<i64>>,
        /// Only events of this type.
        #[oai(name = "type")]
        event_type: Query<Option<EventType>>,
        /// The id of the last event received, as `EventSource` sends it on reconnecting.
        #[oai(name = "Last-Event-ID", validator(minimum(value = "0")))]
        last_event_id: Header<Option<i64>>,
        remote: &RemoteAddr,
    ) -> ApiResult<StreamEventsResponse, FeedErrors> {
        let kind = event_type.0.map(EventKind::from);
        let items = state
            .service
            .subscribe(&auth.0, last_event_id.0.or(after.0), kind)
            .await?;
        let hangup = remote
            .as_socket_addr()
            .and_then(|addr| state.hangups.of(addr));
        let body = with_heartbeat(items, state.settings.stream_heartbeat, hangup);
        Ok(StreamEventsResponse::Ok(EventStream(
            Body::from_bytes_stream(body),
        )))
    }
}

fn default_event_limit() -> u64 {
    100
}
