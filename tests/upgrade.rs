//! Upgrading a data dir written by the previous build (`tests/fixtures/v1-datadir`, made by
//! `tests/fixtures/make-v1-datadir.sh` with the build before the no-floats rule): real
//! inference events whose float timings that build's own verifier re-encoded wrongly, user
//! events that carried argon2 hashes, a model PATCH with float defaults. The stored bytes are
//! right: the chain verifies, the server starts, nothing is rewritten, the hashes move to the
//! credentials keyspace and readers never see them.

mod common;

use std::path::Path;

use serde_json::{json, Value};

const FIXTURE_ADMIN_PASSWORD: &str = "fixture-admin-password";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-datadir"),
        &data,
    );
    (dir, data)
}

fn cli_json(args: &[&str]) -> Value {
    let out = common::run_cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn export(data: &str) -> Vec<u8> {
    let out = common::run_cli(&["audit", "export", "--data-dir", data]);
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_build_verifies_starts_and_hides_its_hashes() {
    let (dir, data) = fixture();
    let d = data.to_str().unwrap().to_string();
    let stored_before = export(&d);

    // The chain verifies over the stored bytes (the old verifier refused this very dir).
    let report = cli_json(&["audit", "verify", "--data-dir", &d]);
    assert_eq!(report["ok"], true, "{report}");
    let head = report["head_seq"].as_u64().unwrap();
    let stored: Vec<Value> = String::from_utf8_lossy(&stored_before)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut floats = Vec::new();
    for e in &stored {
        common::floats_in(&e["payload"], &format!("seq {}", e["seq"]), &mut floats);
    }
    assert!(!floats.is_empty(), "the fixture holds float payloads");

    // The server starts on it; old credentials work.
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = [
        ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
        ("INFERNO_MODELS__THREADS", "1"),
        // The fixture's admin holds one live key (old-key): with a limit of 2, one more.
        ("INFERNO_AUTH__MAX_KEYS_PER_USER", "2"),
    ];
    let server = common::spawn_server(&data, &env).await;
    let client = reqwest::Client::new();
    let login = |user: &'static str, password: &'static str| {
        let (client, url) = (client.clone(), server.at("/api/v1/auth/login"));
        async move {
            client
                .post(url)
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = login("admin", FIXTURE_ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200, "the migrated admin password works");
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(login("olduser", "olduser-password-2").await.status(), 200);
    assert_eq!(login("olduser", "olduser-password-1").await.status(), 401);
    let old_key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-datadir.key"),
    )
    .unwrap();
    let r = client
        .get(server.at("/api/v1/audit/verify"))
        .header("x-api-key", old_key.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old API key works");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["head_seq"].as_u64().unwrap() > head);

    // Readers see old events as stored (the bytes the hash covers), less the hashes.
    let get = |path: String| {
        let (client, token) = (client.clone(), token.clone());
        let url = server.at(&path);
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let page = get("/api/v1/audit/events?type=inference.completed&limit=1".into()).await;
    let completed = &page["events"][0];
    assert_eq!(
        completed["version"], 1,
        "stored versions are shown as stored"
    );
    assert!(
        completed["payload"]["timings"]["prompt_ms"].is_f64(),
        "{completed}"
    );
    // Jobs from before the durable queue are in the queue's view, counted as completed.
    let queue = get("/api/v1/queue".into()).await;
    let completed_jobs = queue["by_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "completed")
        .unwrap()["count"]
        .as_u64()
        .unwrap();
    let old_completions = get("/api/v1/audit/events?type=inference.completed&limit=1000".into())
        .await["events"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert!(old_completions >= 1);
    assert_eq!(completed_jobs, old_completions, "{queue}");
    let page = get("/api/v1/audit/events?type=user.created,user.password_changed".into()).await;
    let users = page["events"].as_array().unwrap();
    assert!(users.len() >= 3);
    for e in users.iter().filter(|e| e["version"] == 1) {
        assert!(e["payload"].get("password_hash").is_none(), "{e}");
        assert_eq!(e["redacted"], json!(["payload.password_hash"]));
    }
    let model = get(format!("/api/v1/models/{}", common::TEST_MODEL_ID)).await;
    assert_eq!(model["defaults"]["temperature"], json!(0.7), "{model}");
    let r = client
        .get(server.at("/api/v1/audit/export"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let api_export = r.bytes().await.unwrap();
    assert!(!String::from_utf8_lossy(&api_export).contains("$argon2"));
    let (ok, out) = common::run_readme_recipe(&api_export);
    assert!(ok, "{out}");

    // The live-key index, which the fixture predates, was caught up from its log at open:
    // old-key counts against the limit of 2.
    let create_key = || {
        let (client, token) = (client.clone(), token.clone());
        let url = server.at("/api/v1/auth/api-keys");
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "after-upgrade", "permissions": []}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(create_key().await.status(), 201);
    common::expect_error(create_key().await, 409, "CONFLICT").await;

    // Inference goes on, and the restart after it verifies too.
    common::infer_once(&client, &server.url, &token).await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(cli_json(&["audit", "verify", "--data-dir", &d])["ok"], true);
    // Nothing stored was rewritten: the old events are a prefix of today's log.
    let out = common::run_cli(&["audit", "export", "--data-dir", &d]);
    let now = String::from_utf8(out.stdout).unwrap();
    let before: Vec<&str> = std::str::from_utf8(&stored_before)
        .unwrap()
        .lines()
        .collect();
    assert!(before.iter().any(|l| l.contains("\"redacted\"")));
    assert_eq!(now.lines().take(before.len()).collect::<Vec<_>>(), before);
    assert!(
        !now.contains("$argon2"),
        "the CLI export hides the hashes too"
    );
    let (ok, out) = common::run_readme_recipe(now.as_bytes());
    assert!(ok, "{out}");
    let server = common::spawn_server(&data, &env).await;
    server.terminate();
}
