//! Every acknowledged write survives `kill -9`: a 201 means the row is committed.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{spawn_app, start};

#[tokio::test]
async fn every_acknowledged_create_survives_kill_9() {
    let app = spawn_app().await;
    let (db, key) = (app.db.clone(), app.key.clone());
    let client = app.client.clone();
    let url = app.url("/api/v1/users");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let body = json!({"name": format!("w{w} #{i}"), "role": "Dev"});
                    match client.post(&url).bearer_auth(&key).json(&body).send().await {
                        Ok(response) if response.status() == 201 => {
                            match response.json::<Value>().await {
                                Ok(user) => acknowledged.push(user),
                                // The process died between the status line and the body: the
                                // client never saw a complete acknowledgement.
                                Err(_) => break,
                            }
                        }
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::spawn_blocking(move || app.kill9())
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "the load ran: {} writes",
        acknowledged.len()
    );

    let app = Arc::new(start(db, key, &[]).await);
    for user in &acknowledged {
        let stored: Value = app
            .get_user(user["id"].as_i64().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(&stored, user, "acknowledged, so it must be there");
    }
}
