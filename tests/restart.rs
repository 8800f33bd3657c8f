//! What a user does over days: run real inference, stop the server (SIGTERM), start it again.
//! The log verifies through the API and the CLI, the head is unchanged by the restart, no new
//! event carries a float, and the README's Python recipe reproduces every hash.

mod common;

use serde_json::{json, Value};

/// The request bodies of the run: greedy and sampled, prompts and chat, stop strings.
fn body(i: usize) -> Value {
    let mut b = json!({"model": common::TEST_MODEL_ID, "max_tokens": 1 + i % 6});
    if i.is_multiple_of(3) {
        b["messages"] = json!([{"role": "user", "content": format!("Name a colour ({i}).")}]);
    } else {
        b["prompt"] = json!(format!("Question {i}: the capital of France is"));
    }
    if i % 2 == 1 {
        b["temperature"] = json!(0.7 + (i % 5) as f64 / 10.0);
        b["top_p"] = json!(0.95);
        b["min_p"] = json!(0.05);
        b["repeat_penalty"] = json!(1.1);
        b["seed"] = json!(i);
        b["stop"] = json!(["\n\n", "Question"]);
    }
    b
}

async fn verify_api(client: &reqwest::Client, url: &str, key: &str) -> Value {
    let r = client
        .get(format!("{url}/api/v1/audit/verify"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn verify_cli(data: &str) -> Value {
    let out = common::run_cli(&["audit", "verify", "--data-dir", data]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_inferences_then_a_restart_verify_with_the_head_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap().to_string();
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = [
        ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "100000"),
        ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
        ("INFERNO_MODELS__THREADS", "1"),
        ("INFERNO_MODELS__PARALLEL", "4"),
    ];
    let server = common::spawn_server(&data, &env).await;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await;
    let key: Value = client
        .post(server.at("/api/v1/auth/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "auditor", "permissions": ["view_audit_logs", "run_inference"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();

    // Given 52 real inference calls, four at a time
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, url, key) = (client.clone(), server.url.clone(), key.clone());
        workers.push(tokio::spawn(async move {
            for i in (w..52).step_by(4) {
                let r = client
                    .post(format!("{url}/api/v1/inference"))
                    .header("x-api-key", &key)
                    .json(&body(i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "request {i}");
                let out: Value = r.json().await.unwrap();
                assert!(out["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let before = verify_api(&client, &server.url, &key).await;
    assert_eq!(before["ok"], true, "{before}");

    // When the server stops cleanly
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");

    // Then the CLI verifies the stopped log with the same head
    let offline = verify_cli(&d);
    assert_eq!(offline["ok"], true, "{offline}");
    assert_eq!(offline["head_seq"], before["head_seq"]);
    assert_eq!(offline["head_hash"], before["head_hash"]);

    // and the log holds the 52 completions, with no float in any payload
    let out = common::run_cli(&["audit", "export", "--data-dir", &d]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let completed: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "job.completed")
        .collect();
    assert_eq!(completed.len(), 52);
    for e in &completed {
        assert_eq!(e["version"], 1);
        assert!(
            e["payload"]["timings"]["prompt_us"].as_u64().unwrap() > 0,
            "{e}"
        );
    }
    let mut floats = Vec::new();
    for e in &lines {
        common::floats_in(&e["payload"], &format!("seq {}", e["seq"]), &mut floats);
    }
    assert!(floats.is_empty(), "floats in events: {floats:?}");
    // and the README's recipe recomputes every hash
    let (ok, text) = common::run_readme_recipe(&out.stdout);
    assert!(ok, "{text}");

    // When it starts again
    let server = common::spawn_server(&data, &env).await;

    // Then it serves, the chain verifies, and the restart changed nothing in the log
    let after = verify_api(&client, &server.url, &key).await;
    assert_eq!(after["ok"], true, "{after}");
    assert_eq!(after["head_seq"], before["head_seq"]);
    assert_eq!(after["head_hash"], before["head_hash"]);
    // and inference goes on
    let token = server.admin_token(&client).await;
    common::infer_once(&client, &server.url, &token).await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(verify_cli(&d)["ok"], true);
}
