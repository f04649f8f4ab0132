//! Every acknowledged write survives `kill -9`: a 201 means the row is committed.

use std::time::Duration;

use crate::helpers::{acknowledged, assert_all_stored, spawn_app, spawn_writers, start};

#[tokio::test]
async fn every_acknowledged_create_survives_kill_9() {
    let app = spawn_app().await;
    let (db, key) = (app.db.clone(), app.key.clone());
    // Eight concurrent writers: on SQLite their creates share group commits.
    let writers = spawn_writers(&app, 8, None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::spawn_blocking(move || app.kill9())
        .await
        .unwrap();
    let acknowledged = acknowledged(writers).await;
    assert!(
        acknowledged.len() > 20,
        "the load ran: {} writes",
        acknowledged.len()
    );

    let app = start(db, key, &[]).await;
    assert_all_stored(&app, &acknowledged).await;
}
