//! The OpenAI-compatible `/v1` routes on the real model: the official `openai` Python SDK
//! (pinned, in the venv `ops/setup.sh` makes) runs unchanged against the server, and the
//! routes are jobs of the queue with their events.

mod common;

use std::process::Command;

use common::{TestServer, TEST_MODEL_ID as MODEL};
use serde_json::{json, Value};

fn sdk_python() -> std::path::PathBuf {
    let venv = std::env::var_os("INFERNO_SDK_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/inferno/sdk-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ops/setup.sh (it installs the pinned openai SDK)",
        python.display()
    );
    python
}

async fn server() -> (TestServer, String) {
    let ts = common::start_with(|c| {
        common::with_test_model(c);
        c.limits.requests_per_minute = 10_000;
    })
    .await;
    let token = ts.admin_token().await;
    (ts, token)
}

async fn limited_key(ts: &TestServer, token: &str) -> String {
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(token)
        .json(
            &json!({"name": "limited", "permissions": ["read_models"], "rate_limit_per_minute": 2}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_runs_unchanged() {
    let (ts, token) = server().await;
    let (_, key) = ts
        .api_key(&token, &["read_models", "run_inference", "use_streaming"])
        .await;
    let (_, no_stream) = ts.api_key(&token, &["read_models", "run_inference"]).await;
    let (_, models_only) = ts.api_key(&token, &["read_models"]).await;
    let limited = limited_key(&ts, &token).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let python = sdk_python();
    let url = ts.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("INFERNO_URL", url)
            .env("INFERNO_KEY", key)
            .env("INFERNO_KEY_NO_STREAM", no_stream)
            .env("INFERNO_KEY_MODELS_ONLY", models_only)
            .env("INFERNO_KEY_LIMITED", limited)
            .env("INFERNO_MODEL", MODEL)
            .output()
            .expect("run the SDK script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_calls_are_jobs_and_errors_use_openai_shape() {
    let (ts, token) = server().await;
    let r = ts
        .client
        .post(ts.at("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 3, "some_future_field": {"x": 1}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "unknown fields are ignored");
    let body: Value = r.json().await.unwrap();
    let job = body["id"]
        .as_str()
        .unwrap()
        .strip_prefix("chatcmpl-")
        .unwrap()
        .to_string();
    // The queue manager sees it, with its events.
    let j = ts.get_json(&token, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["status"], "completed");
    assert_eq!(
        j["result"]["text"],
        body["choices"][0]["message"]["content"]
    );
    let listed = ts
        .get_json(&token, "/api/v1/queue/jobs?status=completed")
        .await;
    assert!(listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == job.as_str()));
    let queued = ts.events(&token, "job.queued").await;
    assert!(
        queued
            .iter()
            .any(|e| e["payload"]["job_id"] == job.as_str()),
        "{queued:?}"
    );

    // Errors before any handler (no credential, bad JSON) and in one (validation) all use
    // OpenAI's body.
    let r = ts.client.get(ts.at("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    assert!(
        e["error"]["message"].is_string() && e["error"].get("param").is_some(),
        "{e}"
    );
    let r = ts
        .client
        .post(ts.at("/v1/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    let r = ts
        .client
        .post(ts.at("/v1/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": MODEL, "prompt": "x", "logprobs": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "logprobs", "{e}");
    assert_eq!(e["error"]["code"], "validation_error", "{e}");
    // Our own routes keep our body.
    let r = ts.client.get(ts.at("/api/v1/models")).send().await.unwrap();
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "AUTHENTICATION_FAILED", "{e}");
    ts.stop().await;
}
