//! The durable job queue through the API, on the real model: jobs end to end, visibility,
//! priorities, pause/resume (across a restart), cancel, retry of a dead job, idempotency,
//! depth and per-principal limits, purge, shutdown hand-back and replay.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::{expect_error, TestServer, TEST_MODEL_ID as MODEL};
use inferno::inference::{
    Engine, EngineConfig, EngineError, EngineStats, GenerateRequest, Generation, LlamaEngine,
    ModelSpec, Prompt,
};
use serde_json::{json, Value};

static ENGINE: LazyLock<Arc<LlamaEngine>> = LazyLock::new(|| {
    Arc::new(LlamaEngine::new(EngineConfig {
        parallel: 4,
        threads: 1,
        ctx_per_slot: 1024,
        max_loaded: 2,
        ..EngineConfig::default()
    }))
});

/// The real engine, failing every submit of a prompt holding [`FAIL_MARK`] with a load error
/// while `fail` is set: a job that keeps failing for a reason a retry could mend. (Other
/// tests of this binary share the engine and never send the mark.)
struct Flaky {
    fail: AtomicBool,
}

const FAIL_MARK: &str = "[fail this job]";

static FLAKY: LazyLock<Arc<Flaky>> = LazyLock::new(|| {
    Arc::new(Flaky {
        fail: AtomicBool::new(false),
    })
});

impl Engine for Flaky {
    fn submit(&self, model: &ModelSpec, req: GenerateRequest) -> Result<Generation, EngineError> {
        let marked = matches!(&req.prompt, Prompt::Text(t) if t.contains(FAIL_MARK));
        if marked && self.fail.load(Ordering::SeqCst) {
            return Err(EngineError::Load("injected load failure".into()));
        }
        ENGINE.submit(model, req)
    }
    fn stats(&self) -> EngineStats {
        ENGINE.stats()
    }
    fn active_requests(&self, model_id: &str) -> usize {
        ENGINE.active_requests(model_id)
    }
    fn unload(&self, model_id: &str) {
        ENGINE.unload(model_id)
    }
}

async fn server(edit: impl FnOnce(&mut inferno::config::Config)) -> (TestServer, String) {
    let engine: Arc<dyn Engine> = FLAKY.clone();
    let ts = common::start_with_engine(engine, |c| {
        common::with_test_model(c);
        c.limits.requests_per_minute = 100_000;
        edit(c);
    })
    .await;
    let token = ts.admin_token().await;
    (ts, token)
}

fn short(prompt: &str) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 4})
}

