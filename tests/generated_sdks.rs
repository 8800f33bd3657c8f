//! Clients generated from the committed `openapi/openapi.json` drive the whole flow against a
//! real `inferno serve` with the test model: login, an API key, the model list, an
//! inference, a queued job read until it completed and then streamed, the key revoked and
//! refused, the audit checkpoint. One client from openapi-python-client, one from
//! @hey-api/openapi-ts (type-checked with tsc, run with tsx); `ops/setup.sh` installs both,
//! pinned (INFERNO_SETUP_TESTS=1). The code is generated into a temporary dir on every run,
//! so a spec change that a generator cannot take fails here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Spawned, ADMIN_PASSWORD, TEST_MODEL_ID};
use serde_json::Value;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");

fn cache_dir(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/inferno")
            .join(default)
    })
}

fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{} is missing: run INFERNO_SETUP_TESTS=1 ops/setup.sh (it installs {what})",
        path.display()
    );
}

/// `inferno serve` on the test model, killed when dropped (a failed assertion included).
struct Server(Option<Spawned>);

impl Server {
    async fn start(dir: &Path) -> Server {
        let models = dir.join("models");
        common::link_test_model(&models);
        let env = [
            ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
            ("INFERNO_MODELS__THREADS", "1"),
            ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "10000"),
        ];
        let spawned = common::spawn_server(&dir.join("data"), &env).await;
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(r) = client.get(spawned.at("/ready")).send().await {
                if r.status().is_success() {
                    return Server(Some(spawned));
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("inferno did not become ready");
    }

    fn url(&self) -> String {
        self.0.as_ref().unwrap().url.clone()
    }

    fn stop(mut self) {
        let status = self.0.take().unwrap().terminate();
        assert!(status.success(), "inferno exits cleanly: {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.0.as_mut() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a flow script (blocking, off the runtime) and returns its `SUMMARY` object.
async fn run_flow(mut cmd: Command, url: String) -> Value {
    cmd.env("INFERNO_URL", url)
        .env("INFERNO_PASSWORD", ADMIN_PASSWORD)
        .env("INFERNO_MODEL", TEST_MODEL_ID);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the flow"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the flow failed:\n{stdout}\n{stderr}");
    // The scripts print no credential: no password, no API key, no JWT.
    for secret in [ADMIN_PASSWORD, "inf_", "eyJ"] {
        assert!(
            !stdout.contains(secret),
            "the flow printed a credential:\n{stdout}"
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY line:\n{stdout}"));
    serde_json::from_str(line).expect("SUMMARY is JSON")
}

/// What both flows must have seen.
fn check_summary(s: &Value) {
    let ctx = || format!("summary: {s:#}");
    assert_eq!(
        s["key_permissions"],
        serde_json::json!(["read_models", "run_inference", "use_streaming"]),
        "{}",
        ctx()
    );
    assert!(
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == TEST_MODEL_ID),
        "{}",
        ctx()
    );
    assert!(
        !s["inference_text"].as_str().unwrap().is_empty(),
        "{}",
        ctx()
    );
    assert!(
        s["inference_completion_tokens"].as_u64().unwrap() >= 1,
        "{}",
        ctx()
    );
    assert_eq!(s["job_accepted_status"], "queued", "{}", ctx());
    assert_eq!(s["job_status"], "completed", "{}", ctx());
    let job_text = s["job_text"].as_str().unwrap();
    assert!(!job_text.is_empty(), "{}", ctx());
    assert!(s["streamed_tokens"].as_u64().unwrap() > 0, "{}", ctx());
    assert_eq!(s["streamed_text"], job_text, "{}", ctx());
    assert_eq!(
        s["stream_events"],
        serde_json::json!(["job", "done"]),
        "{}",
        ctx()
    );
    assert_eq!(s["revoke_status"], 204, "{}", ctx());
    assert_eq!(s["revoked_key_status"], 401, "{}", ctx());
    assert_eq!(s["revoked_key_code"], "AUTHENTICATION_FAILED", "{}", ctx());
    assert!(
        s["checkpoint_origin"]
            .as_str()
            .unwrap()
            .starts_with("inferno/"),
        "{}",
        ctx()
    );
    assert!(s["checkpoint_tree_size"].as_u64().unwrap() > 0, "{}", ctx());
    assert_eq!(s["checkpoint_signed"], true, "{}", ctx());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_openapi_python_client() {
    let venv = cache_dir("INFERNO_SDK_GEN_VENV", "sdk-gen-venv");
    let bin = venv.join("bin");
    require(&bin.join("openapi-python-client"), "openapi-python-client");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("inferno_client");
    // ruff (installed with the generator) formats the generated code.
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(
        Command::new(bin.join("openapi-python-client"))
            .args([
                "generate",
                "--meta",
                "none",
                "--path",
                SPEC,
                "--output-path",
            ])
            .arg(&out_dir)
            .env("PATH", &path),
        "openapi-python-client generate",
    );
    // Its one warning is the NDJSON export, a content type it has no parser for (the
    // operation is still generated, answering the raw bytes).
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("WARNING") || l.starts_with("Unable to"))
        .collect();
    assert_eq!(
        warnings,
        ["WARNING parsing GET /api/v1/audit/export within audit."],
        "generator log:\n{log}"
    );

    let server = Server::start(dir.path()).await;
    let mut cmd = Command::new(bin.join("python"));
    cmd.arg(format!("{SDK_DIR}/generated_flow.py"))
        .env("PYTHONPATH", dir.path());
    let summary = run_flow(cmd, server.url()).await;
    assert_eq!(summary["generator"], "openapi-python-client");
    assert_eq!(summary["stream_content_type"], "text/event-stream");
    check_summary(&summary);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_from_hey_api_openapi_ts() {
    let ts = cache_dir("INFERNO_SDK_TS", "sdk-ts");
    let modules = ts.join("node_modules");
    require(&modules.join(".bin/openapi-ts"), "@hey-api/openapi-ts");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("ts");
    std::fs::create_dir(&work).unwrap();
    for f in ["flow.ts", "tsconfig.json", "package.json"] {
        std::fs::copy(format!("{SDK_DIR}/ts/{f}"), work.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&modules, work.join("node_modules")).unwrap();
    let bin = |name: &str| modules.join(".bin").join(name);
    run(
        Command::new(bin("openapi-ts"))
            .args([
                "-i",
                SPEC,
                "-o",
                "client",
                "-c",
                "@hey-api/client-fetch",
                "-s",
            ])
            .current_dir(&work),
        "openapi-ts",
    );
    // The generated types hold: the flow and the client type-check (strict).
    run(
        Command::new(bin("tsc"))
            .args(["-p", "."])
            .current_dir(&work),
        "tsc",
    );

    let server = Server::start(dir.path()).await;
    let mut cmd = Command::new(bin("tsx"));
    cmd.arg("flow.ts").current_dir(&work);
    let summary = run_flow(cmd, server.url()).await;
    assert_eq!(summary["generator"], "@hey-api/openapi-ts");
    check_summary(&summary);
    server.stop();
}
