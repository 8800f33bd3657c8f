//! Chaos restarts: the real binary under mixed load (logins, key creation and revocation,
//! user creation, synchronous and queued inference, streams) is killed with `kill -9` at a
//! random moment, and restarted on the same data dir, 10 times. After the last restart the
//! chain and the Merkle tree verify, every mutation that got a 2xx is in the log and in the
//! projections, every accepted job reaches one final state exactly once, and revoked keys
//! stay revoked. The seed is printed; `INFERNO_CHAOS_SEED` replays a run.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const KILLS: usize = 10;

/// What the clients were told succeeded, over every round.
#[derive(Default)]
struct Acked {
    /// key id → secret, for keys created (201).
    keys: HashMap<String, String>,
    /// key ids revoked (204).
    revoked: HashSet<String>,
    /// key ids a revocation was sent for (answered or not: the kill may take the answer).
    revoking: HashSet<String>,
    /// user ids created (201).
    users: HashSet<String>,
    /// job ids accepted (202 from /api/v1/jobs, or answered by /api/v1/inference).
    jobs: HashSet<String>,
    /// Requests answered with a 5xx (there must be none).
    server_errors: Vec<String>,
    logins: usize,
    streams: usize,
}

type Shared = Arc<Mutex<Acked>>;

fn env(models: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000".into()),
        ("INFERNO_AUTH__MAX_KEYS_PER_USER", "1000000".into()),
        ("INFERNO_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", "1000000".into()),
        // The final check sends every revoked key: each is a failed authentication.
        ("INFERNO_AUTH__FAILED_AUTH_PER_MINUTE", "1000000".into()),
        ("INFERNO_MODELS__DIR", models.to_str().unwrap().into()),
        ("INFERNO_MODELS__THREADS", "1".into()),
        ("INFERNO_MODELS__PARALLEL", "2".into()),
    ]
}

