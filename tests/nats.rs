//! NATS publishing against real nats-servers: job lifecycle events and tokens on the
//! machine's server (127.0.0.1:4222, or `INFERNO_TEST_NATS_URL`), the JetStream copy of the
//! log across a NATS outage and an Inferno restart on a nats-server of the test's own, and
//! a server that starts and serves with NATS unreachable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, TEST_MODEL_ID as MODEL};
use futures::StreamExt;
use inferno::config::{Config, NatsConfig, Secret};
use serde_json::{json, Value};

/// The machine's NATS server (ops/test.sh makes sure one answers).
fn shared_nats_url() -> String {
    std::env::var("INFERNO_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn nats_config(url: &str, events: bool) -> NatsConfig {
    NatsConfig {
        url: Secret::new(url),
        credentials: None,
        token: None,
        events,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nats-server` (the Debian package), or `NATS_SERVER_BIN`.
fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return p.into();
    }
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "nats-server".into()
}

/// A nats-server of this test's own, with JetStream in `store`.
struct OwnNats {
    child: Child,
    port: u16,
}

impl OwnNats {
    async fn start(port: u16, store: &Path) -> OwnNats {
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server, or ops/test.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        OwnNats { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nats` object of `GET /api/v1/queue`.
async fn nats_status(ts: &TestServer, token: &str) -> Value {
    ts.get_json(token, "/api/v1/queue").await["nats"].clone()
}

/// Polls the queue overview until `pred` holds for its `nats` object (`secs` at most).
async fn wait_status(ts: &TestServer, token: &str, secs: u64, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = nats_status(ts, token).await;
        if pred(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "NATS status never matched: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_key(ts: &TestServer, token: &str, name: &str) {
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": name, "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create key {name}");
}

async fn create_user(ts: &TestServer, token: &str, name: &str) {
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .bearer_auth(token)
        .json(
            &json!({"username": name, "password": format!("{name}-password-1234"), "role": "user"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create user {name}");
}

async fn assert_healthy(ts: &TestServer) {
    for path in ["/health", "/ready"] {
        let r = ts.client.get(ts.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// Asserts that the stream holds exactly the log's events `1..=head`, in order, each once,
/// byte for byte as the export writes them; returns `head`.
async fn assert_stream_is_the_log(ts: &TestServer, nats_url: &str) -> u64 {
    assert_stream_holds(ts, nats_url, 1, Duration::from_secs(120)).await
}

/// As [`assert_stream_is_the_log`] for the events from `first` on (an older part purged),
/// in a stream with this duplicate window.
async fn assert_stream_holds(ts: &TestServer, nats_url: &str, first: u64, window: Duration) -> u64 {
    let head = ts.state().store().head().0;
    let log = ts.state().store().export_after(first - 1, 100_000).unwrap();
    assert_eq!(log.len() as u64, head + 1 - first);
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("INFERNO_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.subjects, vec!["inferno.events.>".to_string()]);
    assert_eq!(info.config.duplicate_window, window);
    assert_eq!(
        (
            info.state.messages,
            info.state.first_sequence,
            info.state.last_sequence
        ),
        (head + 1 - first, first, head),
        "the stream holds every event once"
    );
    for (i, ev) in log.iter().enumerate() {
        let msg = stream.get_raw_message(first + i as u64).await.unwrap();
        let id = msg
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string());
        assert_eq!(
            id,
            Some(ev.seq.to_string()),
            "message {} is event {}",
            i + 1,
            ev.seq
        );
        assert_eq!(
            msg.subject.as_str(),
            format!("inferno.events.{}", ev.event_type)
        );
        assert_eq!(msg.payload.as_ref(), ev.line.as_slice(), "event {}", ev.seq);
    }
    head
}

#[tokio::test]
async fn jetstream_holds_every_event_once_in_order_across_an_outage_and_a_restart() {
    let nats_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = OwnNats::start(port, nats_dir.path()).await;
    let url = nats.url();
    let ts = common::start_with(|c: &mut Config| {
        c.nats = Some(nats_config(&url, true));
        c.limits.requests_per_minute = 100_000;
    })
    .await;
    let admin = ts.admin_token().await;
    for i in 0..5 {
        create_key(&ts, &admin, &format!("before-{i}")).await;
    }
    create_user(&ts, &admin, "before_outage").await;
    let head = ts.state().store().head().0;
    wait_status(&ts, &admin, 30, |s| {
        s["connected"] == true && s["jetstream"]["acked_seq"].as_u64() >= Some(head)
    })
    .await;
    assert_stream_is_the_log(&ts, &url).await;

    // NATS goes away while events are being committed (and published): the server
    // serves on, and shows the outage.
    let writer = {
        let (client, url, admin) = (ts.client.clone(), ts.url.clone(), admin.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                let r = client
                    .post(format!("{url}/api/v1/auth/api-keys"))
                    .bearer_auth(&admin)
                    .json(&json!({"name": format!("across-{i}"), "permissions": ["read_models"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    nats.kill();
    writer.await.unwrap();
    wait_status(&ts, &admin, 15, |s| s["connected"] == false).await;
    for i in 0..5 {
        create_key(&ts, &admin, &format!("during-{i}")).await;
    }
    create_user(&ts, &admin, "during_outage").await;
    assert_healthy(&ts).await;
    let s = nats_status(&ts, &admin).await;
    assert_eq!(s["configured"], true);
    assert_eq!(s["connected"], false, "{s}");
    assert!(s["jetstream"]["lag"].as_u64().unwrap() >= 6, "{s}");

    // Back on the same port and store: the follower resumes where the stream stopped.
    let nats = OwnNats::start(port, nats_dir.path()).await;
    let head = ts.state().store().head().0;
    wait_status(&ts, &admin, 60, |s| {
        s["connected"] == true && s["jetstream"]["acked_seq"].as_u64() >= Some(head)
    })
    .await;
    let before_restart = assert_stream_is_the_log(&ts, &url).await;

    // An Inferno restart resumes without duplicates.
    let ts = ts.restart().await;
    let admin = ts.admin_token().await;
    create_key(&ts, &admin, "after-restart").await;
    let head = ts.state().store().head().0;
    assert!(head > before_restart);
    wait_status(&ts, &admin, 30, |s| {
        s["connected"] == true
            && s["jetstream"]["acked_seq"].as_u64() >= Some(head)
            && s["jetstream"]["lag"].as_u64().is_some()
    })
    .await;
    assert_stream_is_the_log(&ts, &url).await;
    ts.stop().await;
    drop(nats);
}

/// After a restart the follower resumes after the stream's last message, not after a
/// stale cursor: here the cursor is lost and the duplicate window (set short by the test)
/// has passed, so a resend would be a duplicate. A purged stream continues from the cursor.
#[tokio::test]
async fn resuming_trusts_the_stream_over_a_stale_cursor() {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = OwnNats::start(free_port(), nats_dir.path()).await;
    let url = nats.url();
    let window = Duration::from_millis(200);
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "INFERNO_EVENTS".into(),
        subjects: vec!["inferno.events.>".into()],
        duplicate_window: window,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir);
    cfg.nats = Some(nats_config(&url, true));
    let ts = common::start_config(cfg.clone(), dir).await;
    let admin = ts.admin_token().await;
    create_key(&ts, &admin, "one").await;
    let head = ts.state().store().head().0;
    wait_status(&ts, &admin, 30, |s| {
        s["jetstream"]["acked_seq"].as_u64() >= Some(head)
    })
    .await;
    assert_stream_holds(&ts, &url, 1, window).await;

    // The cursor is lost while the server is down, for longer than the window.
    let dir = ts.stop().await;
    let store = inferno::events::EventStore::open(
        &dir.path().join("data"),
        inferno::events::default_projections(),
        Default::default(),
    )
    .unwrap();
    store
        .side_delete(inferno::nats::CURSOR_KEYSPACE, inferno::nats::CURSOR_KEY)
        .unwrap();
    store.shutdown().await;
    tokio::time::sleep(window * 2).await;
    let ts = common::start_config(cfg.clone(), dir).await;
    let admin = ts.admin_token().await;
    create_key(&ts, &admin, "two").await;
    let head = ts.state().store().head().0;
    wait_status(&ts, &admin, 30, |s| {
        s["jetstream"]["acked_seq"].as_u64() >= Some(head)
    })
    .await;
    assert_stream_holds(&ts, &url, 1, window).await;

    // Purged: what comes next follows the cursor; the purged events are not sent again.
    let mut stream = js.get_stream("INFERNO_EVENTS").await.unwrap();
    stream.purge().await.unwrap();
    let dir = ts.stop().await;
    let ts = common::start_config(cfg.clone(), dir).await;
    let admin = ts.admin_token().await;
    create_key(&ts, &admin, "three").await;
    let head = ts.state().store().head().0;
    wait_status(&ts, &admin, 30, |s| {
        s["jetstream"]["acked_seq"].as_u64() >= Some(head)
    })
    .await;
    let purged_at = stream.info().await.unwrap().state.first_sequence;
    assert!(purged_at > 1);
    assert_stream_holds(&ts, &url, purged_at, window).await;
    ts.stop().await;
    drop(nats);
}

#[tokio::test]
async fn the_server_starts_and_serves_with_nats_unreachable() {
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let ts = common::start_with(|c: &mut Config| c.nats = Some(nats_config(&dead, true))).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "start waited for NATS"
    );
    assert_healthy(&ts).await;
    let admin = ts.admin_token().await;
    create_key(&ts, &admin, "no-nats").await;
    let s = nats_status(&ts, &admin).await;
    assert_eq!(s["configured"], true, "{s}");
    assert_eq!(s["connected"], false, "{s}");
    assert!(s["since"].is_string(), "{s}");
    assert_eq!(s["jetstream"]["stream"], "INFERNO_EVENTS");
    assert_eq!(s["jetstream"]["acked_seq"], 0);
    assert_eq!(
        s["jetstream"]["lag"].as_u64(),
        Some(ts.state().store().head().0)
    );
    // Shutting down does not wait for NATS either.
    let stopping = Instant::now();
    ts.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn without_nats_the_queue_overview_has_no_nats_object() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    let overview = ts.get_json(&admin, "/api/v1/queue").await;
    assert!(overview.get("nats").is_none(), "{overview}");
    assert!(ts.state().nats().is_none());
}

/// Subscribes and returns once the server routes to the subscription: `flush` only writes
/// the SUB, so a probe published on `probe` (which `subject` must match) comes back first.
async fn subscribe_ready(
    client: &async_nats::Client,
    subject: String,
    probe: String,
) -> async_nats::Subscriber {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.publish(probe.clone(), "probe".into()).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the probe comes back")
            .unwrap();
        if msg.subject.as_str() == probe {
            return sub;
        }
    }
}

#[tokio::test]
async fn tokens_reach_a_subscriber_in_order() {
    let url = shared_nats_url();
    let ts = common::start_with(|c: &mut Config| c.nats = Some(nats_config(&url, false))).await;
    let admin = ts.admin_token().await;
    wait_status(&ts, &admin, 15, |s| s["connected"] == true).await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let subject = format!("inferno.jobs.{job_id}.tokens");
    let mut sub = subscribe_ready(&client, subject.clone(), subject).await;
    let nats = ts.state().nats().expect("configured");
    for i in 0..100u64 {
        nats.publish_token(&job_id, i, &format!("tok{i} \"q\"\n"));
    }
    for i in 0..100u64 {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("token in time")
            .unwrap();
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(
            v,
            json!({"job_id": job_id, "index": i, "text": format!("tok{i} \"q\"\n")})
        );
    }
    let s = nats_status(&ts, &admin).await;
    assert!(s["tokens_published"].as_u64() >= Some(100), "{s}");
    assert_eq!(s["jetstream"], Value::Null, "events = false: {s}");
}

/// A server with the test model on the machine's NATS (core publishing only), once it is
/// connected; its admin token and a NATS client of the test's own.
async fn model_server_on_shared_nats() -> (TestServer, String, async_nats::Client) {
    let url = shared_nats_url();
    let ts = common::start_with(|c: &mut Config| {
        common::with_test_model(c);
        c.nats = Some(nats_config(&url, false));
    })
    .await;
    let admin = ts.admin_token().await;
    wait_status(&ts, &admin, 15, |s| s["connected"] == true).await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    (ts, admin, client)
}

#[tokio::test]
async fn lifecycle_events_of_a_job_reach_a_subscriber_in_order() {
    let (ts, admin, client) = model_server_on_shared_nats().await;
    // Every job's events; this job's are picked out by id (other servers may share NATS).
    let probe = format!("inferno.jobs.probe-{}.events", uuid::Uuid::new_v4());
    let mut sub = subscribe_ready(&client, "inferno.jobs.*.events".into(), probe).await;

    let job_id = ts
        .queue_job(
            &admin,
            &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}),
        )
        .await;

    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.last().map(|v| v["type"].clone()) != Some(json!("job.completed")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("job events so far: {got:?}"))
            .unwrap();
        if msg.subject.as_str() != format!("inferno.jobs.{job_id}.events") {
            continue;
        }
        got.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    let types: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job.queued", "job.started", "job.completed"]);
    let log = ts
        .events(&admin, "job.queued,job.started,job.completed")
        .await;
    let log: Vec<&Value> = log
        .iter()
        .filter(|e| e["payload"]["job_id"] == json!(job_id))
        .collect();
    assert_eq!(log.len(), 3);
    for (msg, ev) in got.iter().zip(&log) {
        assert_eq!(msg["job_id"], json!(job_id));
        assert_eq!(msg["seq"], ev["seq"], "{msg}");
        assert_eq!(msg["ts"], ev["ts"]);
        assert_eq!(msg["type"], ev["type"]);
        // The payload's fields, as the log has them.
        for (k, v) in ev["payload"].as_object().unwrap() {
            assert_eq!(&msg[k], v, "{k} of {}", ev["type"]);
        }
    }
    assert_eq!(got[0]["model"], MODEL);
    assert_eq!(got[1]["attempt"], 1);
    assert!(got[2]["completion_tokens"].as_u64().unwrap() >= 1);
    let s = nats_status(&ts, &admin).await;
    assert!(s["lifecycle_published"].as_u64() >= Some(3), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_generated_tokens_reach_a_subscriber_in_order() {
    let (ts, admin, client) = model_server_on_shared_nats().await;
    // Queued while paused, so the subscription is in place before the first token.
    let post = |path: &'static str| {
        ts.client
            .post(ts.at(path))
            .bearer_auth(&admin)
            .json(&json!({}))
            .send()
    };
    assert_eq!(post("/api/v1/queue/pause").await.unwrap().status(), 200);
    let job_id = ts
        .queue_job(
            &admin,
            &json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 24}),
        )
        .await;
    let subject = format!("inferno.jobs.{job_id}.tokens");
    let mut sub = subscribe_ready(&client, subject.clone(), subject).await;
    assert_eq!(post("/api/v1/queue/resume").await.unwrap().status(), 200);

    // The job's end, then every piece it stored (its SSE replay) against what NATS carried.
    let mut job = Value::Null;
    for _ in 0..600 {
        job = ts.get_json(&admin, &format!("/api/v1/jobs/{job_id}")).await;
        if job["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["status"], "completed", "{job}");
    let text = job["result"]["text"].as_str().unwrap().to_string();
    let mut got: Vec<Value> = Vec::new();
    while got
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect::<String>()
        != text
    {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("tokens so far: {got:?}, text {text:?}"))
            .unwrap();
        got.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["index"], i as u64, "{m}");
        assert_eq!(m["job_id"], json!(job_id));
    }
    assert!(!got.is_empty());
}

/// Every signed checkpoint reaches `INFERNO_CHECKPOINTS`, in order, the note as payload.
#[tokio::test]
async fn signed_checkpoints_are_copied_to_jetstream() {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = OwnNats::start(free_port(), nats_dir.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir);
    cfg.nats = Some(nats_config(&nats.url(), false));
    let ts = common::start_config(cfg, dir).await;
    let admin = ts.admin_token().await;
    let note = |ts: &TestServer, admin: String| {
        let (client, url) = (ts.client.clone(), ts.at("/api/v1/audit/checkpoint"));
        async move {
            let r = client.get(url).bearer_auth(admin).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let first = note(&ts, admin.clone()).await;
    create_key(&ts, &admin, "one").await;
    let second = note(&ts, admin.clone()).await;
    assert_ne!(first, second);

    let js = async_nats::jetstream::new(async_nats::connect(nats.url().as_str()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stream = loop {
        if let Ok(mut s) = js.get_stream(inferno::nats::CHECKPOINT_STREAM).await {
            if s.info().await.unwrap().state.messages >= 2 {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "two checkpoints in JetStream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let copies: Vec<(String, String)> = {
        let mut v = Vec::new();
        for seq in 1..=2 {
            let m = stream.get_raw_message(seq).await.unwrap();
            assert_eq!(m.subject.as_str(), inferno::nats::CHECKPOINT_SUBJECT);
            let size = m
                .headers
                .get("Inferno-Tree-Size")
                .unwrap()
                .as_str()
                .to_string();
            v.push((String::from_utf8(m.payload.to_vec()).unwrap(), size));
        }
        v
    };
    assert_eq!(copies[0].0, first);
    assert_eq!(copies[1].0, second);
    assert_eq!(copies[0].1, first.lines().nth(1).unwrap());
    let _ = stream.info().await.unwrap();
    ts.stop().await;
}
