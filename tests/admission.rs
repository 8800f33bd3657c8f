//! Bounded admission per model, through the API on the real model: beyond `[models]
//! max_waiting` a request fails at once, and one that waited longer than `max_wait_secs` for
//! a slot fails too, both with 503 SERVICE_UNAVAILABLE and Retry-After; the server keeps
//! serving. The server builds its engine from `[models]`, so the settings are tested from
//! the configuration down. The job queue normally runs no more jobs than a model has slots;
//! here it runs three at once (`[queue] concurrency`) so that jobs reach the engine's
//! waiting list, and gives each one attempt, so a refusal is final.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{expect_error, TestServer};
use serde_json::{json, Value};

const MODEL: &str = "gemma-3-270m-q4_k_m";
/// Greedy decoding goes on counting for as long as it is allowed to: a request that holds
/// its slot for a long while.
const COUNTING: &str = "Count from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6,";

fn model_path() -> PathBuf {
    common::test_model_path()
}

/// Polls `done` every 25 ms, up to `tries` times; whether it became true.
async fn eventually(tries: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    done()
}

fn spawn_inference(
    ts: &TestServer,
    token: &str,
    body: Value,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (client, url, token) = (
        ts.client.clone(),
        ts.at("/api/v1/inference"),
        token.to_owned(),
    );
    tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    })
}

/// The documented 503 body with its Retry-After; returns `details.reason`.
async fn expect_busy(r: reqwest::Response) -> String {
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    let body = expect_error(r, 503, "SERVICE_UNAVAILABLE").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model busy"),
        "{body}"
    );
    body["error"]["details"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_full_waiting_list_and_a_long_wait_give_503_with_retry_after() {
    let ts = common::start_with(|c| {
        std::fs::create_dir_all(&c.models.dir).unwrap();
        std::os::unix::fs::symlink(model_path(), c.models.dir.join(format!("{MODEL}.gguf")))
            .unwrap();
        c.models.parallel = 1;
        c.models.max_waiting = 1;
        c.models.max_wait_secs = 1;
        c.queue.concurrency = 3;
        c.queue.max_attempts = 1;
    })
    .await;
    let token = ts.admin_token().await;
    let engine = ts.state().engine().clone();

    // A holds the only slot ...
    let long = json!({"model": MODEL, "prompt": COUNTING, "max_tokens": 2000});
    let a = spawn_inference(&ts, &token, long.clone());
    if !eventually(2400, || engine.stats().active_sequences == 1).await {
        let r = a.await.unwrap();
        panic!(
            "the first request ended: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
    }
    // ... B waits for it, the one place on the waiting list ...
    let b = spawn_inference(&ts, &token, long.clone());
    assert!(
        eventually(400, || engine.active_requests(MODEL) == 2).await,
        "the second request waits"
    );
    // ... so C is turned away at once.
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&token)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_busy(r).await, "waiting_list_full");

    // B gives up after waiting a second for the slot, while A still runs.
    let r = b.await.unwrap();
    assert_eq!(engine.stats().active_sequences, 1, "A is still running");
    assert_eq!(expect_busy(r).await, "wait_timeout");
    assert_eq!(engine.active_requests(MODEL), 1, "B left the waiting list");

    // Both failures are recorded, as engine errors are: their one attempt is spent.
    let failed = ts.events(&token, "job.dead").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for e in &failed {
        let error = e["payload"]["error"].as_str().unwrap();
        assert!(error.contains("model busy"), "{error}");
    }

    // A's client goes away; the server keeps serving.
    a.abort();
    assert!(
        eventually(400, || engine.active_requests(MODEL) == 0).await,
        "the slot is freed"
    );
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&token)
        .json(&json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["usage"]["completion_tokens"], 3);
}

#[test]
fn admission_settings_load_from_the_environment_and_are_checked() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let cfg = inferno::config::Config::load_from(None, env(&[])).unwrap();
    assert_eq!(
        (cfg.models.max_waiting, cfg.models.max_wait_secs),
        (64, 300)
    );
    let cfg = inferno::config::Config::load_from(
        None,
        env(&[
            ("INFERNO_MODELS__MAX_WAITING", "0"),
            ("INFERNO_MODELS__MAX_WAIT_SECS", "5"),
        ]),
    )
    .unwrap();
    assert_eq!((cfg.models.max_waiting, cfg.models.max_wait_secs), (0, 5));
    let engine = inferno::server::engine_config(&cfg);
    assert_eq!(engine.max_waiting, 0);
    assert_eq!(engine.max_wait, Duration::from_secs(5));
    let err =
        inferno::config::Config::load_from(None, env(&[("INFERNO_MODELS__MAX_WAIT_SECS", "0")]))
            .unwrap_err();
    assert!(err.to_string().contains("models.max_wait_secs"), "{err}");
}
