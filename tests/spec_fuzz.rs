//! Spec fuzzing: Schemathesis (pinned, in the venv `ops/setup.sh` makes) drives every
//! operation of the committed `openapi/openapi.json` against the real binary with the test
//! model, authenticated as the admin through an API key, and the run fails on any 5xx, any
//! status, content type or body the spec does not declare, and any error body that is not
//! its route's (`tests/schemathesis/inferno_hooks.py`). README, "Spec fuzzing".
//!
//! Also here: the type confusion poem-openapi would let through on its own (a number where
//! a string is declared) is a 400 naming the field.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Operations of the spec the fuzzer leaves out, as `METHOD /path` (README, "Spec
/// fuzzing" says why). The run must test every other one.
const EXCLUDED: &[&str] = &[];

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schemathesis() -> PathBuf {
    let venv = std::env::var_os("INFERNO_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/inferno/schemathesis-venv")
        });
    let st = venv.join("bin/st");
    assert!(
        st.exists(),
        "{} is missing: run INFERNO_SETUP_TESTS=1 ops/setup.sh (it installs the pinned Schemathesis)",
        st.display()
    );
    st
}

/// `METHOD /path` of every operation in the committed spec.
fn spec_operations() -> Vec<String> {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("openapi/openapi.json")).unwrap(),
    )
    .unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

