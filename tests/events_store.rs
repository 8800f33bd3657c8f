//! Event store integration tests: chain, concurrency, tamper detection, replay, upcasting,
//! queries, restart, locking, layout versions and export. Given / when / then.

mod common;

use common::rfc6962::canonical;
use inferno::events::admin;
use inferno::events::projections::{api_keys, config, jobs, models, revoked_tokens, users};
use inferno::events::*;
use inferno::inference::SamplingParams;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

// ---------- helpers ----------

fn open(dir: &Path) -> EventStore {
    EventStore::open(dir, default_projections(), StoreOptions::default()).expect("open store")
}

fn ctx(actor: &str) -> EventContext {
    EventContext {
        actor: Actor::user(actor),
        request_id: Some(format!("req-{actor}")),
        client_ip: Some("127.0.0.1".into()),
    }
}

fn user_created(id: &str, name: &str) -> Event {
    Event::UserCreated(UserCreated {
        user_id: id.into(),
        username: name.into(),
        role: "user".into(),
        extra_permissions: vec!["read_models".into()],
        has_email: false,
    })
}

fn key_created(key: &str, user: &str) -> Event {
    Event::ApiKeyCreated(ApiKeyCreated {
        key_id: key.into(),
        user_id: user.into(),
        name: format!("key {key}"),
        permissions: vec!["run_inference".into()],
        expires_at: None,
        secret_sha256: "ab".repeat(32),
        rate_limit_per_minute: Some(30),
    })
}

/// Raw fjall access to a closed store's database, for fixtures and tampering.
fn raw_db(dir: &Path) -> fjall::Database {
    fjall::Database::builder(dir.join("log"))
        .open()
        .expect("raw open")
}

/// `hex(sha256(prev_hash || canonical(envelope without hash)))`, computed from the JSON.
fn independent_hash(envelope: &Value) -> String {
    let mut v = envelope.clone();
    v.as_object_mut().unwrap().remove("hash");
    let mut c = String::new();
    canonical(&v, &mut c);
    let mut h = Sha256::new();
    h.update(envelope["prev_hash"].as_str().unwrap().as_bytes());
    h.update(c.as_bytes());
    hex::encode(h.finalize())
}

/// Checks an NDJSON export line by line; returns the number of events.
fn verify_ndjson_independently(ndjson: &str) -> u64 {
    let mut prev = "0".repeat(64);
    let mut n = 0;
    for line in ndjson.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        n += 1;
        assert_eq!(v["seq"].as_u64(), Some(n), "seqs are gap-free from 1");
        assert_eq!(
            v["prev_hash"].as_str(),
            Some(prev.as_str()),
            "chain link at {n}"
        );
        let h = independent_hash(&v);
        assert_eq!(v["hash"].as_str(), Some(h.as_str()), "hash at {n}");
        prev = h;
    }
    n
}