async fn submit(ts: &TestServer, token: &str, body: &Value) -> reqwest::Response {
    ts.client
        .post(ts.at("/api/v1/jobs"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn submit_ok(ts: &TestServer, token: &str, body: &Value) -> String {
    let r = submit(ts, token, body).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_string()
}

async fn get_job(ts: &TestServer, token: &str, id: &str) -> reqwest::Response {
    ts.client
        .get(ts.at(&format!("/api/v1/jobs/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Polls the job until its status is one of `want` (30 s at most).
async fn wait_for(ts: &TestServer, token: &str, id: &str, want: &[&str]) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let r = get_job(ts, token, id).await;
        assert_eq!(r.status(), 200);
        last = r.json().await.unwrap();
        if want.contains(&last["status"].as_str().unwrap_or_default()) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached {want:?}: {last}");
}

async fn post(ts: &TestServer, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = ts.client.post(ts.at(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// Pauses or resumes the queue through its API.
async fn set_paused(ts: &TestServer, token: &str, paused: bool) {
    let path = if paused {
        "/api/v1/queue/pause"
    } else {
        "/api/v1/queue/resume"
    };
    let r = post(ts, token, path, None).await;
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(r.json::<Value>().await.unwrap()["paused"], paused);
}

async fn overview(ts: &TestServer, token: &str) -> Value {
    ts.get_json(token, "/api/v1/queue").await
}

fn count(v: &Value, status: &str) -> u64 {
    v["by_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == status)
        .and_then(|s| s["count"].as_u64())
        .unwrap()
}

#[tokio::test]
async fn a_job_runs_end_to_end_and_only_its_owner_or_a_queue_manager_sees_it() {
    let (ts, admin) = server(|_| {}).await;
    let (_, alice) = ts.user_with("alice", "user", &[]).await;
    let (_, bob) = ts.user_with("bob", "user", &[]).await;
    let (_, oper) = ts.user_with("oper", "operator", &["run_inference"]).await;

    let r = submit(&ts, &alice, &short("The capital of France is")).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status"], "queued");
    assert!(accepted["position"].as_u64().unwrap_or(1) >= 1);
    assert_eq!(accepted["links"]["self"], format!("/api/v1/jobs/{id}"));
    assert_eq!(
        accepted["links"]["stream"],
        format!("/api/v1/jobs/{id}/stream")
    );

    let job = wait_for(&ts, &alice, &id, &["completed"]).await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["priority"], "normal");
    assert_eq!(job["result"]["finish_reason"], "length");
    assert_eq!(job["result"]["usage"]["completion_tokens"], 4);
    assert!(!job["result"]["text"].as_str().unwrap().is_empty(), "{job}");
    assert!(job["result"]["timings"]["generate_ms"].as_f64().is_some());
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
    assert!(job["position"].is_null());

    // Bob gets 404 for it, as for a job that does not exist; the operator sees it.
    expect_error(get_job(&ts, &bob, &id).await, 404, "NOT_FOUND").await;
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/jobs/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    assert_eq!(get_job(&ts, &oper, &id).await.status(), 200);
    assert_eq!(get_job(&ts, &admin, &id).await.status(), 200);

    // A synchronous inference is a job too, listed with the owner's jobs, newest first.
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&alice)
        .json(&short("Count to ten:"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sync: Value = r.json().await.unwrap();
    let list: Value = ts.get_json(&alice, "/api/v1/jobs?limit=1").await;
    assert_eq!(list["jobs"][0]["id"], sync["id"]);
    assert_eq!(list["jobs"][0]["status"], "completed");
    let cursor = list["next_cursor"].as_str().unwrap();
    let next: Value = ts
        .get_json(&alice, &format!("/api/v1/jobs?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(next["jobs"][0]["id"], id.as_str());
    assert!(next["next_cursor"].is_null());
    let bobs: Value = ts.get_json(&bob, "/api/v1/jobs").await;
    assert_eq!(bobs["jobs"].as_array().unwrap().len(), 0);

    // Events: queued, started (worker, attempt 1), completed; the prompt as a digest.
    let events = ts
        .events(&admin, "job.queued,job.started,job.completed")
        .await;
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["payload"]["job_id"] == id.as_str())
        .collect();
    let types: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job.queued", "job.started", "job.completed"]);
    assert_eq!(mine[1]["payload"]["attempt"], 1);
    assert!(mine[1]["payload"]["worker"].is_string());
    assert!(mine[0]["payload"]["prompt"]["text"].is_null());

    // The queue manager's overview counts both jobs and names the worker.
    let o = overview(&ts, &admin).await;
    assert_eq!(count(&o, "completed"), 2, "{o}");
    assert_eq!(o["completed_last_minute"], 2, "{o}");
    assert_eq!(o["tokens_last_minute"], 8, "{o}");
    assert_eq!(o["paused"], false);
    assert_eq!(o["max_depth"], 1024);
    assert!(o["workers"][0]["last_heartbeat"].is_string(), "{o}");
    assert!(o["oldest_queued_age_secs"].is_null());
    expect_error(
        ts.client
            .get(ts.at("/api/v1/queue"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap(),
        403,
        "PERMISSION_DENIED",
    )
    .await;

    // Elevated priorities need manage_queue; bad ones are a validation error.
    let mut high = short("x");
    high["priority"] = json!("high");
    let body = expect_error(submit(&ts, &alice, &high).await, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "manage_queue");
    high["priority"] = json!("urgent");
    expect_error(submit(&ts, &admin, &high).await, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn priorities_decide_the_start_order_with_one_slot() {
    let (ts, admin) = server(|c| c.queue.concurrency = 1).await;
    set_paused(&ts, &admin, true).await;
    let mut ids = Vec::new();
    for p in ["low", "normal", "critical", "high", "normal"] {
        let mut body = short("Hello");
        body["priority"] = json!(p);
        ids.push((p, submit_ok(&ts, &admin, &body).await));
    }
    // Paused: nothing starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = overview(&ts, &admin).await;
    assert_eq!((count(&o, "queued"), count(&o, "running")), (5, 0), "{o}");
    assert_eq!(o["paused"], true);
    let first = wait_for(&ts, &admin, &ids[2].1, &["queued"]).await;
    assert_eq!(first["position"], 1, "critical is next");

    set_paused(&ts, &admin, false).await;
    for (_, id) in &ids {
        wait_for(&ts, &admin, id, &["completed"]).await;
    }
    let started: Vec<String> = ts
        .events(&admin, "job.started")
        .await
        .iter()
        .map(|e| e["payload"]["job_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = [2, 3, 1, 4, 0].iter().map(|i| ids[*i].1.clone()).collect();
    assert_eq!(
        started, expected,
        "critical, high, normal (oldest first), low"
    );
}

#[tokio::test]
async fn a_paused_queue_stays_paused_across_a_restart() {
    let (ts, admin) = server(|_| {}).await;
    set_paused(&ts, &admin, true).await;
    let id = submit_ok(&ts, &admin, &short("Hello")).await;
    let ts = ts.restart().await;
    let admin = ts.admin_token().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = wait_for(&ts, &admin, &id, &["queued"]).await;
    assert_eq!(job["position"], 1);
    assert_eq!(overview(&ts, &admin).await["paused"], true);
    set_paused(&ts, &admin, false).await;
    let job = wait_for(&ts, &admin, &id, &["completed"]).await;
    assert_eq!(job["attempts"], 1);
}

#[tokio::test]
async fn cancel_a_queued_and_a_running_job() {
    let (ts, admin) = server(|_| {}).await;
    let (_, alice) = ts.user_with("alice", "user", &[]).await;
    // Queued (the queue paused): it never runs.
    set_paused(&ts, &admin, true).await;
    let queued = submit_ok(&ts, &alice, &short("Hello")).await;
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/jobs/{queued}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    set_paused(&ts, &admin, false).await;

    // Running: it stops at its next token and keeps its partial text.
    let long = json!({"model": MODEL, "prompt": "Write a very long story about a dragon.", "max_tokens": 900});
    let running = submit_ok(&ts, &alice, &long).await;
    wait_for(&ts, &alice, &running, &["running"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(
        &ts,
        &admin,
        &format!("/api/v1/queue/jobs/{running}/cancel"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let job = wait_for(&ts, &alice, &running, &["cancelled"]).await;
    assert_eq!(job["result"]["finish_reason"], "cancelled");
    let done = job["result"]["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert!(done > 0 && done < 900, "{job}");
    assert!(!job["result"]["text"].as_str().unwrap().is_empty());
    assert!(job["cancelled_by"].is_string());
    // Cancelling a finished job is a conflict.
    let r = post(
        &ts,
        &admin,
        &format!("/api/v1/queue/jobs/{running}/cancel"),
        None,
    )
    .await;
    expect_error(r, 409, "CONFLICT").await;

    let started = ts.events(&admin, "job.started").await;
    assert!(
        started
            .iter()
            .all(|e| e["payload"]["job_id"] != queued.as_str()),
        "the cancelled queued job never started"
    );
    let cancelled = ts.events(&admin, "job.cancelled").await;
    assert_eq!(cancelled.len(), 2);
}

#[tokio::test]
async fn a_job_failing_on_every_attempt_is_dead_and_a_retry_runs_it_again() {
    let (ts, admin) = server(|c| c.queue.max_attempts = 3).await;
    FLAKY.fail.store(true, Ordering::SeqCst);
    let id = submit_ok(&ts, &admin, &short(&format!("Hello {FAIL_MARK}"))).await;
    let job = wait_for(&ts, &admin, &id, &["dead", "completed"]).await;
    FLAKY.fail.store(false, Ordering::SeqCst);
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["error"]["code"], "INTERNAL_ERROR");
    assert!(job["error"]["message"]
        .as_str()
        .unwrap()
        .contains("failed to load"));
    let starts = ts
        .events(&admin, "job.started")
        .await
        .into_iter()
        .filter(|e| e["payload"]["job_id"] == id.as_str())
        .count();
    assert_eq!(starts, 3);

    let r = post(&ts, &admin, &format!("/api/v1/queue/jobs/{id}/retry"), None).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let job = wait_for(&ts, &admin, &id, &["completed"]).await;
    assert_eq!(job["attempts"], 1, "attempts were reset");
    assert_eq!(ts.events(&admin, "job.retried").await.len(), 1);
    // A completed job cannot be retried.
    let r = post(&ts, &admin, &format!("/api/v1/queue/jobs/{id}/retry"), None).await;
    expect_error(r, 409, "CONFLICT").await;

    // A validation failure at run time (context overflow) fails at once, without retry.
    let huge = "word ".repeat(1500);
    let id = submit_ok(&ts, &admin, &json!({"model": MODEL, "prompt": huge})).await;
    let job = wait_for(&ts, &admin, &id, &["failed", "dead"]).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["error"]["code"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_and_refuses_another_body() {
    let (ts, admin) = server(|_| {}).await;
    let (_, alice) = ts.user_with("alice", "user", &[]).await;
    let send = |token: String, key: &'static str, body: Value| {
        let ts = &ts;
        async move {
            ts.client
                .post(ts.at("/api/v1/jobs"))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let a: Value = send(alice.clone(), "k-1", short("Hello"))
        .await
        .json()
        .await
        .unwrap();
    let b = send(alice.clone(), "k-1", short("Hello")).await;
    assert_eq!(b.status(), 202);
    let b: Value = b.json().await.unwrap();
    assert_eq!(
        a["job_id"], b["job_id"],
        "same key, same body: the same job"
    );
    let r = send(alice.clone(), "k-1", short("Goodbye")).await;
    expect_error(r, 409, "CONFLICT").await;
    // Another user's identical key is another job.
    let c: Value = send(admin.clone(), "k-1", short("Hello"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(a["job_id"], c["job_id"]);
    let queued = ts.events(&admin, "job.queued").await;
    assert_eq!(queued.len(), 2);
    assert!(
        !queued[0].to_string().contains("k-1"),
        "the key itself is not logged"
    );
}

#[tokio::test]
async fn a_full_queue_is_503_and_a_principal_over_its_cap_429_with_nothing_half_queued() {
    let (ts, admin) = server(|c| {
        c.queue.max_depth = 3;
        c.queue.max_queued_per_principal = 2;
    })
    .await;
    let (_, alice) = ts.user_with("alice", "user", &[]).await;
    set_paused(&ts, &admin, true).await;
    submit_ok(&ts, &alice, &short("one")).await;
    submit_ok(&ts, &alice, &short("two")).await;
    let r = submit(&ts, &alice, &short("three")).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "RATE_LIMITED").await;
    submit_ok(&ts, &admin, &short("three")).await;
    let r = submit(&ts, &admin, &short("four")).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 503, "SERVICE_UNAVAILABLE").await;
    assert_eq!(ts.events(&admin, "job.queued").await.len(), 3);
    assert_eq!(count(&overview(&ts, &admin).await, "queued"), 3);
    set_paused(&ts, &admin, false).await;
}

#[tokio::test]
async fn purge_removes_finished_jobs_and_records_it() {
    let (ts, admin) = server(|_| {}).await;
    let id = submit_ok(&ts, &admin, &short("Hello")).await;
    wait_for(&ts, &admin, &id, &["completed"]).await;
    let r = ts
        .client
        .delete(ts.at("/api/v1/queue/jobs?status=completed&older_than=1h"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["purged"],
        0,
        "not an hour old"
    );
    let r = ts
        .client
        .delete(ts.at("/api/v1/queue/jobs?status=completed"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["purged"], 1);
    expect_error(get_job(&ts, &admin, &id).await, 404, "NOT_FOUND").await;
    let purged = ts.events(&admin, "queue.purged").await;
    assert_eq!(purged[0]["payload"]["count"], 1);
    assert_eq!(purged[0]["payload"]["automatic"], false);
    assert_eq!(
        ts.events(&admin, "job.completed").await.len(),
        1,
        "events stay"
    );
    let r = ts
        .client
        .delete(ts.at("/api/v1/queue/jobs?status=running"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn a_shutdown_hands_running_jobs_back_and_they_finish_after_the_restart() {
    let (ts, admin) = server(|c| c.server.shutdown_timeout_secs = 1).await;
    let long = json!({"model": MODEL, "prompt": "Write a very long story about a dragon.", "max_tokens": 300});
    let id = submit_ok(&ts, &admin, &long).await;
    wait_for(&ts, &admin, &id, &["running"]).await;
    let ts = ts.restart().await;
    let admin = ts.admin_token().await;
    let requeued = ts.events(&admin, "job.requeued").await;
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    assert_eq!(requeued[0]["payload"]["reason"], "shutdown");
    assert_eq!(requeued[0]["payload"]["counts_attempt"], false);
    let job = wait_for(&ts, &admin, &id, &["completed"]).await;
    assert_eq!(job["attempts"], 1, "the handed-back run did not count");
    assert!(
        job["result"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn replay_rebuilds_the_same_queue() {
    let (ts, admin) = server(|_| {}).await;
    let done = submit_ok(&ts, &admin, &short("Hello")).await;
    wait_for(&ts, &admin, &done, &["completed"]).await;
    set_paused(&ts, &admin, true).await;
    let mut high = short("Later");
    high["priority"] = json!("high");
    submit_ok(&ts, &admin, &high).await;
    let waiting = submit_ok(&ts, &admin, &short("Later still")).await;
    let cancelled = submit_ok(&ts, &admin, &short("Never")).await;
    post(
        &ts,
        &admin,
        &format!("/api/v1/queue/jobs/{cancelled}/cancel"),
        None,
    )
    .await;
    let r = post(
        &ts,
        &admin,
        &format!("/api/v1/queue/jobs/{waiting}/priority"),
        Some(json!({"priority": "critical"})),
    )
    .await;
    assert_eq!(r.status(), 200);

    // Every job as the queue manager lists it.
    async fn snapshot(ts: &TestServer, token: &str) -> Vec<Value> {
        let v = ts.get_json(token, "/api/v1/queue/jobs").await;
        v["jobs"].as_array().unwrap().clone()
    }
    let live = snapshot(&ts, &admin).await;
    let cfg = ts.cfg.clone();
    let dir = ts.stop().await;
    let data = cfg.storage.data_dir.to_str().unwrap().to_string();
    let out = common::run_cli(&["audit", "replay", "--data-dir", &data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ts = common::start_full(cfg, dir, Some(FLAKY.clone() as Arc<dyn Engine>)).await;
    let admin = ts.admin_token().await;
    let replayed = snapshot(&ts, &admin).await;
    assert_eq!(live, replayed);
    assert_eq!(live.len(), 4);
    assert_eq!(live[1]["priority"], "critical");
    assert_eq!(live[1]["position"], 1, "the critical one is next: {live:?}");
    assert_eq!(overview(&ts, &admin).await["paused"], true);
}

#[tokio::test]
async fn the_queue_cli_talks_to_a_running_server() {
    let (ts, admin) = server(|_| {}).await;
    let (_, key) = ts.api_key(&admin, &["manage_queue", "run_inference"]).await;
    let id = submit_ok(&ts, &admin, &short("Hello")).await;
    wait_for(&ts, &admin, &id, &["completed"]).await;
    let url = ts.url.clone();
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(common::inferno_bin())
            .arg("queue")
            .args(args)
            .args(["--url", &url])
            .env("INFERNO_API_KEY", &key)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let run = |args: Vec<String>| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&a)
        })
    };
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = run(v(&["ls"])).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains(&id) && out.contains("completed"), "{out}");
    let (ok, out, _) = run(v(&["ls", "--json", "--status", "completed"]))
        .await
        .unwrap();
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let (ok, out, _) = run(v(&["show", &id])).await.unwrap();
    assert!(ok && out.contains("status: completed"), "{out}");
    let (ok, out, _) = run(v(&["pause"])).await.unwrap();
    assert!(ok && out.contains("paused: true"), "{out}");
    let (ok, out, _) = run(v(&["stats", "--json"])).await.unwrap();
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["paused"], true);
    let (ok, _, _) = run(v(&["resume"])).await.unwrap();
    assert!(ok);
    let (ok, out, _) = run(v(&["stats"])).await.unwrap();
    assert!(ok && out.contains("paused: false"), "{out}");
    let (ok, _, err) = run(v(&["retry", &id])).await.unwrap();
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, _, err) = run(v(&["cancel", &id])).await.unwrap();
    assert!(!ok && err.contains("409 CONFLICT"), "{err}");
    let (ok, _, err) = run(v(&["priority", &id, "urgent"])).await.unwrap();
    assert!(!ok && err.contains("400 VALIDATION_ERROR"), "{err}");
    // A queued job moves up with the CLI.
    let (ok, _, _) = run(v(&["pause"])).await.unwrap();
    assert!(ok);
    let queued = submit_ok(&ts, &admin, &short("Later")).await;
    let (ok, out, err) = run(v(&["priority", &queued, "high", "--json"]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["priority"],
        "high"
    );
    let (ok, out, _) = run(v(&["cancel", &queued])).await.unwrap();
    assert!(ok && out.contains("cancelled"), "{out}");
    let (ok, _, _) = run(v(&["resume"])).await.unwrap();
    assert!(ok);
    let (ok, out, _) = run(v(&["purge", "--status", "completed"])).await.unwrap();
    assert!(ok && out.contains("purged: 1"), "{out}");
    let (ok, out, _) = run(v(&["ls", "--status", "cancelled", "--json"]))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["jobs"][0]["id"],
        queued.as_str()
    );

    // Without a key it says how to give one, and no flag takes a key.
    let out = std::process::Command::new(common::inferno_bin())
        .args(["queue", "ls", "--url", &ts.url])
        .env_remove("INFERNO_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INFERNO_API_KEY"));
}

#[tokio::test]
async fn a_job_whose_worker_went_silent_is_requeued_after_its_lease() {
    use inferno::events::{Event, EventContext, JobStarted};
    let (ts, admin) = server(|c| c.queue.lease_secs = 1).await;
    set_paused(&ts, &admin, true).await;
    let id = submit_ok(&ts, &admin, &short("Hello")).await;
    // Another node's worker takes it and goes silent, as a node that died would: its start
    // is in the shared log, and no run of this process holds the job.
    let started = Event::JobStarted(JobStarted {
        job_id: id.clone(),
        worker: "node-b-worker".into(),
        attempt: 1,
    });
    ts.state()
        .store()
        .append(&EventContext::system(), vec![started])
        .await
        .unwrap();
    assert_eq!(
        get_job(&ts, &admin, &id)
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "running"
    );
    let job = wait_for(&ts, &admin, &id, &["queued"]).await;
    assert_eq!(job["attempts"], 1, "the lost attempt counts");
    let requeued = ts.events(&admin, "job.requeued").await;
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    assert_eq!(requeued[0]["payload"]["reason"], "lease_expired");
    assert_eq!(requeued[0]["payload"]["counts_attempt"], true);
    set_paused(&ts, &admin, false).await;
    let job = wait_for(&ts, &admin, &id, &["completed"]).await;
    assert_eq!(job["attempts"], 2);
    assert_ne!(job["worker"], "node-b-worker");
}
