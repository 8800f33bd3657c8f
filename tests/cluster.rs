//! Cluster mode: `inferno serve` processes on one PostgreSQL database share one event log
//! (README, "Cluster mode"). Each test makes a fresh database on the PostgreSQL server at
//! `INFERNO_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`, which
//! `ops/postgres.sh` starts when none answers) and drops it at the end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sqlx::Connection;

const JWT_SECRET: &str = "cluster-test-secret-cluster-test-secret-0123";

fn postgres_server() -> String {
    std::env::var("INFERNO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own for one test, dropped with it.
struct Database {
    name: String,
    url: String,
}

impl Database {
    async fn fresh() -> Database {
        let name = format!("inferno_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server()))
            .await
            .expect("connect to PostgreSQL (ops/postgres.sh starts one)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let url = format!("{}/{name}", postgres_server());
        Database { name, url }
    }

    async fn query_i64(&self, sql: &'static str) -> i64 {
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(format!("{}/postgres", postgres_server()))
            .args(["-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn cluster_env<'a>(db: &'a Database, node: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("INFERNO_STORAGE__BACKEND", "postgres"),
        ("INFERNO_STORAGE__URL", db.url.as_str()),
        ("INFERNO_CLUSTER__NODE_ID", node),
        ("INFERNO_AUTH__JWT_SECRET", JWT_SECRET),
    ]
}

async fn node(db: &Database, dir: &tempfile::TempDir, name: &str) -> Spawned {
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).unwrap();
    spawn_server(&data, &cluster_env(db, name)).await
}

async fn ready_node(client: &reqwest::Client, n: &Spawned) -> String {
    let r = n.public_json(client, "/ready").await;
    assert_eq!(r["status"], "ready", "{r}");
    r["node"].as_str().unwrap().to_string()
}

async fn create_user(client: &reqwest::Client, n: &Spawned, admin: &str, name: &str) -> String {
    let password = format!("{name}-password-1234");
    leak::secret("password", &password);
    let r = client
        .post(n.at("/api/v1/users"))
        .bearer_auth(admin)
        .json(&json!({"username": name, "password": password, "role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "create user {name}: {}",
        r.text().await.unwrap()
    );
    password
}

async fn login(
    client: &reqwest::Client,
    n: &Spawned,
    name: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(n.at("/api/v1/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn me_status(client: &reqwest::Client, n: &Spawned, key: &str) -> u16 {
    client
        .get(n.at("/api/v1/auth/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn export(data_dir: &std::path::Path) -> Vec<u8> {
    let out = run_cli(&["audit", "export", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn verify(data_dir: &std::path::Path) {
    let out = run_cli(&["audit", "verify", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "verify {}: {}{}",
        data_dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `inferno serve` as cluster node `name` on `data_dir`, which must fail to start
/// (`why` otherwise); its stderr.
fn refused_start(data_dir: &std::path::Path, db: &Database, name: &str, why: &str) -> String {
    let out = std::process::Command::new(inferno_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(cluster_env(db, name))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{why}: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_log() {
    let db = Database::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // The first node makes the schema and the bootstrap admin; the others join it.
    let n1 = node(&db, &dir, "n1").await;
    let n2 = node(&db, &dir, "n2").await;
    let n3 = node(&db, &dir, "n3").await;
    for (n, name) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        assert_eq!(ready_node(&client, n).await, name);
    }
    let admin = n1.admin_token(&client).await;
    // Each node lists its own worker, named after it.
    let queue = n2.get_json(&client, &admin, "/api/v1/queue").await;
    let workers = queue["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("{queue}"));
    assert!(
        !workers.is_empty() && workers.iter().all(|w| w["node"] == "n2"),
        "{queue}"
    );

    // A user created on node 1 logs in on node 3 at once.
    let password = create_user(&client, &n1, &admin, "alice").await;
    let r = login(&client, &n3, "alice", &password).await;
    assert_eq!(r.status(), 200, "alice on n3: {}", r.text().await.unwrap());
    let alice: Value = r.json().await.unwrap();
    leak::secret("jwt", alice["token"].as_str().unwrap());

    // A key created on node 2 works on node 1 at once; revoked on node 2, node 1 refuses
    // it within a second.
    let r = client
        .post(n2.at("/api/v1/auth/api-keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "cluster", "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    leak::secret("api_key", &key);
    assert_eq!(
        me_status(&client, &n1, &key).await,
        200,
        "a key made on n2, used on n1"
    );
    let r = client
        .delete(n2.at(&format!(
            "/api/v1/auth/api-keys/{}",
            created["id"].as_str().unwrap()
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "revoke: {}", r.status());
    let revoked = Instant::now();
    let mut refused = None;
    while revoked.elapsed() < Duration::from_secs(1) {
        if me_status(&client, &n1, &key).await == 401 {
            refused = Some(revoked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("node 1 still accepts a key revoked on node 2 after 1 s");
    println!("revocation reached node 1 after {refused:?}");

    // A setting changed on node 1 is in force on node 3 within a second.
    let r = client
        .patch(n1.at("/api/v1/config"))
        .bearer_auth(&admin)
        .json(&json!({"limits": {"max_prompt_chars": 4321}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let changed = Instant::now();
    let setting = |v: &Value| {
        v["settings"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["key"] == "limits.max_prompt_chars"))
            .map(|s| (s["value"].clone(), s["source"].clone()))
    };
    let mut seen = None;
    while changed.elapsed() < Duration::from_secs(1) {
        let v = n3.get_json(&client, &admin, "/api/v1/config").await;
        if setting(&v).is_some_and(|(value, _)| value == 4321) {
            seen = setting(&v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, source) = seen.expect("node 3 still has the old setting after 1 s");
    assert_eq!(source, "runtime");

    // Appends from every node at once: each lands exactly once, in one gap-free chain.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let n = [&n1, &n2, &n3][i % 3];
        let (client, url, admin) = (client.clone(), n.url.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            let password = format!("user-{i}-password-1234");
            let r = client
                .post(format!("{url}/api/v1/users"))
                .bearer_auth(&admin)
                .json(
                    &json!({"username": format!("user{i}"), "password": password, "role": "user"}),
                )
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let users = db
        .query_i64(
            "SELECT count(*) FROM inferno.events \
             WHERE convert_from(stored, 'UTF8')::jsonb->>'type' = 'user.created'",
        )
        .await;
    // One bootstrap admin (the joining nodes found it), alice and 30 more, each once.
    assert_eq!(users, 32);
    let nodes = db
        .query_i64("SELECT count(DISTINCT node) FROM inferno.events")
        .await;
    assert_eq!(nodes, 3, "every node appended");
    let head = db.query_i64("SELECT seq FROM inferno.log_head").await;
    let (max, count) = (
        db.query_i64("SELECT max(seq) FROM inferno.events").await,
        db.query_i64("SELECT count(*) FROM inferno.events").await,
    );
    assert_eq!((max, count), (head, head), "gap-free up to the head");

    // Every node sees every user (after its read barrier, at once).
    for n in [&n1, &n2, &n3] {
        let r = login(&client, n, "user29", "user-29-password-1234").await;
        assert_eq!(r.status(), 200);
    }
    // The same log, byte for byte, in every node's copy; each verifies.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dirs: Vec<_> = [&n1, &n2, &n3].iter().map(|n| n.data_dir.clone()).collect();
    for n in [n1, n2, n3] {
        assert!(n.terminate().success());
    }
    let exports: Vec<Vec<u8>> = dirs.iter().map(|d| export(d)).collect();
    assert!(exports[0].len() > 1000);
    assert_eq!(exports[0], exports[1], "n1 and n2 hold the same log");
    assert_eq!(exports[0], exports[2], "n1 and n3 hold the same log");
    assert_eq!(
        exports[0].iter().filter(|b| **b == b'\n').count() as i64,
        db.query_i64("SELECT seq FROM inferno.log_head").await
    );
    dirs.iter().for_each(|d| verify(d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_data_dir_seeds_an_empty_cluster() {
    let db = Database::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // One machine, then the same data dir as the first node of a cluster.
    let first = dir.path().join("first");
    let solo = spawn_server(&first, &[("INFERNO_AUTH__JWT_SECRET", JWT_SECRET)]).await;
    let admin = solo.admin_token(&client).await;
    let password = create_user(&client, &solo, &admin, "bob").await;
    assert!(solo.terminate().success());
    let before = export(&first);

    let n1 = spawn_server(&first, &cluster_env(&db, "n1")).await;
    let n2 = node(&db, &dir, "n2").await;
    let r = login(&client, &n2, "bob", &password).await;
    assert_eq!(r.status(), 200, "bob's password hash came with the seed");
    let seeded = db.query_i64("SELECT count(*) FROM inferno.events").await;
    assert!(seeded as usize >= before.iter().filter(|b| **b == b'\n').count());
    let n2_dir = n2.data_dir.clone();
    assert!(n2.terminate().success());
    assert!(n1.terminate().success());
    let (a, b) = (export(&first), export(&n2_dir));
    assert!(
        a.starts_with(&before),
        "the seeded log is the old one, extended"
    );
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_log_is_refused() {
    let db = Database::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let n1 = node(&db, &dir, "n1").await;
    // A data dir with a log of its own (another admin, another chain).
    let other = dir.path().join("other");
    let solo = spawn_server(&other, &[]).await;
    assert!(solo.terminate().success());
    let stderr = refused_start(&other, &db, "n2", "started on a foreign log");
    assert!(
        stderr.contains("start this node with an empty data dir"),
        "the error says what to do: {stderr}"
    );
    assert!(!stderr.contains(&db.url), "the URL is not shown");
    assert!(n1.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_changed_in_postgres_is_refused() {
    let db = Database::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let n1 = node(&db, &dir, "n1").await;
    let n2 = node(&db, &dir, "n2").await;
    let n2_dir = n2.data_dir.clone();
    assert!(n2.terminate().success());
    // While node 2 is down, node 1 appends; then someone with write access to the
    // database changes one of those events (a role, in place).
    let admin = n1.admin_token(&client).await;
    create_user(&client, &n1, &admin, "mallory").await;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let changed = sqlx::query_scalar::<_, i64>(
        "UPDATE inferno.events \
         SET stored = convert_to(replace(convert_from(stored, 'UTF8'), '\"role\":\"user\"', '\"role\":\"admin\"'), 'UTF8') \
         WHERE convert_from(stored, 'UTF8') LIKE '%\"username\":\"mallory\"%' RETURNING seq",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    // Node 2 checks every event it takes: it refuses to start on the changed one.
    let stderr = refused_start(&n2_dir, &db, "n2", "node 2 took a changed event");
    assert!(
        stderr.contains(&format!("seq {changed}")) && stderr.contains("hash does not match"),
        "the error names the event: {stderr}"
    );
    assert!(n1.terminate().success());
}

/// A TCP proxy to the PostgreSQL server that can be cut (every connection dropped, the port
/// refusing) and restored on the same port: PostgreSQL going away, for one node only.
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = postgres_server();
        let upstream = upstream.rsplit('@').next().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Proxy {
            port,
            task: Some(task),
        }
    }

    /// Drops every proxied connection and stops listening.
    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_refuses_writes_and_serves_reads() {
    let db = Database::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut proxy = Proxy::start(0).await;
    let url = db.url.replace(
        postgres_server().rsplit('@').next().unwrap(),
        &format!("127.0.0.1:{}", proxy.port),
    );
    let data = dir.path().join("n1");
    let mut env = cluster_env(&db, "n1");
    env[1] = ("INFERNO_STORAGE__URL", url.as_str());
    let n1 = spawn_server(&data, &env).await;
    let admin = n1.admin_token(&client).await;
    create_user(&client, &n1, &admin, "before").await;

    proxy.cut().await;
    // A mutation: 503 in the documented error body, naming the shared log.
    let r = client
        .post(n1.at("/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "during", "password": "during-password-1234", "role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shared event log"),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&url),
        "no URL in the error: {body}"
    );
    // Reads from the node's copy go on, authenticated by a known credential.
    let users = n1.get_json(&client, &admin, "/api/v1/users").await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{users}"))
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert!(
        names.contains(&"before") && !names.contains(&"during"),
        "{names:?}"
    );

    // PostgreSQL back (same port): writes work again, with nothing lost or doubled.
    let _proxy = Proxy::start(proxy.port).await;
    let mut created = false;
    for _ in 0..100 {
        let r = client
            .post(n1.at("/api/v1/users"))
            .bearer_auth(&admin)
            .json(&json!({"username": "after", "password": "after-password-1234", "role": "user"}))
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            created = true;
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created, "writes did not come back with PostgreSQL");
    let created_events = db
        .query_i64(
            "SELECT count(*) FROM inferno.events \
             WHERE convert_from(stored, 'UTF8')::jsonb->>'type' = 'user.created'",
        )
        .await;
    assert_eq!(
        created_events, 3,
        "admin, before, after: once each, never during"
    );
    assert!(n1.terminate().success());
    verify(&data);
}