/// A mixed workload touching every projection.
async fn mixed_workload(store: &EventStore) {
    store
        .append(
            &ctx("admin"),
            vec![user_created("u1", "Alice"), user_created("u2", "bob")],
        )
        .await
        .unwrap();
    store
        .append(
            &ctx("u1"),
            vec![key_created("k1", "u1"), key_created("k2", "u1")],
        )
        .await
        .unwrap();
    store
        .append(&ctx("u2"), vec![key_created("k3", "u2")])
        .await
        .unwrap();
    store
        .append(
            &ctx("admin"),
            vec![
                Event::UserUpdated(UserUpdated {
                    user_id: "u2".into(),
                    role: Some("admin".into()),
                    extra_permissions: None,
                    email_changed: true,
                }),
                Event::ApiKeyRotated(ApiKeyRotated {
                    key_id: "k3".into(),
                    secret_sha256: "cd".repeat(32),
                }),
                Event::UserDeleted(UserDeleted {
                    user_id: "u1".into(),
                }),
                Event::TokenRevoked(TokenRevoked {
                    jti: "j1".into(),
                    user_id: "u2".into(),
                    expires_at: chrono::Utc::now(),
                }),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            &EventContext::system(),
            vec![
                Event::ModelRegistered(ModelRegistered {
                    model_id: "m1".into(),
                    file_name: "tiny.gguf".into(),
                    sha256: "ef".repeat(32),
                    size_bytes: 1234,
                }),
                Event::ModelUpdated(ModelUpdated {
                    model_id: "m1".into(),
                    aliases: Some(vec!["tiny".into(), "default".into()]),
                    defaults: Some(
                        SamplingParams {
                            temperature: 0.7,
                            top_k: Some(40),
                            ..SamplingParams::default()
                        }
                        .record(true),
                    ),
                    enabled: None,
                }),
                Event::ModelRegistered(ModelRegistered {
                    model_id: "m2".into(),
                    file_name: "gone.gguf".into(),
                    sha256: "01".repeat(32),
                    size_bytes: 1,
                }),
                Event::ModelDeleted(ModelDeleted {
                    model_id: "m2".into(),
                    forced: true,
                }),
                Event::ConfigChanged(ConfigChanged {
                    key: "limits.max_prompt_chars".into(),
                    old: serde_json::Value::Null,
                    value: json!(20000),
                }),
            ],
        )
        .await
        .unwrap();
    for i in 0..5 {
        let job = format!("job-{i}");
        let mut evs = vec![
            Event::InferenceQueued(InferenceQueued {
                job_id: job.clone(),
                model: "m1".into(),
                params: SamplingParams {
                    max_tokens: 16,
                    stop: vec!["\n\n".into()],
                    ..SamplingParams::default()
                }
                .record(i % 2 == 0),
                prompt: ContentRecord::new("Héllo \"world\"\n\u{1}", i % 2 == 0),
            }),
            Event::InferenceStarted(InferenceStarted {
                job_id: job.clone(),
            }),
        ];
        match i {
            0 | 1 => evs.push(Event::InferenceCompleted(InferenceCompleted {
                job_id: job.clone(),
                finish_reason: "stop".into(),
                prompt_tokens: 5,
                completion_tokens: 7,
                timings: TimingsRecord {
                    queue_us: 120,
                    prompt_us: 12_500,
                    generate_us: 90_250,
                    tokens_per_second_milli: 66_481,
                    cached_tokens: 0,
                },
                output: ContentRecord::new("ok", true),
            })),
            2 => evs.push(Event::InferenceFailed(InferenceFailed {
                job_id: job.clone(),
                error: "oom".into(),
            })),
            3 => evs.push(Event::InferenceCancelled(InferenceCancelled {
                job_id: job.clone(),
                reason: "client left".into(),
            })),
            _ => {
                evs.push(Event::JobRetried(JobRetried {
                    job_id: job.clone(),
                    attempt: 2,
                }));
                evs.push(Event::JobDead(JobDead {
                    job_id: job.clone(),
                    error: "gave up".into(),
                }));
            }
        }
        store.append(&ctx("u2"), evs).await.unwrap();
    }
}

const PROJECTIONS: &[&str] = &[
    "users",
    "api_keys",
    "api_keys_live.v2",
    "revoked_tokens",
    "models",
    "config",
    "jobs.v2",
];

// ---------- tests ----------

#[tokio::test]
async fn chain_recomputes_independently_from_the_export() {
    // Given a store with a mixed workload (unicode, quotes, control characters, floats)
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    mixed_workload(&store).await;
    let (head, head_hash) = store.head();
    store.shutdown().await;

    // When the log is exported as NDJSON
    let mut out = Vec::new();
    let n = admin::export(dir.path(), 0, &[], &mut out, false).unwrap();

    // Then every line re-verifies with an independent implementation of the documented rule
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n, head);
    assert_eq!(verify_ndjson_independently(&text), head);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["hash"].as_str(), Some(head_hash.as_str()));
    // and the stored ts uses the documented fixed microsecond format
    let ts = last["ts"].as_str().unwrap();
    assert_eq!(ts.len(), "2025-01-31T09:08:07.123456Z".len(), "{ts}");

    // and a type-filtered export contains only those types
    let mut out = Vec::new();
    let n = admin::export(
        dir.path(),
        0,
        &["user.created".to_string()],
        &mut out,
        false,
    )
    .unwrap();
    assert_eq!(n, 2);
    assert!(String::from_utf8(out)
        .unwrap()
        .lines()
        .all(|l| l.contains("\"type\":\"user.created\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_gap_free_seqs() {
    // Given 64 tasks appending concurrently
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let n = 1 + (t + i) % 3;
                let evs = (0..n)
                    .map(|k| {
                        Event::LoginFailed(LoginFailed {
                            username: format!("t{t}-{i}-{k}"),
                            reason: "bad password".into(),
                        })
                    })
                    .collect();
                let envs = store.append(&ctx(&format!("task{t}")), evs).await.unwrap();
                // Then each append's events are contiguous
                for w in envs.windows(2) {
                    assert_eq!(w[1].seq, w[0].seq + 1);
                }
                seqs.extend(envs.iter().map(|e| e.seq));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Then all seqs together are exactly 1..=N, and the chain verifies
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    assert_eq!(store.head().0, n);
    let report = store.verify();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, n);
    store.shutdown().await;
}

#[tokio::test]
async fn tampering_is_detected_and_refused() {
    // Given a closed store with 10 events
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        store
            .append(
                &ctx("admin"),
                vec![user_created(&format!("u{i}"), &format!("user{i}"))],
            )
            .await
            .unwrap();
    }
    store.shutdown().await;
    drop(store);

    // When one byte of event 5 is flipped in storage (JSON stays valid)
    {
        let db = raw_db(dir.path());
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let key = 5u64.to_be_bytes();
        let mut v = events.get(key).unwrap().unwrap().to_vec();
        let pos = v.windows(5).position(|w| w == b"user4").unwrap();
        v[pos] = b'U';
        events.insert(key, v).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }

    // Then verify reports seq 5
    let report = admin::verify_dir(dir.path(), false).unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(5));
    assert_eq!(report.first_bad_reason.as_deref(), Some("hash mismatch"));
    assert_eq!(report.head_seq, 10);

    // and open refuses, unless the operator allows a broken tail
    match EventStore::open(dir.path(), default_projections(), StoreOptions::default()) {
        Err(EventError::BrokenChain { seq, reason }) => {
            assert_eq!((seq, reason.as_str()), (5, "hash mismatch"))
        }
        other => panic!("expected BrokenChain, got {other:?}"),
    }
    let store = EventStore::open(
        dir.path(),
        default_projections(),
        StoreOptions {
            allow_broken_tail: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.verify().first_bad_seq, Some(5));
    store.shutdown().await;
}

