//! SQLite takes one writer at a time. Left to itself, every other writer spins in SQLite's
//! busy handler, sleeping 1, 2, 5, 10… ms between tries, which is what made write latency spiky
//! under load (p99 above 100 ms). Queuing writers in the process instead hands the lock over
//! with no sleep at all. PostgreSQL has row locks and needs no gate.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::{Mutex, MutexGuard};

#[derive(Clone, Default)]
pub struct WriteGate(Option<Arc<Mutex<()>>>);

impl WriteGate {
    pub fn for_database(db: &DatabaseConnection) -> Self {
        match db.get_database_backend() {
            DbBackend::Sqlite => WriteGate(Some(Arc::default())),
            _ => WriteGate(None),
        }
    }

    /// Waits for this process's turn to write; hold the guard for the whole write.
    pub async fn enter(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.0 {
            Some(gate) => Some(gate.lock().await),
            None => None,
        }
    }
}
