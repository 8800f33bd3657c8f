//! Acknowledged means durable: kill -9 the real server during concurrent appends; on restart
//! the chain verifies and every append whose caller got success is present.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000")];
    let server = common::spawn_server(&data, &env).await;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, token, acked, url) = (
            client.clone(),
            token.clone(),
            acked.clone(),
            server.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            loop {
                i += 1;
                let r = client
                    .post(format!("{url}/api/v1/auth/api-keys"))
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("load-{t}-{i}"), "permissions": []}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        if let Ok(body) = r.json::<Value>().await {
                            acked
                                .lock()
                                .unwrap()
                                .push(body["id"].as_str().unwrap().to_string());
                        }
                    }
                    // After the kill: connection errors end the task.
                    _ if Instant::now() > deadline => return,
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load ran: {} acknowledged",
        acked.len()
    );

    // The chain verifies on the stopped data dir.
    let data_arg = data.to_str().unwrap();
    let out = common::run_cli(&["audit", "verify", "--data-dir", data_arg]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);

    // Every acknowledged key is in the log.
    let out = common::run_cli(&[
        "audit",
        "export",
        "--data-dir",
        data_arg,
        "--type",
        "api_key.created",
    ]);
    assert!(out.status.success());
    let stored: HashSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["payload"]["key_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged appends lost: {lost:?}",
        lost.len()
    );

    // And the server starts again and serves them.
    let server = common::spawn_server(&data, &env).await;
    let token = server.admin_token(&client).await;
    let keys: Value = client
        .get(server.at("/api/v1/auth/api-keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: HashSet<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(acked.iter().all(|id| listed.contains(id.as_str())));
    server.terminate();
}