#[tokio::test]
async fn replay_rebuilds_identical_projections() {
    // Given live projections after a mixed workload
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    mixed_workload(&store).await;
    let before: Vec<_> = PROJECTIONS
        .iter()
        .map(|p| admin::projection_snapshot(&store, p).unwrap())
        .collect();
    assert!(
        before.iter().all(|s| !s.is_empty()),
        "every projection has records"
    );
    store.shutdown().await;

    // When every projection is replayed from the log into a new generation
    let report = admin::replay(dir.path(), false).unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(report.events, 30);

    // Then the reopened store serves identical contents
    let store = open(dir.path());
    let after: Vec<_> = PROJECTIONS
        .iter()
        .map(|p| admin::projection_snapshot(&store, p).unwrap())
        .collect();
    for (i, name) in PROJECTIONS.iter().enumerate() {
        assert_eq!(before[i], after[i], "projection {name}");
    }

    // and the read helpers agree with the workload
    assert!(
        users::get(&store, "u1").unwrap().is_none(),
        "deleted user removed"
    );
    let bob = users::by_username(&store, "BOB").unwrap().unwrap();
    assert_eq!(bob.role, "admin");
    assert_eq!(users::list(&store).unwrap().len(), 1);
    let k1 = api_keys::get(&store, "k1").unwrap().unwrap();
    assert!(
        k1.revoked_at.is_some(),
        "keys of a deleted user are revoked"
    );
    assert_eq!(api_keys::list_for_user(&store, "u1").unwrap().len(), 2);
    let k3 = api_keys::get(&store, "k3").unwrap().unwrap();
    assert!(k3.revoked_at.is_none() && k3.rotated_at.is_some());
    assert_eq!(k3.secret_sha256, "cd".repeat(32));
    assert!(revoked_tokens::is_revoked(&store, "j1").unwrap());
    assert!(!revoked_tokens::is_revoked(&store, "j2").unwrap());
    assert_eq!(models::by_alias(&store, "tiny").unwrap().unwrap().id, "m1");
    assert!(models::get(&store, "m2").unwrap().is_none());
    assert_eq!(models::list(&store).unwrap().len(), 1);
    assert_eq!(
        config::get_all(&store).unwrap()["limits.max_prompt_chars"],
        json!(20000)
    );
    let statuses: Vec<String> = jobs::list(&store)
        .unwrap()
        .into_iter()
        .map(|j| j.status)
        .collect();
    assert_eq!(
        statuses,
        ["completed", "completed", "failed", "cancelled", "dead"]
    );
    assert_eq!(
        jobs::get(&store, "job-0")
            .unwrap()
            .unwrap()
            .completion_tokens,
        Some(7)
    );
    store.shutdown().await;
}

