//! An event as the streams share it: with a slot for its wire form, so that the first stream
//! to send it renders it and every other stream sends the same bytes. With a thousand streams,
//! rendering each event once instead of once per stream is what keeps delivery off the CPU
//! (`docs/performance.md`, "the change feed").

use std::{ops::Deref, sync::OnceLock};

use bytes::Bytes;

use crate::store::UserEvent;

/// A committed event and, once a stream has rendered it, its wire form.
#[derive(Debug)]
pub struct SharedEvent {
    event: UserEvent,
    rendered: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: UserEvent) -> Self {
        SharedEvent {
            event,
            rendered: OnceLock::new(),
        }
    }

    /// The wire form, made by `render` the first time it is asked for. Every caller must
    /// render the same way: the first one's bytes are what all get.
    pub fn rendered(&self, render: impl FnOnce(&UserEvent) -> Bytes) -> Bytes {
        self.rendered.get_or_init(|| render(&self.event)).clone()
    }
}

impl Deref for SharedEvent {
    type Target = UserEvent;

    fn deref(&self) -> &UserEvent {
        &self.event
    }
}
