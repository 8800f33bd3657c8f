//! A full disk: appends fail with 503 SERVICE_UNAVAILABLE, nothing half-written becomes
//! visible (projections always agree with the log), and the server recovers when space
//! returns. The data dir is a small tmpfs
//! (this needs root, as CI and the development machines have).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes until the filesystem refuses; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 16 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

async fn create_key(ts: &common::TestServer, token: &str, i: usize) -> reqwest::Response {
    ts.client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": format!("key-{i}-{}", "x".repeat(80)), "permissions": []}))
        .send()
        .await
        .unwrap()
}

/// The caller's keys, every page.
async fn key_count(ts: &common::TestServer, token: &str) -> usize {
    let (mut all, mut cursor) = (0, None::<String>);
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/v1/auth/api-keys?limit=100&cursor={c}"),
            None => "/api/v1/auth/api-keys?limit=100".to_string(),
        };
        let page = ts.get_json(token, &url).await;
        all += page["keys"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
}

/// Once space returns, whether a key can be created again within 2 s.
async fn recovers(ts: &common::TestServer, token: &str, from: usize) -> bool {
    for i in 0..20 {
        if create_key(ts, token, from + i).await.status() == 201 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

async fn assert_chain_verifies(ts: &common::TestServer, token: &str) {
    let v = ts.get_json(token, "/api/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}

/// A server whose data dir is a fresh 64 MiB tmpfs (mounted under `dir`, at `mnt`).
async fn start_on_tmpfs(
    dir: &Path,
    edit: impl FnOnce(&mut inferno::config::Config),
) -> (Tmpfs, PathBuf, common::TestServer) {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let tmpfs = Tmpfs::mount(&mnt, "64m");
    let (data, models) = (mnt.join("data"), dir.join("models"));
    let ts = common::start_with(move |c| {
        c.storage.data_dir = data;
        c.models.dir = models;
        edit(c);
    })
    .await;
    (tmpfs, mnt, ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (_tmpfs, mnt, ts) = start_on_tmpfs(dir.path(), |c| {
        c.limits.requests_per_minute = 100_000;
    })
    .await;
    let token = ts.admin_token().await;
    let mut created = 0;
    for i in 0..5 {
        assert_eq!(create_key(&ts, &token, i).await.status(), 201);
        created += 1;
    }

    let filler = fill(&mnt);
    let mut refused = None;
    for i in 0..200 {
        let r = create_key(&ts, &token, 100 + i).await;
        match r.status().as_u16() {
            201 => created += 1,
            503 => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let refused = refused.expect("a full disk refuses appends");
    assert!(refused.headers().contains_key("retry-after"));
    common::expect_error(refused, 503, "SERVICE_UNAVAILABLE").await;
    // Nothing half-written is visible: exactly the acknowledged keys exist.
    assert_eq!(key_count(&ts, &token).await, created);

    // Space returns: appends work again and the chain verifies.
    std::fs::remove_file(filler).unwrap();
    assert!(
        recovers(&ts, &token, 1000).await,
        "appends succeed again once space returns"
    );
    created += 1;
    // A refused append was not acknowledged, but like any failed fsync its outcome is
    // unknown: the journal may still hold it. Either way the projection agrees with the log.
    let listed = key_count(&ts, &token).await;
    assert!(
        listed == created || listed == created + 1,
        "{listed} keys, {created} acknowledged"
    );
    let logged = ts.events(&token, "api_key.created").await;
    assert_eq!(logged.len(), listed, "projection == log");
    assert_chain_verifies(&ts, &token).await;
    ts.stop().await;
}

/// The writer builds the next group while the last one syncs: when a commit fails, the
/// group built on it is refused too, and nothing acknowledged or half-written shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_a_full_disk_are_201_or_503_and_the_log_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (_tmpfs, mnt, ts) = start_on_tmpfs(dir.path(), |c| {
        c.limits.requests_per_minute = 1_000_000;
        c.auth.max_keys_per_user = 100_000;
    })
    .await;
    let ts = std::sync::Arc::new(ts);
    let token = ts.admin_token().await;
    let filler = fill(&mnt);
    // 16 appenders until each has seen a refusal (or made 200 attempts).
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (ts, token) = (ts.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let (mut created, mut refused) = (0usize, 0usize);
            for i in 0..200 {
                let r = create_key(&ts, &token, t * 1000 + i).await;
                match r.status().as_u16() {
                    201 => created += 1,
                    503 => {
                        common::expect_error(r, 503, "SERVICE_UNAVAILABLE").await;
                        refused += 1;
                        break;
                    }
                    s => panic!("unexpected status {s}"),
                }
            }
            (created, refused)
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (c, r) = t.await.unwrap();
        created += c;
        refused += r;
    }
    assert!(refused > 0, "a full disk refuses appends");
    std::fs::remove_file(filler).unwrap();
    assert!(
        recovers(&ts, &token, 100_000).await,
        "appends succeed again once space returns"
    );
    created += 1;
    // Every acknowledged key is there; of the refused ones, only those whose own commit
    // failed may be (a failed fsync's outcome is unknown), never one refused unwritten.
    let listed = ts.events(&token, "api_key.created").await.len();
    assert!(
        listed >= created && listed <= created + refused,
        "{listed} keys logged, {created} acknowledged, {refused} refused"
    );
    assert_eq!(key_count(&ts, &token).await, listed, "projection == log");
    assert_chain_verifies(&ts, &token).await;
}