#[tokio::test]
async fn v1_api_key_created_is_upcast_to_v2() {
    // Given an empty store's layout and a raw v1 `api_key.created` envelope written as seq 1
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).shutdown().await;
    let mut env = json!({
        "seq": 1,
        "id": "01920000-0000-7000-8000-000000000001",
        "ts": "2024-09-01T12:00:00.000000Z",
        "type": "api_key.created",
        "version": 1,
        "actor": {"kind": "user", "id": "u1"},
        "request_id": null,
        "client_ip": null,
        "payload": {"key_id": "k-old", "user_id": "u1", "name": "legacy", "permissions": ["read_models"],
                    "expires_at": null, "secret_sha256": "aa"},
        "prev_hash": "0".repeat(64),
    });
    let hash = independent_hash(&env);
    env["hash"] = json!(hash);
    {
        let db = raw_db(dir.path());
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        // in the stored layout (field order of the envelope, `hash` last)
        let env: Envelope = serde_json::from_value(env).unwrap();
        events
            .insert(1u64.to_be_bytes(), env.to_stored_bytes())
            .unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }

    // When the store opens (tail verify + projection catch-up) and reads it back
    let store = open(dir.path());
    let stored = store.get(1).unwrap().unwrap();
    assert_eq!(stored.version, 1, "stored events are never rewritten");

    // Then it decodes as the current version with rate_limit_per_minute None
    match stored.event().unwrap() {
        Event::ApiKeyCreated(k) => {
            assert_eq!(k.key_id, "k-old");
            assert_eq!(k.rate_limit_per_minute, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    let rec = api_keys::get(&store, "k-old").unwrap().unwrap();
    assert_eq!(rec.rate_limit_per_minute, None);
    // and new appends chain onto it
    let envs = store
        .append(&ctx("u1"), vec![key_created("k-new", "u1")])
        .await
        .unwrap();
    assert_eq!(envs[0].prev_hash, hash);
    assert_eq!(envs[0].version, 2);
    assert!(store.verify().ok);
    // and an unknown newer version is refused rather than guessed
    assert!(Event::decode("api_key.created", 3, json!({})).is_err());
    store.shutdown().await;
}

#[tokio::test]
async fn query_filters_and_pages() {
    // Given 30 events from two actors and three types
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        store
            .append(
                &ctx("alice"),
                vec![Event::LoginFailed(LoginFailed {
                    username: format!("a{i}"),
                    reason: "x".into(),
                })],
            )
            .await
            .unwrap();
        store
            .append(
                &ctx("bob"),
                vec![Event::CacheCleared(CacheCleared {
                    scope: format!("s{i}"),
                })],
            )
            .await
            .unwrap();
        store
            .append(
                &ctx("alice"),
                vec![Event::QueuePaused(QueuePaused { reason: None })],
            )
            .await
            .unwrap();
    }
    let seqs = |p: &EventPage| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();

    // When paging through everything ascending, 7 at a time
    let mut q = EventQuery {
        limit: 7,
        ..Default::default()
    };
    let mut got = Vec::new();
    loop {
        let page = store.query(&q).unwrap();
        got.extend(seqs(&page));
        match page.next_cursor {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    // Then every event comes exactly once, in order
    assert_eq!(got, (1..=30).collect::<Vec<_>>());

    // When filtering by type (two types), newest first, paging with `before`
    let mut q = EventQuery {
        types: vec!["cache.cleared".into(), "queue.paused".into()],
        newest_first: true,
        limit: 8,
        ..Default::default()
    };
    let mut got = Vec::new();
    loop {
        let page = store.query(&q).unwrap();
        assert!(page.events.iter().all(|e| e.r#type != "auth.login_failed"));
        got.extend(seqs(&page));
        match page.next_cursor {
            Some(c) => q.before = Some(c),
            None => break,
        }
    }
    let expected: Vec<u64> = (1..=30).rev().filter(|s| s % 3 != 1).collect();
    assert_eq!(got, expected);

    // When filtering by actor within a seq window
    let page = store
        .query(&EventQuery {
            actor: Some("bob".into()),
            after: Some(5),
            before: Some(20),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(seqs(&page), vec![8, 11, 14, 17]);
    assert!(page.next_cursor.is_none());

    // When combining type and actor
    let page = store
        .query(&EventQuery {
            actor: Some("alice".into()),
            types: vec!["queue.paused".into()],
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(seqs(&page), vec![3, 6, 9]);
    assert_eq!(page.next_cursor, Some(9));

    // When filtering by time: since the ts of event 10, until the ts of event 12
    let t10 = store.get(10).unwrap().unwrap().ts;
    let t12 = store.get(12).unwrap().unwrap().ts;
    let page = store
        .query(&EventQuery {
            since: Some(t10),
            until: Some(t12),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(seqs(&page).contains(&10) && seqs(&page).contains(&12));
    assert!(page.events.iter().all(|e| e.ts >= t10 && e.ts <= t12));
    store.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_head_and_catches_up_a_lagging_projection() {
    // Given a store with a workload, closed
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    mixed_workload(&store).await;
    let head = store.head();
    let users_before = admin::projection_snapshot(&store, "users").unwrap();
    store.shutdown().await;

    // and the users projection knocked back: a record lost and its checkpoint at 0
    {
        let db = raw_db(dir.path());
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        meta.insert("checkpoint/users", 0u64.to_be_bytes()).unwrap();
        let users_ks = db
            .keyspace("g1.users", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        users_ks.remove("u2").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }

    // When it reopens
    let store = open(dir.path());

    // Then the head is unchanged and the projection is caught up again
    assert_eq!(store.head(), head);
    assert_eq!(
        admin::projection_snapshot(&store, "users").unwrap(),
        users_before
    );
    assert!(users::get(&store, "u2").unwrap().is_some());

    // and appends continue the same chain
    let envs = store
        .append(&ctx("admin"), vec![user_created("u9", "zed")])
        .await
        .unwrap();
    assert_eq!(envs[0].seq, head.0 + 1);
    assert_eq!(envs[0].prev_hash, head.1);
    store.shutdown().await;
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err =
        EventStore::open(dir.path(), default_projections(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, EventError::Locked(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("is in use by a running inferno server"),
        "{err}"
    );
    // and the offline tools refuse too
    assert!(matches!(
        admin::verify_dir(dir.path(), false),
        Err(EventError::Locked(_))
    ));
    store.shutdown().await;
    // Once shut down the directory is free again
    open(dir.path()).shutdown().await;
}

#[tokio::test]
async fn a_newer_layout_version_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).shutdown().await;
    {
        let db = raw_db(dir.path());
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        assert_eq!(&*meta.get("layout_version").unwrap().unwrap(), b"2");
        meta.insert("layout_version", "99").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err =
        EventStore::open(dir.path(), default_projections(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            EventError::UnknownLayoutVersion {
                found: 99,
                supported: 2
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("newer than this build supports"),
        "{err}"
    );
}

#[tokio::test]
async fn subscribers_see_committed_events_and_range_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .append(&ctx("a"), vec![Event::QueueResumed(QueueResumed {})])
        .await
        .unwrap();
    let mut rx = store.subscribe();
    let envs = store
        .append(
            &ctx("a"),
            vec![
                Event::QueuePaused(QueuePaused {
                    reason: Some("maintenance".into()),
                }),
                Event::QueueResumed(QueueResumed {}),
            ],
        )
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().seq, envs[0].seq);
    assert_eq!(*rx.recv().await.unwrap(), envs[1]);
    let all: Vec<u64> = store.range(1).map(|e| e.unwrap().seq).collect();
    assert_eq!(all, vec![2, 3]);
    assert_eq!(store.get(2).unwrap().unwrap(), envs[0]);
    assert!(store.get(4).unwrap().is_none());
    store.shutdown().await;
}

#[tokio::test]
async fn side_keyspaces_are_durable_and_outside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .side_put("emails", b"u1", b"alice@example.com")
        .unwrap();
    store.shutdown().await;
    let store = open(dir.path());
    assert_eq!(
        store.side_get("emails", b"u1").unwrap().as_deref(),
        Some(&b"alice@example.com"[..])
    );
    assert_eq!(store.head().0, 0, "side data is not an event");
    store.side_delete("emails", b"u1").unwrap();
    assert!(store.side_get("emails", b"u1").unwrap().is_none());
    store.shutdown().await;
}

#[tokio::test]
async fn appends_after_shutdown_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.shutdown().await;
    let err = store
        .append(&ctx("a"), vec![Event::QueueResumed(QueueResumed {})])
        .await
        .unwrap_err();
    assert!(matches!(err, EventError::Unavailable(_)), "{err:?}");
}

#[test]
fn content_records_hash_and_optionally_keep_text() {
    let with = ContentRecord::new("hello", true);
    let without = ContentRecord::new("hello", false);
    assert_eq!(
        with.sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(with.length, 5);
    assert_eq!(with.text.as_deref(), Some("hello"));
    assert_eq!(without.text, None);
    assert_eq!(without.sha256, with.sha256);
}

#[test]
fn every_event_round_trips_through_decode() {
    let e = user_created("u1", "a");
    assert_eq!(e.event_type(), "user.created");
    assert_eq!(
        Event::decode(e.event_type(), e.event_version(), e.payload_json()).unwrap(),
        e
    );
    let k = key_created("k", "u");
    assert_eq!(k.event_version(), 2);
    assert_eq!(
        Event::decode("api_key.created", 2, k.payload_json()).unwrap(),
        k
    );
    assert!(Event::decode("no.such_type", 1, json!({})).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_large_log_checks_both_halves_and_their_link() {
    // Given 60,000 events (verified in two halves on two threads)
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for a in 0..15 {
        let evs = (0..4000)
            .map(|i| {
                Event::CacheCleared(CacheCleared {
                    scope: format!("s{a}-{i}"),
                })
            })
            .collect();
        store.append(&EventContext::system(), evs).await.unwrap();
    }
    let report = tokio::task::spawn_blocking({
        let s = store.clone();
        move || s.verify()
    })
    .await
    .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 60_000);
    store.shutdown().await;

    // When an event in the second half and the first event of the second half are altered
    for seq in [45_000u64, 30_001] {
        let db = raw_db(dir.path());
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let mut env: Envelope =
            serde_json::from_slice(&events.get(seq.to_be_bytes()).unwrap().unwrap()).unwrap();
        env.payload["scope"] = json!("rewritten");
        events
            .insert(seq.to_be_bytes(), env.to_stored_bytes())
            .unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
        drop(events);
        drop(db);
        // Then the first bad seq is reported
        let report = admin::verify_dir(dir.path(), false).unwrap();
        assert_eq!(report.first_bad_seq, Some(seq), "{report:?}");
        assert_eq!(report.first_bad_reason.as_deref(), Some("hash mismatch"));
    }
}

#[tokio::test]
async fn envelopes_stored_in_another_encoding_are_reported_not_re_encoded() {
    // Given a closed store whose events are all in the layout this build writes
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    mixed_workload(&store).await;
    let before: Vec<Envelope> = store.range(0).map(Result::unwrap).collect();
    let jobs_before = admin::projection_snapshot(&store, "jobs.v2").unwrap();
    store.shutdown().await;
    drop(store);
    assert!(admin::verify_dir(dir.path(), false).unwrap().ok);

    // When event 3 is stored again with the same content but another key order,
    // whitespace and escapes (what a different writer could have produced)
    {
        let db = raw_db(dir.path());
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let v: Value =
            serde_json::from_slice(&events.get(3u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&v)
            .unwrap()
            .replace('/', "\\/");
        events
            .insert(3u64.to_be_bytes(), text.into_bytes())
            .unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }

    // Then verification reports it as not canonical: it hashes stored bytes, and never
    // re-encodes parsed values into something that might match
    let report = admin::verify_dir(dir.path(), false).unwrap();
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_seq, Some(3));
    assert_eq!(report.first_bad_reason.as_deref(), Some("not canonical"));
    // and the store refuses to open on it
    match EventStore::open(dir.path(), default_projections(), StoreOptions::default()) {
        Err(EventError::BrokenChain { seq, reason }) => {
            assert_eq!((seq, reason.as_str()), (3, "not canonical"))
        }
        other => panic!("expected BrokenChain, got {other:?}"),
    }
    // while reads still decode every envelope to the same value (inspection and export)
    let store = EventStore::open(
        dir.path(),
        default_projections(),
        StoreOptions {
            allow_broken_tail: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let after: Vec<Envelope> = store.range(0).map(Result::unwrap).collect();
    assert_eq!(after, before);
    assert_eq!(
        admin::projection_snapshot(&store, "jobs.v2").unwrap(),
        jobs_before
    );
    store.shutdown().await;
}

#[test]
fn old_versions_with_floats_hashes_or_single_failures_are_upcast() {
    // The payloads as the previous build wrote them (from tests/fixtures/v1-datadir).
    let completed = json!({"completion_tokens": 1, "finish_reason": "stop", "job_id": "j",
        "output": {"length": 0, "sha256": "e3", "text": null}, "prompt_tokens": 13,
        "timings": {"generate_ms": 10.421028, "prompt_ms": 222.74219300000001,
                    "queue_ms": 0.35172, "tokens_per_second": 15.734521447747165}});
    match Event::decode("inference.completed", 1, completed).unwrap() {
        Event::InferenceCompleted(e) => assert_eq!(
            e.timings,
            TimingsRecord {
                queue_us: 352,
                prompt_us: 222_742,
                generate_us: 10_421,
                tokens_per_second_milli: 15_735,
                cached_tokens: 0,
            }
        ),
        other => panic!("{other:?}"),
    }
    let queued = json!({"job_id": "j", "model": "m",
        "params": {"max_tokens": 4, "temperature": 0.800000011920929, "top_k": null,
                   "top_p": 0.8999999761581421, "min_p": 0.05000000074505806,
                   "repeat_penalty": 1.100000023841858, "seed": 1, "stop": ["\n\n"]},
        "prompt": {"length": 2, "sha256": "ab", "text": null}});
    match Event::decode("inference.queued", 1, queued).unwrap() {
        Event::InferenceQueued(e) => {
            assert_eq!(e.params.temperature, "0.8");
            assert_eq!(e.params.top_p.as_deref(), Some("0.9"));
            assert_eq!(e.params.min_p.as_deref(), Some("0.05"));
            assert_eq!(e.params.repeat_penalty.as_deref(), Some("1.1"));
            assert_eq!(e.params.stop[0].text.as_deref(), Some("\n\n"));
        }
        other => panic!("{other:?}"),
    }
    let updated = json!({"model_id": "m", "aliases": null, "enabled": null,
        "defaults": {"max_tokens": 8, "temperature": 0.699999988079071, "stop": []}});
    match Event::decode("model.updated", 1, updated).unwrap() {
        Event::ModelUpdated(e) => {
            let d = e.defaults.unwrap();
            assert_eq!(d.temperature, "0.7");
            assert_eq!(d.to_plain_json().unwrap()["temperature"], json!(0.7));
        }
        other => panic!("{other:?}"),
    }
    let created = json!({"user_id": "u", "username": "a", "role": "user",
        "extra_permissions": [], "password_hash": "$argon2id$v=19$...", "has_email": false});
    match Event::decode("user.created", 1, created).unwrap() {
        Event::UserCreated(e) => assert_eq!(e.username, "a"),
        other => panic!("{other:?}"),
    }
    let failed = json!({"credential": "jwt", "key_id": null, "reason": "malformed token"});
    match Event::decode("auth.authentication_failed", 1, failed).unwrap() {
        Event::AuthenticationFailed(e) => assert_eq!((e.count, e.throttled), (1, 0)),
        other => panic!("{other:?}"),
    }
    // v1 did not record the replaced value.
    let changed = json!({"key": "limits.max_prompt_chars", "value": 20000});
    match Event::decode("config.changed", 1, changed).unwrap() {
        Event::ConfigChanged(e) => {
            assert_eq!(e.key, "limits.max_prompt_chars");
            assert_eq!((e.old, e.value), (Value::Null, json!(20000)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn live_key_count_drops_revoked_and_expired_keys_and_survives_a_refold() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let now = chrono::Utc::now();
    let with_expiry = |key: &str, expires_at| {
        let mut e = key_created(key, "u1");
        if let Event::ApiKeyCreated(k) = &mut e {
            k.expires_at = expires_at;
        }
        e
    };
    let day = chrono::Duration::days(1);
    store
        .append(
            &ctx("u1"),
            vec![
                with_expiry("never", None),
                with_expiry("tomorrow", Some(now + day)),
                with_expiry("yesterday", Some(now - day)),
                key_created("other-user", "u2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(api_keys::live_count_for_user(&store, "u1", now).unwrap(), 2);
    // Counted at the time asked: "tomorrow" has expired two days on.
    let later = now + day * 2;
    assert_eq!(
        api_keys::live_count_for_user(&store, "u1", later).unwrap(),
        1
    );
    store
        .append(
            &ctx("u1"),
            vec![Event::ApiKeyRevoked(ApiKeyRevoked {
                key_id: "never".into(),
            })],
        )
        .await
        .unwrap();
    assert_eq!(api_keys::live_count_for_user(&store, "u1", now).unwrap(), 1);
    assert_eq!(api_keys::live_count_for_user(&store, "u2", now).unwrap(), 1);
    store.shutdown().await;

    // A replay folds the same counts from the log.
    admin::replay(dir.path(), false).unwrap();
    let store = open(dir.path());
    assert_eq!(api_keys::live_count_for_user(&store, "u1", now).unwrap(), 1);
    assert_eq!(api_keys::live_count_for_user(&store, "u2", now).unwrap(), 1);
    assert_eq!(
        api_keys::live_count_for_user(&store, "nobody", now).unwrap(),
        0
    );
    store.shutdown().await;
}
