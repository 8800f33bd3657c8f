//! Event log benchmark: durable append throughput and latency (1 and 64 appenders), the
//! Merkle tree's cost (tree on vs off, side by side, alternating), verify throughput,
//! inclusion and consistency proof latency, `verify-export` throughput, full replay time
//! and start-up time with N events in the log.
//!
//! `cargo run --example events_bench -- [N]` (N defaults to 1_000_000). Uses a temp dir
//! next to the system temp; numbers depend on the disk's fsync latency.
//!
//! With `EVENTS_BENCH_DIR=/some/dir` the log is kept there instead; when it already holds
//! at least N events the append phases are skipped (to time verify/open/replay again).
//!
//! With `EVENTS_BENCH_PROFILE=1` only N single-event appends by 64 appenders run (for a
//! profiler).
//!
//! With `EVENTS_BENCH_JSONL=FILE` every figure is also appended to FILE as one JSON line
//! (`{"bench":"events","case":..,"metric":..,"subject":"inferno","value":..}`, the format
//! `ops/bench-report.py` reads); the printed lines stay as they are.

// The server's allocator, so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use inferno::events::admin;
use inferno::events::*;
use inferno::inference::SamplingParams;
use std::time::{Duration, Instant};

/// The four events of one job's life, `which` of them (0..4), built alone so that the
/// appenders spend no time on events they drop.
fn job_event(j: u64, which: u64) -> Event {
    let job_id = format!("job-{j:012}");
    match which % 4 {
        0 => Event::InferenceQueued(InferenceQueued {
            job_id,
            model: "tiny".into(),
            params: SamplingParams {
                max_tokens: 64,
                temperature: 0.7,
                ..SamplingParams::default()
            }
            .record(false),
            prompt: ContentRecord::new("Write a haiku about fjall.", false),
        }),
        1 => Event::InferenceStarted(InferenceStarted { job_id }),
        2 => Event::InferenceCompleted(InferenceCompleted {
            job_id,
            finish_reason: "stop".into(),
            prompt_tokens: 7,
            completion_tokens: 17,
            timings: TimingsRecord {
                queue_us: 40,
                prompt_us: 3_000,
                generate_us: 140_000,
                tokens_per_second_milli: 114_286,
                cached_tokens: 0,
            },
            output: ContentRecord::new(
                "Old keyspace / a frog jumps into the log / sound of fsync",
                false,
            ),
        }),
        _ => Event::LoginSucceeded(LoginSucceeded {
            user_id: "u1".into(),
            username: "alice".into(),
            jti: format!("jti-{j}"),
        }),
    }
}

fn job_events(j: u64) -> Vec<Event> {
    (0..4).map(|which| job_event(j, which)).collect()
}

fn ctx() -> EventContext {
    EventContext {
        actor: Actor::api_key("bench-key"),
        request_id: Some("bench".into()),
        client_ip: None,
    }
}