async fn spawn(data: &std::path::Path, env: &[(&'static str, String)]) -> common::Spawned {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::spawn_server(data, &env).await
}

/// A request's answer: its JSON body when the status is `expected`, else `None` (the
/// server is gone), with any 5xx recorded first.
async fn expect(
    acked: &Shared,
    what: &str,
    sent: reqwest::Result<reqwest::Response>,
    expected: u16,
) -> Option<reqwest::Response> {
    let r = sent.ok()?;
    if r.status() == expected {
        return Some(r);
    }
    if r.status().is_server_error() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        let e = format!("{what}: {status} {body}");
        acked.lock().unwrap().server_errors.push(e);
    }
    None
}

/// `field` of a JSON answer.
async fn field(r: reqwest::Response, field: &str) -> Option<String> {
    let body: Value = r.json().await.ok()?;
    body[field].as_str().map(str::to_string)
}

/// Reads a streamed answer to its end or until the body breaks off (the server was
/// killed); the job id of its first event, and whether it ended with `done` or `error`.
async fn read_stream(r: reqwest::Response) -> (Option<String>, bool) {
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut job = None;
    while let Some(Ok(chunk)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if job.is_none() {
            job = stream_job_id(&text);
        }
    }
    let ended = text.contains("event: done") || text.contains("event: error");
    (job, ended)
}

/// One client task of a kind; runs until its requests fail (the server is gone).
async fn client_loop(kind: usize, url: String, token: String, acked: Shared, seed: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let post = |path: &str, body: Value| {
        client
            .post(format!("{url}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let model = common::TEST_MODEL_ID;
    for i in 0.. {
        match kind {
            0 => {
                let body = json!({"name": format!("c{seed}-{i}"), "permissions": ["read_models"]});
                let sent = post("/api/v1/auth/api-keys", body).await;
                let Some(r) = expect(&acked, "create key", sent, 201).await else {
                    return;
                };
                let Ok(b) = r.json::<Value>().await else {
                    return;
                };
                let id = b["id"].as_str().unwrap().to_string();
                let key = b["key"].as_str().unwrap().to_string();
                acked.lock().unwrap().keys.insert(id.clone(), key);
                // Revoke about half of them again.
                if rng.random_bool(0.5) {
                    acked.lock().unwrap().revoking.insert(id.clone());
                    let sent = client
                        .delete(format!("{url}/api/v1/auth/api-keys/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    if expect(&acked, "revoke", sent, 204).await.is_none() {
                        return;
                    }
                    acked.lock().unwrap().revoked.insert(id);
                }
            }
            1 => {
                let body = json!({"username": format!("u{seed}x{i}"), "role": "user",
                                  "password": "chaos-password-1234"});
                let sent = post("/api/v1/users", body).await;
                let Some(r) = expect(&acked, "create user", sent, 201).await else {
                    return;
                };
                let Some(id) = field(r, "id").await else {
                    return;
                };
                acked.lock().unwrap().users.insert(id);
            }
            2 => {
                let body = json!({"username": "admin", "password": common::ADMIN_PASSWORD});
                let sent = post("/api/v1/auth/login", body).await;
                if expect(&acked, "login", sent, 200).await.is_none() {
                    return;
                }
                acked.lock().unwrap().logins += 1;
            }
            3 => {
                let body = json!({"model": model, "prompt": format!("Item {i}:"), "max_tokens": 3});
                let sent = post("/api/v1/jobs", body).await;
                let Some(r) = expect(&acked, "queue a job", sent, 202).await else {
                    return;
                };
                let Some(id) = field(r, "job_id").await else {
                    return;
                };
                acked.lock().unwrap().jobs.insert(id);
                // Paced, so that the queue does not hold up the streams for long.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            4 => {
                let body = json!({"model": model, "prompt": "Hello", "max_tokens": 2});
                let sent = post("/api/v1/inference", body).await;
                let Some(r) = expect(&acked, "inference", sent, 200).await else {
                    return;
                };
                let Some(id) = field(r, "id").await else {
                    return;
                };
                acked.lock().unwrap().jobs.insert(id);
            }
            _ => {
                let body = json!({"model": model, "prompt": "Once", "max_tokens": 4,
                                  "stream": true, "detach": true});
                let sent = post("/api/v1/inference", body).await;
                let Some(r) = expect(&acked, "stream", sent, 200).await else {
                    return;
                };
                // The first event names the job: it is accepted from there on.
                let (job, ended) = read_stream(r).await;
                let Some(id) = job else { return };
                let mut a = acked.lock().unwrap();
                a.jobs.insert(id);
                if !ended {
                    return;
                }
                a.streams += 1;
            }
        }
    }
}

/// The job id of the stream's first event (`event: job`, `data: {"job_id": ...}`), once
/// it has arrived whole.
fn stream_job_id(text: &str) -> Option<String> {
    let block = text
        .split("\n\n")
        .next()
        .filter(|_| text.contains("\n\n"))?;
    if !block.lines().any(|l| l == "event: job") {
        return None;
    }
    let data = block.lines().find_map(|l| l.strip_prefix("data:"))?;
    let v: Value = serde_json::from_str(data.trim()).ok()?;
    v["job_id"].as_str().map(str::to_string)
}

const FINAL: [&str; 4] = ["job.completed", "job.failed", "job.cancelled", "job.dead"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill9_restarts_under_mixed_load_lose_nothing_acknowledged() {
    let seed: u64 = std::env::var("INFERNO_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (INFERNO_CHAOS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = env(&models);
    let acked: Shared = Arc::default();
    let http = reqwest::Client::new();

    for round in 0..KILLS {
        let server = spawn(&data, &env).await;
        let token = server.admin_token(&http).await;
        let mut tasks = Vec::new();
        for kind in 0..6 {
            tasks.push(tokio::spawn(client_loop(
                kind,
                server.url.clone(),
                token.clone(),
                acked.clone(),
                seed.wrapping_add((round * 10 + kind) as u64),
            )));
        }
        let wait = rng.random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        for t in tasks {
            let _ = t.await;
        }
    }

    // The last restart: every accepted job reaches a final state.
    let server = spawn(&data, &env).await;
    let token = server.admin_token(&http).await;
    let jobs: Vec<String> = acked.lock().unwrap().jobs.iter().cloned().collect();
    for id in &jobs {
        let mut status = String::new();
        for _ in 0..600 {
            let j: Value = server
                .get_json(&http, &token, &format!("/api/v1/jobs/{id}"))
                .await;
            status = j["status"].as_str().unwrap_or_default().to_string();
            if !matches!(status.as_str(), "queued" | "running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            matches!(
                status.as_str(),
                "completed" | "failed" | "cancelled" | "dead"
            ),
            "job {id} is {status}"
        );
    }
    // Revoked keys stay revoked; the others still work.
    let (keys, revoked, revoking) = {
        let a = acked.lock().unwrap();
        (a.keys.clone(), a.revoked.clone(), a.revoking.clone())
    };
    for (id, key) in &keys {
        let r = http
            .get(server.at("/api/v1/auth/me"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if revoked.contains(id) {
            assert_eq!(status, 401, "revoked key {id}");
        } else if !revoking.contains(id) {
            assert_eq!(status, 200, "key {id}");
        } else {
            // A revocation whose answer the kill took: either outcome, nothing else.
            assert!(matches!(status, 200 | 401), "key {id}: {status}");
        }
    }
    // Projections hold every created user.
    let users: Vec<String> = acked.lock().unwrap().users.iter().cloned().collect();
    for id in &users {
        let r = http
            .get(server.at(&format!("/api/v1/users/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "user {id}");
    }
    let verify: Value = server.get_json(&http, &token, "/api/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
    server.terminate();

    // Offline: the chain and the tree verify, and the log holds every acknowledged write.
    let data_arg = data.to_str().unwrap();
    let out = common::run_cli(&["audit", "verify", "--data-dir", data_arg]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: HashSet<String> = common::exported_events(data_arg, "api_key.created")
        .iter()
        .map(|e| e["payload"]["key_id"].as_str().unwrap().to_string())
        .collect();
    let revocations: HashSet<String> = common::exported_events(data_arg, "api_key.revoked")
        .iter()
        .map(|e| e["payload"]["key_id"].as_str().unwrap().to_string())
        .collect();
    let users: HashSet<String> = common::exported_events(data_arg, "user.created")
        .iter()
        .map(|e| e["payload"]["user_id"].as_str().unwrap().to_string())
        .collect();
    let mut finals: HashMap<String, usize> = HashMap::new();
    for t in FINAL {
        for e in common::exported_events(data_arg, t) {
            *finals
                .entry(e["payload"]["job_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let a = acked.lock().unwrap();
    assert!(
        a.server_errors.is_empty(),
        "5xx answers: {:?}",
        a.server_errors
    );
    assert!(
        keys.keys().all(|id| created.contains(id)),
        "a created key is lost"
    );
    assert!(
        revoked.iter().all(|id| revocations.contains(id)),
        "a revocation is lost"
    );
    assert!(
        a.users.iter().all(|id| users.contains(id)),
        "a created user is lost"
    );
    for id in &jobs {
        assert_eq!(finals.get(id), Some(&1), "job {id}: final events");
    }
    let checked = keys.len() + revoked.len() + a.users.len() + jobs.len();
    println!(
        "chaos: {KILLS} kills survived; acknowledged writes checked: {checked} ({} keys, {} \
         revocations, {} users, {} jobs); {} logins, {} streams finished",
        keys.len(),
        revoked.len(),
        a.users.len(),
        jobs.len(),
        a.logins,
        a.streams
    );
    assert!(
        keys.len() > 10 && !a.users.is_empty() && !jobs.is_empty(),
        "the load ran"
    );
}
