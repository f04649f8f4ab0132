//! What only PostgreSQL needs: instances starting together take turns migrating.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait,
};

/// An arbitrary constant naming the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x7573_6572_7361_7069; // "usersapi"

/// A transaction-scoped advisory lock, held while one instance migrates and mints the first
/// key, so that instances starting together on an empty database run each migration once and
/// mint one bootstrap key.
pub(crate) struct MigrationLock(DatabaseTransaction);

impl MigrationLock {
    /// Takes the lock on PostgreSQL, waiting for another instance that holds it; `None` on
    /// other engines, which have no concurrent migrators (SQLite takes one writer at a time).
    pub async fn take(db: &DatabaseConnection) -> Result<Option<Self>, DbErr> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        Ok(Some(MigrationLock(txn)))
    }

    pub async fn release(self) -> Result<(), DbErr> {
        self.0.commit().await
    }
}
