//! The audit API: filters and pagination, the SSE tail resuming by Last-Event-ID, verify,
//! and an NDJSON export that an auditor verifies offline with an independent implementation
//! of the documented hash rule.

mod common;

use common::rfc6962::canonical;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn get(ts: &common::TestServer, token: &str, path: &str) -> Value {
    let r = ts
        .client
        .get(ts.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

fn verify_offline(lines: &[Value]) -> Result<(), u64> {
    let mut prev = "0".repeat(64);
    for (i, env) in lines.iter().enumerate() {
        let seq = env["seq"].as_u64().unwrap();
        if seq != i as u64 + 1 || env["prev_hash"] != prev.as_str() {
            return Err(seq);
        }
        let mut body = env.clone();
        body.as_object_mut().unwrap().remove("hash");
        let mut text = String::new();
        canonical(&body, &mut text);
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(text.as_bytes());
        let hash = hex::encode(h.finalize());
        if env["hash"] != hash.as_str() {
            return Err(seq);
        }
        prev = hash;
    }
    Ok(())
}

async fn make_history(ts: &common::TestServer) -> String {
    let admin = ts.admin_token().await;
    for _ in 0..3 {
        let r = ts
            .client
            .post(ts.at("/api/v1/auth/login"))
            .json(&json!({"username": "ghost", "password": "no-such-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    ts.api_key(&admin, &["read_models"]).await;
    admin
}

#[tokio::test]
async fn filters_pagination_and_single_events() {
    let ts = common::start().await;
    let admin = make_history(&ts).await;
    // user.created (bootstrap), login_succeeded, 3 x login_failed, api_key.created
    let all = get(&ts, &admin, "/api/v1/audit/events").await;
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    let failed = get(&ts, &admin, "/api/v1/audit/events?type=auth.login_failed").await;
    assert_eq!(failed["events"].as_array().unwrap().len(), 3);
    for e in failed["events"].as_array().unwrap() {
        assert_eq!(e["payload"]["username"], "ghost");
        assert_eq!(e["actor"]["kind"], "system");
        assert!(e["request_id"].is_string());
    }

    // Pages of 2, oldest first, then newest first.
    let p1 = get(&ts, &admin, "/api/v1/audit/events?limit=2").await;
    assert_eq!(p1["events"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_u64().unwrap();
    let p2 = get(
        &ts,
        &admin,
        &format!("/api/v1/audit/events?limit=2&after={cursor}"),
    )
    .await;
    assert_eq!(p2["events"][0]["seq"], 3);
    let newest = get(&ts, &admin, "/api/v1/audit/events?limit=2&order=desc").await;
    assert_eq!(newest["events"][0]["seq"], 6);
    assert_eq!(newest["events"][1]["seq"], 5);
    let before = newest["next_cursor"].as_u64().unwrap();
    let older = get(
        &ts,
        &admin,
        &format!("/api/v1/audit/events?limit=2&order=desc&before={before}"),
    )
    .await;
    assert_eq!(older["events"][0]["seq"], 4);

    // Actor and time filters.
    let who: Value = get(&ts, &admin, "/api/v1/auth/me").await;
    let mine = get(
        &ts,
        &admin,
        &format!("/api/v1/audit/events?actor={}", who["id"].as_str().unwrap()),
    )
    .await;
    let types: Vec<&str> = mine["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["auth.login_succeeded", "api_key.created"]);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = get(&ts, &admin, &format!("/api/v1/audit/events?since={future}")).await;
    assert!(none["events"].as_array().unwrap().is_empty());

    let one = get(&ts, &admin, "/api/v1/audit/events/3").await;
    assert_eq!(one["seq"], 3);
    let r = ts
        .client
        .get(ts.at("/api/v1/audit/events/999"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    common::expect_error(r, 404, "NOT_FOUND").await;
    let r = ts
        .client
        .get(ts.at("/api/v1/audit/events?limit=1001"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    common::expect_error(r, 400, "VALIDATION_ERROR").await;

    let v = get(&ts, &admin, "/api/v1/audit/verify").await;
    assert_eq!(v["ok"], true);
    assert!(v["first_bad_seq"].is_null());
    assert_eq!(v["head_seq"], v["events"]);
    assert!(v["head_seq"].as_u64().unwrap() >= 6);
}

#[tokio::test]
async fn export_verifies_offline_and_detects_tampering() {
    let ts = common::start().await;
    let admin = make_history(&ts).await;
    let r = ts
        .client
        .get(ts.at("/api/v1/audit/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/x-ndjson"));
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 6);
    assert_eq!(verify_offline(&lines), Ok(()));
    // The offline check can fail: one changed payload byte breaks it at that seq.
    let mut tampered = lines.clone();
    tampered[3]["payload"]["username"] = json!("ghosT");
    assert_eq!(verify_offline(&tampered), Err(4));

    let filtered = ts
        .client
        .get(ts.at("/api/v1/audit/export?type=auth.login_failed&after=3"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seqs: Vec<u64> = filtered
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [4, 5]);
}

/// Reads SSE frames until `n` events arrived; returns their (id, data).
async fn read_sse(resp: reqwest::Response, n: usize) -> Vec<(u64, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE events arrive in time")
            .expect("stream open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_tail_resumes_after_last_event_id_and_goes_live() {
    let ts = common::start().await;
    let admin = make_history(&ts).await;
    let resp = ts
        .client
        .get(ts.at("/api/v1/audit/stream"))
        .bearer_auth(&admin)
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Catch-up: 4, 5, 6 from the store; then a live event.
    let reader = tokio::spawn(read_sse(resp, 4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .json(&json!({"username": "late", "password": "late-password-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let got = reader.await.unwrap();
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(&ids[..3], &[4, 5, 6]);
    assert!(ids[3] > 6, "a live event follows: {ids:?}");
    for (id, data) in &got {
        assert_eq!(data["seq"].as_u64().unwrap(), *id, "SSE id is the seq");
    }
    assert_eq!(got[3].1["payload"]["username"], "late");

    // ?after= works the same way.
    let resp = ts
        .client
        .get(ts.at("/api/v1/audit/stream?after=5"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let got = read_sse(resp, 1).await;
    assert_eq!(got[0].0, 6);
}
