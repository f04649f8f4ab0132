//! Every acknowledged write survives `kill -9`: a 201 or 200 means the row is committed.

use serde_json::{Value, json};

use crate::helpers::{
    assert_all_stored, kill9_under_creates, spawn_app, spawn_app_with, spawn_updaters, start,
    wait_for_users,
};

#[tokio::test]
async fn every_acknowledged_create_survives_kill_9() {
    // On SQLite, a WAL limit this small has the writer restart the WAL several times under
    // this load, so the kill can land on a WAL that was started over and cut back. No rate
    // limit: reading every acknowledged user back would otherwise exceed it on a fast machine.
    let unlimited = ["--sqlite-wal-limit-mib", "1", "--rate-limit", "0"];
    let (db, key, acknowledged) = kill9_under_creates(spawn_app_with(&unlimited).await).await;
    let app = start(db, key, &unlimited).await;
    assert_all_stored(&app, &acknowledged).await;
}

/// Updates share group commits too: each user's stored state is the last update acknowledged
/// for it, or the one after it that was in flight when the server died.
#[tokio::test]
async fn every_acknowledged_update_survives_kill_9() {
    let app = spawn_app().await;
    let (db, key) = (app.db.clone(), app.key.clone());
    let mut ids = Vec::new();
    for w in 0..8 {
        ids.push(
            app.create_user_id(&json!({"name": format!("w{w}"), "role": "0"}))
                .await,
        );
    }
    let writers = spawn_updaters(&app, &ids);
    // Each user's role counts its acknowledged updates. A client waits for each answer, so
    // what is stored is at most one update ahead of what its client was told.
    let round = |user: &Value| user["role"].as_str().unwrap().parse::<i64>().unwrap();
    wait_for_users(&app, |users| {
        users.iter().all(|user| round(user) > 1) && users.iter().map(round).sum::<i64>() > 32
    })
    .await;
    tokio::task::spawn_blocking(move || app.kill9())
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        let last = writer.await.unwrap().pop();
        acknowledged.push(last.expect("each writer got some updates through"));
    }
    let updates: i64 = acknowledged.iter().map(round).sum();
    assert!(updates > 20, "the load ran: {updates} updates");

    let app = start(db, key, &[]).await;
    for user in &acknowledged {
        let stored = app.stored(user).await;
        match round(&stored) - round(user) {
            0 => assert_eq!(&stored, user, "acknowledged, so it must be there"),
            // The next update committed, and the server died before answering it.
            1 => {}
            _ => panic!("acknowledged {user}, stored {stored}"),
        }
    }
}
