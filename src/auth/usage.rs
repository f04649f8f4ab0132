//! When each API key was last used, without a database write per request: uses are noted in
//! memory and written in batches.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use super::key_hash::KeyHash;
use crate::store;

/// Pending last-use times, shared by all requests of this process.
#[derive(Clone, Default)]
pub struct KeyUsage {
    pending: Arc<Mutex<HashMap<i64, DateTime<Utc>, KeyHash>>>,
}

impl KeyUsage {
    pub fn record(&self, key_id: i64, at: DateTime<Utc>) {
        self.pending.lock().expect("usage lock").insert(key_id, at);
    }

    /// The newer of the stored time and a use not yet written.
    pub fn latest(&self, key_id: i64, stored: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let pending = self
            .pending
            .lock()
            .expect("usage lock")
            .get(&key_id)
            .copied();
        stored.max(pending)
    }

    /// Writes the pending times; on failure they are kept for the next attempt.
    pub async fn flush(&self, db: &DatabaseConnection) {
        let batch: Vec<_> = std::mem::take(&mut *self.pending.lock().expect("usage lock"))
            .into_iter()
            .collect();
        for (key_id, at) in batch {
            if let Err(err) = store::api_keys::touch(db, key_id, at).await {
                tracing::warn!(key_id, error = %err, "could not record API key use; will retry");
                let mut pending = self.pending.lock().expect("usage lock");
                let entry = pending.entry(key_id).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
    }

    /// Flushes every `interval` until the process ends; `serve` flushes once more at shutdown.
    pub fn spawn_flusher(&self, db: DatabaseConnection, interval: Duration) {
        let usage = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                usage.flush(&db).await;
            }
        });
    }
}