/// What the run's NDJSON events report: the operations the coverage and fuzzing phases
/// tested (`METHOD /path`), and the number of test cases over every phase.
fn tested(ndjson: &str) -> (BTreeSet<String>, usize) {
    let mut ops = BTreeSet::new();
    let mut cases = 0;
    for event in ndjson
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(finished) = event.get("ScenarioFinished") else {
            continue;
        };
        cases += finished["recorder"]["cases"]
            .as_object()
            .map_or(0, serde_json::Map::len);
        let phase = finished["phase"].as_str().unwrap_or_default();
        if matches!(phase, "coverage" | "fuzzing") && finished["status"] != "skip" {
            if let Some(label) = finished["recorder"]["label"].as_str() {
                ops.insert(label.to_string());
            }
        }
    }
    (ops, cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_holds_to_the_spec_under_fuzzing() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let server = common::spawn_server(
        &dir.path().join("data"),
        &[
            ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
            // The fuzzer's thousands of requests, bad credentials and logins among them,
            // must meet the routes, not the rate limits (which have tests of their own).
            ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000"),
            ("INFERNO_AUTH__FAILED_AUTH_PER_MINUTE", "1000000"),
            ("INFERNO_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", "1000000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // The binary under test serves the spec the run reads.
    let served: Value = client
        .get(server.at("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("openapi/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served == committed,
        "the server's spec is not openapi/openapi.json"
    );
    let token = server.admin_token(&client).await;
    // Every permission the server knows, for the admin's key.
    let all_permissions: Vec<&str> = inferno::auth::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    let r = client
        .post(server.at("/api/v1/auth/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "spec-fuzz", "permissions": all_permissions}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "admin key");
    let created: Value = r.json().await.unwrap();
    let (key_id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    let me: Value = server.get_json(&client, &token, "/api/v1/auth/me").await;
    let admin_id = me["id"].as_str().unwrap().to_string();

    let fuzz_dir = manifest_dir().join("tests/schemathesis");
    let report = dir.path().join("events.ndjson");
    let seed = std::env::var("INFERNO_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let checks = "not_a_server_error,status_code_conformance,content_type_conformance,\
                  response_schema_conformance,error_body";
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(fuzz_dir.join("schemathesis.toml"))
        .arg("run")
        .arg(manifest_dir().join("openapi/openapi.json"))
        .args(["--url", &server.url, "--checks", checks, "--seed", &seed])
        .args(["--no-color", "--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", fuzz_dir.join("inferno_hooks.py"))
        .env("INFERNO_FUZZ_URL", &server.url)
        .env("INFERNO_FUZZ_KEY", &key)
        .env("INFERNO_FUZZ_KEY_ID", &key_id)
        .env("INFERNO_FUZZ_ADMIN_ID", &admin_id)
        .env("INFERNO_FUZZ_MODEL_ID", common::TEST_MODEL_ID)
        .current_dir(dir.path());
    for op in EXCLUDED {
        let (method, path) = op.split_once(' ').unwrap();
        cmd.args([
            "--exclude-by",
            &format!("method == \"{method}\" and path == \"{path}\""),
        ]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run schemathesis"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = server.terminate();
    assert!(
        !stdout.contains(&key) && !stderr.contains(&key),
        "the key leaked into Schemathesis's output"
    );
    assert!(out.status.success(), "Schemathesis found failures (above)");
    assert!(status.success(), "the server did not stop cleanly");

    let (tested, cases) = tested(&std::fs::read_to_string(&report).unwrap());
    let expected: BTreeSet<String> = spec_operations()
        .into_iter()
        .filter(|op| !EXCLUDED.contains(&op.as_str()))
        .collect();
    println!(
        "spec fuzzing: {} operations tested ({} in the spec, {} excluded), {cases} test cases",
        tested.len(),
        expected.len() + EXCLUDED.len(),
        EXCLUDED.len()
    );
    let missing: Vec<_> = expected.difference(&tested).collect();
    assert!(missing.is_empty(), "operations not tested: {missing:?}");
    assert_eq!(tested, expected);
}

/// poem-openapi on its own would read `{"prompt": 7}` as the string `"7"`: every request
/// body is parsed strictly instead, and the wrong type is a 400 naming the field.
#[tokio::test]
async fn a_number_or_boolean_where_a_string_is_declared_is_a_validation_error() {
    let ts = common::start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    let post = |path: &'static str, body: Value| {
        let (ts, admin) = (&ts, admin.clone());
        async move {
            ts.client
                .post(ts.at(path))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let model = common::TEST_MODEL_ID;
    for (body, field) in [
        (
            json!({"model": model, "prompt": 7, "max_tokens": 2}),
            "prompt",
        ),
        (
            json!({"model": model, "prompt": true, "max_tokens": 2}),
            "prompt",
        ),
        (
            json!({"model": 7, "prompt": "Hi", "max_tokens": 2}),
            "model",
        ),
        (
            json!({"model": model, "messages": [{"role": "user", "content": 1.5}], "max_tokens": 2}),
            "messages[0].content",
        ),
        (
            json!({"model": model, "prompt": "Hi", "max_tokens": 2, "stop": ["x", 3]}),
            "stop[1]",
        ),
    ] {
        for path in ["/api/v1/inference", "/api/v1/jobs"] {
            let r = post(path, body.clone()).await;
            let err = common::expect_error(r, 400, "VALIDATION_ERROR").await;
            assert_eq!(
                err["error"]["details"]["field"], field,
                "{path} {body}: {err}"
            );
        }
    }
    // Not read as the username "12345": refused before any login is tried.
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .json(&json!({"username": 12345, "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let err = common::expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(err["error"]["details"]["field"], "username");
    let r = post(
        "/api/v1/auth/api-keys",
        json!({"name": false, "permissions": ["read_models"]}),
    )
    .await;
    common::expect_error(r, 400, "VALIDATION_ERROR").await;
    let r = post(
        "/api/v1/auth/api-keys",
        json!({"name": "k", "permissions": [1]}),
    )
    .await;
    let err = common::expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(err["error"]["details"]["field"], "permissions[0]");

    // The OpenAI routes answer in OpenAI's shape, `param` naming the field.
    let r = post(
        "/v1/chat/completions",
        json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "user": 42}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    assert_eq!(err["error"]["param"], "user", "{err}");
    assert_eq!(err["error"]["code"], "validation_error", "{err}");

    // Well-typed bodies still run, and nothing was recorded for the refused ones.
    assert_eq!(
        post(
            "/api/v1/inference",
            json!({"model": model, "prompt": "Hi", "max_tokens": 2})
        )
        .await
        .status(),
        200
    );
    assert_eq!(ts.events(&admin, "job.queued").await.len(), 1);
    ts.stop().await;
}
