//! What only the embedded SQLite default has: a file it creates, and WAL mode.

use serde_json::json;

use crate::helpers::{TestDb, spawn_app};

#[tokio::test]
async fn the_database_file_is_created_when_missing() {
    let db = TestDb::new();
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    assert!(!path.exists());
    db.cli(&["migrate"]);
    assert!(path.exists());
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let app = spawn_app().await;
    app.create_ok(&json!({"name": "Ann", "role": "Dev"})).await;
    // The write-ahead log sits beside the database file while the server has it open.
    let wal = format!("{}-wal", app.db.url.trim_start_matches("sqlite://"));
    assert!(
        std::path::Path::new(&wal).exists(),
        "{wal} should exist in WAL mode"
    );
}
