//! Acknowledged means durable: kill -9 the real server during concurrent appends and real
//! inference; on restart the chain verifies and every append whose caller got success is
//! present.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `field` of every exported event of `event_type` in the stopped data dir.
fn exported(data: &str, event_type: &str, field: &str) -> HashSet<String> {
    common::exported_events(data, event_type)
        .iter()
        .map(|e| e["payload"][field].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = [
        ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000"),
        ("INFERNO_AUTH__MAX_KEYS_PER_USER", "1000000"),
        ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
        ("INFERNO_MODELS__THREADS", "1"),
    ];
    let server = common::spawn_server(&data, &env).await;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await;
    // The model is loaded before the load starts, so inference completes during it.
    common::infer_once(&client, &server.url, &token).await;

    // Inference runs beside the key load: its events are in the log that is killed.
    let inferred = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut inference = Vec::new();
    for _ in 0..2 {
        let (client, token, inferred, url) = (
            client.clone(),
            token.clone(),
            inferred.clone(),
            server.url.clone(),
        );
        inference.push(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    common::try_infer(&client, &url, &token),
                )
                .await
                {
                    Ok(Some(id)) => inferred.lock().unwrap().push(id),
                    _ => return,
                }
            }
        }));
    }

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
    // On a loaded machine an inference may take longer than that: the kill waits for the
    // first answered one (the key load goes on meanwhile), at most a minute.
    for _ in 0..600 {
        if !inferred.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();
    for t in tasks.into_iter().chain(inference) {
        let _ = t.await;
    }
    let inferred: Vec<String> = inferred.lock().unwrap().clone();
    assert!(!inferred.is_empty(), "inference completed during the load");
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
    let stored = exported(data_arg, "api_key.created", "key_id");
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged appends lost: {lost:?}",
        lost.len()
    );
    // and every answered inference's completion
    let completed = exported(data_arg, "job.completed", "job_id");
    assert!(
        inferred.iter().all(|id| completed.contains(id)),
        "answered inferences missing from the log"
    );

    // And the server starts again and serves them.
    let server = common::spawn_server(&data, &env).await;
    let token = server.admin_token(&client).await;
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(server.at(&format!("/api/v1/auth/api-keys?limit=1000&cursor={cursor}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for k in page["keys"].as_array().unwrap() {
            listed.insert(k["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert!(acked.iter().all(|id| listed.contains(id)));
    server.terminate();
}
