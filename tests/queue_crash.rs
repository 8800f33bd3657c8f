//! Accepted work is never lost: kill -9 the real server with jobs queued and running; after
//! the restart every job completes exactly once in the event log, the ones that were running
//! having gone back to the queue with their attempt counted.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

fn per_job(events: &[Value]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in events {
        *n.entry(e["payload"]["job_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    n
}

async fn job(client: &reqwest::Client, url: &str, token: &str, id: &str) -> Value {
    client
        .get(format!("{url}/api/v1/jobs/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_jobs_queued_and_running_loses_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = [
        ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000"),
        ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
        ("INFERNO_MODELS__THREADS", "1"),
        ("INFERNO_MODELS__PARALLEL", "2"),
    ];
    let server = common::spawn_server(&data, &env).await;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let r = client
            .post(server.at("/api/v1/jobs"))
            .bearer_auth(&token)
            .json(&json!({"model": common::TEST_MODEL_ID,
                "prompt": format!("Story number {i}: once upon a time"), "max_tokens": 48}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    // Kill once some jobs are done and others run.
    let mut running_at_kill = Vec::new();
    let mut done_at_kill = Vec::new();
    for _ in 0..1200 {
        running_at_kill.clear();
        done_at_kill.clear();
        for id in &ids {
            let j = job(&client, &server.url, &token, id).await;
            match j["status"].as_str().unwrap() {
                "completed" => done_at_kill.push(id.clone()),
                "running" => running_at_kill.push(id.clone()),
                _ => {}
            }
        }
        if done_at_kill.len() >= 3 && !running_at_kill.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running_at_kill.is_empty(), "no job was running");
    server.kill9();

    let server = common::spawn_server(&data, &env).await;
    let token = server.admin_token(&client).await;
    let mut attempts = HashMap::new();
    for id in &ids {
        let mut last = Value::Null;
        for _ in 0..1200 {
            last = job(&client, &server.url, &token, id).await;
            if last["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last["status"], "completed", "{last}");
        attempts.insert(id.clone(), last["attempts"].as_u64().unwrap());
    }
    assert!(server.terminate().success());

    let data = data.to_str().unwrap();
    let queued = per_job(&common::exported_events(data, "job.queued"));
    let completed = per_job(&common::exported_events(data, "job.completed"));
    assert_eq!(queued.len(), 20);
    for id in &ids {
        assert_eq!(queued.get(id), Some(&1), "queued once: {id}");
        assert_eq!(completed.get(id), Some(&1), "completed exactly once: {id}");
    }
    // The jobs the crash interrupted went back with their attempt counted. The poll reads
    // the 20 jobs one after the other, so a job read as queued may have started before the
    // kill (and one read as running may have finished): a job read as completed never
    // runs again.
    let lost: Vec<String> = common::exported_events(data, "job.requeued")
        .iter()
        .filter(|e| e["payload"]["reason"] == "worker_lost")
        .map(|e| e["payload"]["job_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!lost.is_empty(), "no running job was handed back");
    for id in &lost {
        assert!(
            !done_at_kill.contains(id),
            "{id} had completed before the kill"
        );
        assert_eq!(attempts[id], 2, "{id}: the lost attempt counts");
    }
    let out = common::run_cli(&["audit", "verify", "--data-dir", data]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}
