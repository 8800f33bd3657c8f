//! What an outside auditor does, through the API and the CLI: fetch and check signed
//! checkpoints and proofs, verify an export offline, catch a rewritten history with a
//! checkpoint kept before it, and ask what a key could do at a point of the log.

mod common;

use std::path::Path;

use common::rfc6962::*;
use common::run_cli;
use serde_json::{json, Value};

fn hex32(v: &Value) -> H {
    hex::decode(v.as_str().expect("hex string"))
        .unwrap()
        .try_into()
        .unwrap()
}

fn path_of(v: &Value) -> Vec<H> {
    v["path"].as_array().unwrap().iter().map(hex32).collect()
}

/// `(size, root)` of a checkpoint note (the C2SP text: origin, size, base64 root).
fn note_fields(note: &str) -> (u64, H) {
    use base64::Engine;
    let mut lines = note.lines();
    lines.next().expect("origin");
    let size = lines.next().unwrap().parse().unwrap();
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap())
        .unwrap();
    (size, root.try_into().unwrap())
}

async fn get_text(ts: &common::TestServer, token: &str, path: &str) -> (u16, String) {
    let r = ts
        .client
        .get(ts.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn checkpoints_and_proofs_through_the_api() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    let (_, vkey) = get_text(&ts, &admin, "/api/v1/audit/public-key").await;
    let (status, note) = get_text(&ts, &admin, "/api/v1/audit/checkpoint").await;
    assert_eq!(status, 200, "{note}");
    let cp = inferno::audit::checkpoint::verify_checkpoint(&note, vkey.trim()).expect("verifies");
    let (size, root) = note_fields(&note);
    assert_eq!((cp.size, cp.root.0), (size, root));
    // Nothing happened since: the same checkpoint, not a new one.
    let (_, again) = get_text(&ts, &admin, "/api/v1/audit/checkpoint").await;
    assert_eq!(again, note);
    // Another key does not verify it.
    let (_, other) = inferno::audit::checkpoint::generate_key(&cp.origin).unwrap();
    assert!(inferno::audit::checkpoint::verify_checkpoint(&note, &other).is_err());

    // The root is the one of the exported events, computed here.
    let export = ts
        .client
        .get(ts.at("/api/v1/audit/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let leaves: Vec<H> = export
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(leaf)
        .collect();
    assert_eq!(mth(&leaves[..size as usize]), root);

    // More events, a newer checkpoint, and the proofs between them.
    ts.user_with("carol", "user", &[]).await;
    let (_, newer) = get_text(&ts, &admin, "/api/v1/audit/checkpoint").await;
    let (size2, root2) = note_fields(&newer);
    assert!(size2 > size, "{size2} > {size}");
    let p = ts
        .get_json(
            &admin,
            &format!("/api/v1/audit/proof/consistency?from={size}&to={size2}"),
        )
        .await;
    assert!(
        verify_consistency(size, size2, &root, &root2, &path_of(&p)),
        "{p}"
    );
    for seq in [1, size, size2] {
        let p = ts
            .get_json(
                &admin,
                &format!("/api/v1/audit/proof/inclusion?seq={seq}&tree_size={size2}"),
            )
            .await;
        let l = hex32(&p["leaf_hash"]);
        assert!(
            verify_inclusion(seq - 1, size2, &l, &path_of(&p), &root2),
            "{p}"
        );
    }
    // Without tree_size: the latest checkpoint's.
    let p = ts
        .get_json(&admin, "/api/v1/audit/proof/inclusion?seq=1")
        .await;
    assert_eq!(p["tree_size"], size2);

    let page = ts.get_json(&admin, "/api/v1/audit/checkpoints").await;
    let listed: Vec<u64> = page["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tree_size"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![size2, size]);
    assert_eq!(page["checkpoints"][0]["note"], newer.as_str());
    let page = ts
        .get_json(&admin, "/api/v1/audit/checkpoints?limit=1")
        .await;
    let cursor = page["next_cursor"].as_u64().expect("another page");
    let page = ts
        .get_json(
            &admin,
            &format!("/api/v1/audit/checkpoints?limit=1&cursor={cursor}"),
        )
        .await;
    assert_eq!(page["checkpoints"][0]["tree_size"], size);

    for bad in [
        "/api/v1/audit/proof/inclusion?seq=0",
        &format!(
            "/api/v1/audit/proof/inclusion?seq={}&tree_size={size}",
            size + 1
        ),
        "/api/v1/audit/proof/inclusion?seq=1&tree_size=999999",
        &format!("/api/v1/audit/proof/consistency?from={size2}&to={size}"),
        "/api/v1/audit/proof/consistency?from=0",
        "/api/v1/audit/state?at=yesterday",
    ] {
        let r = ts
            .client
            .get(ts.at(bad))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        common::expect_error(r, 400, "VALIDATION_ERROR").await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// `inferno audit verify-export FILE --checkpoint CP --public-key KEY`.
fn verify_export_args<'a>(file: &'a str, cp: &'a str, key: &'a str) -> [&'a str; 7] {
    [
        "audit",
        "verify-export",
        file,
        "--checkpoint",
        cp,
        "--public-key",
        key,
    ]
}

fn cli_ok(args: &[&str]) -> String {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "inferno {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_err(args: &[&str]) -> String {
    let out = run_cli(args);
    assert!(!out.status.success(), "inferno {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn verify_export_and_state_at_offline() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    let (uid, dave) = ts.user_with("dave", "user", &[]).await;
    let (key_id, _) = ts.api_key(&dave, &["run_inference", "read_models"]).await;
    // Dave becomes an operator: his key can no longer run inference.
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{uid}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "operator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let changed = ts.events(&admin, "user.updated").await;
    let change_seq = changed.last().unwrap()["seq"].as_u64().unwrap();
    let (_, vkey) = get_text(&ts, &admin, "/api/v1/audit/public-key").await;
    // One checkpoint signed while serving, which the export records.
    let (_, served) = get_text(&ts, &admin, "/api/v1/audit/checkpoint").await;
    let served_size = note_fields(&served).0;
    // The API answers the point-in-time question too.
    let before = ts
        .get_json(
            &admin,
            &format!("/api/v1/audit/state?at={}", change_seq - 1),
        )
        .await;
    let key = |s: &Value| -> Value {
        s["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .cloned()
            .expect("the key")
    };
    assert_eq!(
        key(&before)["effective_permissions"],
        json!(["read_models", "run_inference"])
    );
    let data = ts.data_dir();
    let tmp = ts.stop().await;
    let d = data.to_string_lossy().into_owned();

    // The CLI, on the stopped data dir: before and after the change.
    let at = |seq: u64| -> Value {
        serde_json::from_str(&cli_ok(&[
            "audit",
            "state",
            "--data-dir",
            &d,
            "--at",
            &seq.to_string(),
        ]))
        .unwrap()
    };
    assert_eq!(
        key(&at(change_seq - 1))["effective_permissions"],
        json!(["read_models", "run_inference"])
    );
    assert_eq!(
        key(&at(change_seq))["effective_permissions"],
        json!(["read_models"])
    );
    assert_eq!(
        key(&at(change_seq))["permissions"],
        json!(["read_models", "run_inference"])
    );
    let users = at(change_seq)["users"].clone();
    assert!(users
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["username"] == "dave" && u["role"] == "operator"));

    // An export, the checkpoint signed at shutdown, the key: verified with nothing else.
    let export = cli_ok(&["audit", "export", "--data-dir", &d]);
    let note = cli_ok(&["audit", "checkpoint", "--data-dir", &d]);
    let dir = tmp.path();
    let cp = write(dir, "cp.txt", &note);
    let key_file = write(dir, "key.pub", &vkey);
    let file = write(dir, "export.ndjson", &export);
    let report: Value =
        serde_json::from_str(&cli_ok(&verify_export_args(&file, &cp, &key_file))).unwrap();
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(report["events"], lines.len());
    assert_eq!(report["recorded_checkpoints"], 1, "{report}");
    // Nothing but its own record came after the one signed while serving: the stopped data
    // dir gives that one back, unsigned again.
    assert_eq!(note, served);
    assert_eq!(report["tree_size"], served_size);
    // The state over the export equals the state over the data dir.
    let from_export: Value = serde_json::from_str(&cli_ok(&[
        "audit",
        "state",
        "--export",
        &file,
        "--at",
        &change_seq.to_string(),
    ]))
    .unwrap();
    assert_eq!(from_export, at(change_seq));

    let verify = |lines: &[String]| -> String {
        let f = write(dir, "bad.ndjson", &(lines.join("\n") + "\n"));
        cli_err(&verify_export_args(&f, &cp, &key_file))
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    // A changed event.
    let mut changed = owned.clone();
    changed[4] = changed[4].replacen("\"type\":\"", "\"type\":\"x", 1);
    assert!(verify(&changed).contains("seq 5"), "{}", verify(&changed));
    // A removed event.
    let mut removed = owned.clone();
    removed.remove(6);
    assert!(verify(&removed).contains("seq 7"), "{}", verify(&removed));
    // Two events swapped.
    let mut swapped = owned.clone();
    swapped.swap(2, 3);
    assert!(verify(&swapped).contains("seq 3"), "{}", verify(&swapped));
    // An inserted event (a copy).
    let mut inserted = owned.clone();
    inserted.insert(8, owned[7].clone());
    assert!(verify(&inserted).contains("seq 9"), "{}", verify(&inserted));
    // Another key.
    let (_, other) = inferno::audit::checkpoint::generate_key("inferno/other").unwrap();
    let other = write(dir, "other.pub", &other);
    let err = cli_err(&verify_export_args(&file, &cp, &other));
    assert!(err.contains("signature"), "{err}");
}

/// `inferno <args>` with the API key in the environment.
fn cli_with_key(args: &[&str], key: &str) -> std::process::Output {
    std::process::Command::new(common::inferno_bin())
        .args(args)
        .env("INFERNO_API_KEY", key)
        .output()
        .expect("run inferno")
}

/// The stored form of an envelope (the layout the server writes), from its JSON.
fn stored_form(v: &Value) -> Vec<u8> {
    let mut payload = String::new();
    canonical(&v["payload"], &mut payload);
    let s = |k: &str| serde_json::to_string(&v[k]).unwrap();
    format!(
        "{{\"seq\":{},\"id\":{},\"ts\":{},\"type\":{},\"version\":{},\"actor\":{{\"kind\":{},\"id\":{}}},\
         \"request_id\":{},\"client_ip\":{},\"payload\":{payload},\"prev_hash\":{},\"hash\":{}}}",
        v["seq"], s("id"), s("ts"), s("type"), v["version"],
        serde_json::to_string(&v["actor"]["kind"]).unwrap(),
        serde_json::to_string(&v["actor"]["id"]).unwrap(),
        s("request_id"), s("client_ip"), s("prev_hash"), s("hash"),
    )
    .into_bytes()
}

/// The log's database opened directly, as anyone with write access to the data dir can.
fn raw_keyspace(data: &Path, name: &str) -> (fjall::Database, fjall::Keyspace) {
    let db = fjall::Database::builder(data.join("log")).open().unwrap();
    let ks = db
        .keyspace(name, fjall::KeyspaceCreateOptions::default)
        .unwrap();
    (db, ks)
}

/// What an attacker with write access to the data dir does: edits event `from` and
/// recomputes the hash chain of it and every later event, so the chain verifies again.
fn rewrite_history(data: &Path, from: u64, edit: impl Fn(&mut Value)) {
    let (db, events) = raw_keyspace(data, "events");
    let mut prev: String = {
        let v: Value =
            serde_json::from_slice(&events.get((from - 1).to_be_bytes()).unwrap().unwrap())
                .unwrap();
        v["hash"].as_str().unwrap().to_string()
    };
    let mut seq = from;
    while let Some(bytes) = events.get(seq.to_be_bytes()).unwrap() {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        if seq == from {
            edit(&mut v);
        }
        v["prev_hash"] = json!(prev);
        let hash = hex::encode(sha(&[
            prev.as_bytes(),
            canonical_of_line(&serde_json::to_vec(&v).unwrap()).as_bytes(),
        ]));
        v["hash"] = json!(hash);
        events.insert(seq.to_be_bytes(), stored_form(&v)).unwrap();
        prev = hash;
        seq += 1;
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// The attacker also drops the Merkle tree, which the server then builds again from the
/// rewritten events: tree and chain agree, and only an outside checkpoint can tell.
fn drop_tree(data: &Path) {
    let (db, merkle) = raw_keyspace(data, "merkle");
    let keys: Vec<_> = merkle.iter().map(|g| g.key().unwrap().to_vec()).collect();
    for k in keys {
        merkle.remove(k).unwrap();
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

fn verify_report(d: &str) -> Value {
    let out = run_cli(&["audit", "verify", "--data-dir", d]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)))
}

// The CLI blocks while the in-process server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_history_is_caught_by_a_checkpoint_kept_before_it() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    ts.user_with("mallory", "admin", &[]).await;
    let created = ts.events(&admin, "user.created").await;
    let mallory_seq = created
        .iter()
        .find(|e| e["payload"]["username"] == "mallory")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let (_, key) = ts.api_key(&admin, &["view_audit_logs"]).await;
    let (_, vkey) = get_text(&ts, &admin, "/api/v1/audit/public-key").await;
    let (_, kept) = get_text(&ts, &admin, "/api/v1/audit/checkpoint").await;
    ts.user_with("erin", "user", &[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let kept = write(tmp.path(), "kept.txt", &kept);
    let vkey = write(tmp.path(), "key.pub", &vkey);
    let check = |url: &str| {
        cli_with_key(
            &[
                "audit",
                "verify-consistency",
                "--old",
                &kept,
                "--public-key",
                &vkey,
                "--url",
                url,
            ],
            &key,
        )
    };
    let out = check(&ts.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (cfg, data) = (ts.cfg.clone(), ts.data_dir());
    let dir = ts.stop().await;
    let d = data.to_string_lossy().into_owned();
    assert_eq!(verify_report(&d)["ok"], true);
    // Mallory was never an admin, says the rewritten log; its chain verifies again...
    rewrite_history(&data, mallory_seq, |env| {
        env["payload"]["role"] = json!("user")
    });
    // ...but not against the tree left behind.
    let report = verify_report(&d);
    assert_eq!(report["first_bad_seq"], mallory_seq, "{report}");
    assert_eq!(report["first_bad_reason"], "tree leaf mismatch");
    drop_tree(&data);
    let ts = common::start_config(cfg, dir).await;
    let after = ts.data_dir();
    assert_eq!(after, data);
    ts.user_with("frank", "user", &[]).await;
    // Everything on the machine agrees with itself now.
    let admin = ts.admin_token().await;
    let v = ts.get_json(&admin, "/api/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    // The checkpoint the auditor kept does not.
    let out = check(&ts.url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rewritten"), "{err}");
    ts.stop().await;
}
