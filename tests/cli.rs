//! The real binary: offline user administration, graceful shutdown with a request in flight,
//! `--version` and `openapi`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn inferno(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(common::inferno_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn version_and_openapi() {
    let out = inferno(&["--version"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = inferno(&["openapi"], None);
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(spec["paths"]["/api/v1/auth/login"].is_object());
}

#[tokio::test]
async fn offline_user_administration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    // An empty data dir: add a user, reading the password from stdin.
    let out = inferno(
        &["user", "add", "--data-dir", d, "--role", "auditor", "greta"],
        Some("greta-password-123\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = inferno(
        &["user", "add", "--data-dir", d, "greta"],
        Some("another-password-1\n"),
    );
    assert!(!out.status.success(), "duplicate username refused");
    let out = inferno(&["user", "add", "--data-dir", d, "shorty"], Some("short\n"));
    assert!(!out.status.success(), "short password refused");
    let out = inferno(&["user", "list", "--data-dir", d], None);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.contains("greta\tauditor\tactive"), "{listing}");

    // The server uses what the CLI wrote, then the CLI changes it back on the stopped server.
    let server = common::spawn_server(&data, &[]).await;
    let c = reqwest::Client::new();
    let login = |url: String, p: &'static str| {
        c.post(format!("{url}/api/v1/auth/login"))
            .json(&json!({"username": "greta", "password": p}))
            .send()
    };
    assert_eq!(
        login(server.url.clone(), "greta-password-123")
            .await
            .unwrap()
            .status(),
        200
    );
    let out = inferno(&["user", "list", "--data-dir", d], None);
    assert!(
        !out.status.success(),
        "the running server holds the data dir"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    server.terminate();

    let out = inferno(
        &["user", "passwd", "--data-dir", d, "greta"],
        Some("greta-new-password-9\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = common::spawn_server(&data, &[]).await;
    assert_eq!(
        login(server.url.clone(), "greta-password-123")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        login(server.url.clone(), "greta-new-password-9")
            .await
            .unwrap()
            .status(),
        200
    );
    server.terminate();

    let out = inferno(&["user", "disable", "--data-dir", d, "greta"], None);
    assert!(out.status.success());
    let server = common::spawn_server(&data, &[]).await;
    assert_eq!(
        login(server.url.clone(), "greta-new-password-9")
            .await
            .unwrap()
            .status(),
        401
    );
    server.terminate();
    // Every change is in the verified log.
    let out = inferno(&["audit", "verify", "--data-dir", d], None);
    assert!(out.status.success());
    let out = inferno(
        &[
            "audit",
            "export",
            "--data-dir",
            d,
            "--type",
            "user.disabled",
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let server = common::spawn_server(
        &dir.path().join("data"),
        &[
            ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
            ("INFERNO_MODELS__THREADS", "1"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let token = server.admin_token(&c).await;
    let (c2, url, t2) = (c.clone(), server.at("/api/v1/inference"), token.clone());
    let in_flight = tokio::spawn(async move {
        c2.post(url).bearer_auth(t2)
            .json(&json!({"model": "gemma-3-270m-q4_k_m", "prompt": "Tell me a long story about a dragon.", "max_tokens": 48}))
            .send().await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let url = server.url.clone();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got its answer");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 48, "{body}");
    // Stopped: nothing is accepted any more.
    assert!(c.get(format!("{url}/health")).send().await.is_err());
}

#[tokio::test]
async fn replay_rebuilds_projections_and_tampering_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap().to_string();
    let models = dir.path().join("models");
    common::link_test_model(&models);
    let env = [
        ("INFERNO_MODELS__DIR", models.to_str().unwrap()),
        ("INFERNO_MODELS__THREADS", "1"),
    ];
    let server = common::spawn_server(&data, &env).await;
    let c = reqwest::Client::new();
    let token = server.admin_token(&c).await;
    // Replay and restart below go over real inference events.
    common::infer_once(&c, &server.url, &token).await;
    let key: Value = c
        .post(server.at("/api/v1/auth/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "survivor", "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    server.terminate();

    // Replay rebuilds every projection from the log; the key still works afterwards.
    let out = inferno(&["audit", "replay", "--data-dir", &d], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = common::spawn_server(&data, &env).await;
    let r = c
        .get(server.at("/api/v1/auth/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.terminate();

    // Corrupt the newest event's structure: the chain check reports it, open refuses.
    let head = {
        let out = inferno(&["audit", "verify", "--data-dir", &d], None);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report["head_seq"].as_u64().unwrap()
    };
    {
        let db = fjall::Database::builder(data.join("log")).open().unwrap();
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let k = head.to_be_bytes();
        let mut v = events.get(k).unwrap().unwrap().to_vec();
        let pos = v.windows(7).position(|w| w == b"\"actor\"").unwrap();
        v[pos + 1] = b'A';
        events.insert(k, v).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let out = inferno(&["audit", "verify", "--data-dir", &d], None);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["first_bad_seq"], head);
    // The server refuses to start on a broken tail, and says why.
    let out = Command::new(common::inferno_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", &d])
        .env("INFERNO_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&head.to_string()) && err.to_lowercase().contains("chain"),
        "{err}"
    );

    // With --allow-broken-tail it opens read-only: reads work, every write is 503, and
    // nothing is chained onto the broken chain.
    let log = dir.path().join("broken.log");
    let mut child = Command::new(common::inferno_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--allow-broken-tail",
            "--data-dir",
            &d,
        ])
        .env("INFERNO_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut url = None;
    for _ in 0..400 {
        url = common::listening_url(&std::fs::read_to_string(&log).unwrap_or_default());
        if url.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = url.unwrap_or_else(|| {
        panic!(
            "the read-only server listens: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let r = c
        .get(format!("{url}/api/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reads work");
    let r = c
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
    let r = c
        .post(format!("{url}/api/v1/auth/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "after-the-break", "permissions": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let out = inferno(&["audit", "verify", "--data-dir", &d], None);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["head_seq"], head, "nothing was appended");
}

#[tokio::test]
async fn a_generated_admin_password_goes_to_a_0600_file_without_a_terminal_never_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let data = dir.path().join("data");
    // setsid: a new session without a controlling terminal, as under a service manager.
    let mut cmd = Command::new("setsid");
    cmd.arg(common::inferno_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("INFERNO_ADMIN_PASSWORD")
        .env("INFERNO_LOGGING__DIR", &logs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("inferno listening") && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let url = common::listening_url(&text).expect("the address is logged");
    let file = data.join("initial-admin-password");
    let password = std::fs::read_to_string(&file)
        .expect("the password file is written")
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(password.len() >= 16);
    let r = reqwest::Client::new()
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the password in the file logs in");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    text.push_str(&rest);
    assert!(
        !text.contains(&password),
        "the password is not on the log stream"
    );
    assert!(
        text.contains("initial-admin-password"),
        "the log says where it went"
    );
    let mut logged = String::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        logged.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(
        logged.contains("inferno listening"),
        "the log file is written"
    );
    assert!(
        !logged.contains(&password),
        "the password is not in the log file"
    );
}