fn figure(case: &str, metric: &str, value: f64) {
    common::figure("events", case, metric, value);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `appenders` tasks each appending `per_task` single events; returns (events/s, latencies).
async fn run_single_event_appends(
    store: &EventStore,
    appenders: u64,
    per_task: u64,
) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..appenders {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task as usize);
            for i in 0..per_task {
                let ev = job_event(t * 1_000_000 + i, i);
                let t0 = Instant::now();
                store.append(&ctx(), vec![ev]).await.expect("append");
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    ((appenders * per_task) as f64 / secs, lat)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.replace('_', "").parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let tmp;
    let dir: std::path::PathBuf = match std::env::var_os("EVENTS_BENCH_DIR") {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("events_bench: N = {n}, dir = {}", dir.display());
    // EVENTS_BENCH_PROFILE=1: one round of the 64-appender case with the tree on, nothing
    // else (to run under `valgrind --tool=callgrind`).
    if std::env::var_os("EVENTS_BENCH_PROFILE").is_some() {
        let store = EventStore::open(&dir, default_projections(), StoreOptions::default())?;
        let (rate, _) = run_single_event_appends(&store, 64, n / 64).await;
        store.shutdown().await;
        println!("64 appenders, tree on: {rate:.0} events/s");
        return Ok(());
    }
    let store = EventStore::open(&dir, default_projections(), StoreOptions::default())?;
    if store.head().0 < n {
        append_phases(&store, n).await;
    }
    tree_cost().await?;
    proofs_and_export(&store)?;
    verify_open_replay(store, &dir).await
}

/// Durable single-event appends with 64 appenders into fresh logs, with and without the
/// tree, alternating, three rounds each.
async fn tree_cost() -> Result<(), Box<dyn std::error::Error>> {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _round in 0..3 {
        for without_tree in [false, true] {
            let dir = tempfile::tempdir()?;
            let store = EventStore::open(
                dir.path(),
                default_projections(),
                StoreOptions {
                    without_tree,
                    ..StoreOptions::default()
                },
            )?;
            let (rate, _) = run_single_event_appends(&store, 64, 500).await;
            store.shutdown().await;
            if without_tree {
                off.push(rate)
            } else {
                on.push(rate)
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut on), median(&mut off));
    figure("64 appenders, tree on", "events/s", a);
    figure("64 appenders, tree off", "events/s", b);
    figure("tree on / off", "ratio", a / b);
    println!(
        "tree on vs off, 64 appenders:  {a:>10.0} vs {b:.0} events/s  (ratio {:.3}; rounds on {on:.0?} off {off:.0?})",
        a / b
    );
    Ok(())
}

fn pcts(case: &str, mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    figure(case, "p50 ms", ms(pct(&v, 0.5)));
    figure(case, "p99 ms", ms(pct(&v, 0.99)));
    format!("p50 {:?}  p99 {:?}", pct(&v, 0.5), pct(&v, 0.99))
}

/// Proof latency over the whole log and `verify-export` of all of it.
fn proofs_and_export(store: &EventStore) -> Result<(), Box<dyn std::error::Error>> {
    let n = store.tree_size();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + x % m
    };
    let (mut inc, mut con) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        let seq = next(n);
        let t = Instant::now();
        store.inclusion_proof(seq, n)?;
        inc.push(t.elapsed());
        let m = next(n);
        let t = Instant::now();
        store.consistency_proof(m, n)?;
        con.push(t.elapsed());
    }
    println!("inclusion proof at {n}:  {}", pcts("inclusion proof", inc));
    println!(
        "consistency proof to {n}: {}",
        pcts("consistency proof", con)
    );

    let mut data = Vec::new();
    for e in store.export_after(0, usize::MAX)? {
        data.extend_from_slice(&e.line);
        data.push(b'\n');
    }
    let (skey, vkey) = inferno::audit::checkpoint::generate_key("inferno/bench")?;
    let signer = inferno::audit::checkpoint::CheckpointSigner::from_private_key(&skey)?;
    let note = signer.sign(n, store.tree_root(n)?)?;
    let t = Instant::now();
    let report = inferno::audit::verify_export::verify_export(&data, &note, &vkey, |_| {})?;
    let secs = t.elapsed().as_secs_f64();
    figure("verify-export", "events/s", report.events as f64 / secs);
    println!(
        "verify-export:                 {:>10.0} events/s  ({} events, {} MB, in {secs:.2}s)",
        report.events as f64 / secs,
        report.events,
        data.len() / 1_000_000
    );
    Ok(())
}

async fn append_phases(store: &EventStore, n: u64) {
    let per = (n / 4).clamp(10, 500);
    let (rate, lat) = run_single_event_appends(store, 1, per).await;
    figure("1 appender, 1 event/append", "events/s", rate);
    figure("1 appender, 1 event/append", "p50 ms", ms(pct(&lat, 0.5)));
    figure("1 appender, 1 event/append", "p99 ms", ms(pct(&lat, 0.99)));
    println!(
        "1 appender, 1 event/append:    {rate:>10.0} events/s  p50 {:?}  p99 {:?}  ({} appends)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );
    let per = (n / 64).clamp(10, 500);
    let (rate, lat) = run_single_event_appends(store, 64, per).await;
    figure("64 appenders, 1 event/append", "events/s", rate);
    figure("64 appenders, 1 event/append", "p50 ms", ms(pct(&lat, 0.5)));
    figure(
        "64 appenders, 1 event/append",
        "p99 ms",
        ms(pct(&lat, 0.99)),
    );
    println!(
        "64 appenders, 1 event/append:  {rate:>10.0} events/s  p50 {:?}  p99 {:?}  ({} appends)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );

    // Fill the log up to N with 64 appenders appending one job lifecycle (4 events) each.
    let have = store.head().0;
    let remaining = n.saturating_sub(have);
    let per_task = remaining / 4 / 64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                store
                    .append(&ctx(), job_events(10_000_000 + t * per_task + i))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let filled = store.head().0 - have;
    let secs = start.elapsed().as_secs_f64();
    figure(
        "64 appenders, 4 events/append",
        "events/s",
        filled as f64 / secs,
    );
    println!(
        "64 appenders, 4 events/append: {:>10.0} events/s  ({filled} events in {secs:.1}s)",
        filled as f64 / secs
    );
}

async fn verify_open_replay(
    store: EventStore,
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let total = store.head().0;
    let s = store.clone();
    let start = Instant::now();
    let report = tokio::task::spawn_blocking(move || s.verify()).await?;
    let secs = start.elapsed().as_secs_f64();
    assert!(report.ok, "{report:?}");
    figure("verify", "events/s", total as f64 / secs);
    println!(
        "verify:                        {:>10.0} events/s  ({total} events in {secs:.2}s)",
        total as f64 / secs
    );
    store.shutdown().await;
    drop(store);

    let start = Instant::now();
    let store = EventStore::open(dir, default_projections(), StoreOptions::default())?;
    figure(
        &format!("start-up with {total} events"),
        "ms",
        ms(start.elapsed()),
    );
    println!("open (start-up) with {total} events: {:?}", start.elapsed());
    store.shutdown().await;
    drop(store);

    let start = Instant::now();
    let r = admin::replay(dir, false)?;
    figure(
        &format!("replay of {} events", r.events),
        "s",
        start.elapsed().as_secs_f64(),
    );
    println!(
        "replay of {} events:           {:.2}s  (records: {:?})",
        r.events,
        start.elapsed().as_secs_f64(),
        r.records
    );
    Ok(())
}
