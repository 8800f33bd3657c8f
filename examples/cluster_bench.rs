//! Cluster-mode control-plane benchmark: durable appends through the shared log in
//! PostgreSQL with 1, 2 and 3 nodes (each an [`EventStore`] with its own data dir and
//! connection, in this one process) beside the embedded store, in one run; and how long an
//! event appended on one node takes to reach another node's live tail (the delay with which
//! a revocation reaches it).
//!
//! `cargo run --example cluster_bench -- [APPENDS_PER_APPENDER]` (default 200). Needs the
//! PostgreSQL server at `CLUSTER_BENCH_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`); makes and drops a database per case. With
//! `EVENTS_BENCH_JSONL=FILE` every figure is also appended to FILE as one JSON line
//! (`{"bench":"cluster",...}`, the format `ops/bench-report.py` reads).
//!
//! All nodes share the machine's cores with PostgreSQL: this measures the control plane
//! (ordering, storage, propagation), never a cluster's inference scale-out.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use inferno::events::shared::SharedLog;
use inferno::events::*;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};

const APPENDERS: usize = 64;

fn ctx() -> EventContext {
    EventContext {
        actor: Actor::api_key("bench-key"),
        request_id: Some("bench".into()),
        client_ip: None,
    }
}

fn event(i: usize) -> Event {
    Event::LoginFailed(LoginFailed {
        username: format!("bench-{i}"),
        reason: "unknown user".into(),
    })
}

fn figure(case: &str, metric: &str, value: f64) {
    common::figure("cluster", case, metric, value);
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn server() -> String {
    std::env::var("CLUSTER_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn admin(sql: String) {
    let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", server()))
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut c)
        .await
        .expect("admin statement");
}

/// `nodes` stores on one fresh database (`None`: one embedded store).
async fn open_nodes(
    nodes: Option<usize>,
    dir: &std::path::Path,
) -> (Vec<EventStore>, Option<String>) {
    let Some(nodes) = nodes else {
        let s = EventStore::open(dir, default_projections(), StoreOptions::default()).unwrap();
        return (vec![s], None);
    };
    let db = format!("inferno_bench_{}", uuid::Uuid::new_v4().simple());
    admin(format!("CREATE DATABASE {db}")).await;
    let url = format!("{}/{db}", server());
    let mut stores = Vec::new();
    for i in 0..nodes {
        let (url, node, path) = (url.clone(), format!("n{i}"), dir.join(format!("n{i}")));
        let s = tokio::task::spawn_blocking(move || {
            let shared = SharedLog::connect(&url, &node).unwrap();
            EventStore::open(
                &path,
                default_projections(),
                StoreOptions {
                    shared: Some(shared),
                    ..StoreOptions::default()
                },
            )
            .unwrap()
        })
        .await
        .unwrap();
        stores.push(s);
    }
    (stores, Some(db))
}

async fn appends(case: &str, nodes: Option<usize>, per: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (stores, db) = open_nodes(nodes, dir.path()).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..APPENDERS {
        let store = stores[t % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t0 = Instant::now();
                store
                    .append(&ctx(), vec![event(t * per + i)])
                    .await
                    .expect("append");
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = (APPENDERS * per) as f64 / start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    figure(case, "events/s", rate);
    figure(case, "p50 ms", p50);
    figure(case, "p99 ms", p99);
    println!("{case:<40} {rate:>9.0} events/s  p50 {p50:.2} ms  p99 {p99:.2} ms");
    for s in &stores {
        s.shutdown().await;
    }
    drop(stores);
    if let Some(db) = db {
        admin(format!("DROP DATABASE {db} WITH (FORCE)")).await;
    }
}

/// An append on node 0, timed until node 1's live tail delivers it.
async fn propagation(samples: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (stores, db) = open_nodes(Some(2), dir.path()).await;
    let (a, b) = (stores[0].clone(), stores[1].clone());
    let mut tail = b.subscribe();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t0 = Instant::now();
        let seq = a.append(&ctx(), vec![event(i)]).await.unwrap()[0].seq;
        loop {
            let env: Arc<Envelope> = tail.recv().await.expect("tail");
            if env.seq >= seq {
                break;
            }
        }
        lat.push(t0.elapsed());
        // Spread the samples over the backstop's phase.
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    lat.sort_unstable();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    figure("append on node A, seen by node B", "p50 ms", p50);
    figure("append on node A, seen by node B", "p99 ms", p99);
    println!(
        "append on node A seen by node B ({samples} samples): p50 {p50:.2} ms  p99 {p99:.2} ms  max {:.2} ms",
        pct(&lat, 1.0)
    );
    for s in &stores {
        s.shutdown().await;
    }
    drop((stores, a, b));
    if let Some(db) = db {
        admin(format!("DROP DATABASE {db} WITH (FORCE)")).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let per: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("APPENDS_PER_APPENDER"))
        .unwrap_or(200);
    println!("cluster_bench: {APPENDERS} appenders x {per} single-event appends per case");
    // Embedded and shared alternate, two rounds, so drift hits both.
    for _round in 0..2 {
        appends("embedded (fjall only)", None, per).await;
        for n in 1..=3 {
            appends(&format!("postgres, {n} node(s)"), Some(n), per).await;
        }
    }
    propagation(300).await;
}
