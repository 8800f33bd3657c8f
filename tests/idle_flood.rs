//! 5,000 connections that never finish a request: the server keeps answering `/health`
//! while they are open, closes every one of them after `[server] header_timeout_secs`
//! (those that sent half a request line get a 408 first), and its memory stays within a
//! stated bound.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 5_000;
/// Resident memory the open connections may add to the process (server and client side).
const RSS_GROWTH_BOUND_MIB: u64 = 256;

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn probe_health(client: &reqwest::Client, url: &str, lat: &mut Vec<Duration>) {
    let t0 = Instant::now();
    let r = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/health answers while the flood is open");
    assert_eq!(r.status(), 200);
    lat.push(t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_are_closed_and_health_keeps_answering() {
    // Both ends of every connection live in this process.
    let limit = open_files_limit();
    assert!(
        limit > 2 * CONNECTIONS as u64 + 500,
        "this test needs more than {} open files; the limit is {limit} (ulimit -n)",
        2 * CONNECTIONS + 500
    );
    let ts = common::start_with(|c| {
        c.server.header_timeout_secs = 5;
        c.server.idle_timeout_secs = 5;
    })
    .await;
    let addr = ts.url.trim_start_matches("http://").to_string();
    let health = ts.at("/health");
    let rss_before = common::rss_kib();

    let started = Instant::now();
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let mut lat = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 1 {
            // Half a request line: a slow header.
            s.write_all(b"GET /health HT").await.expect("write");
        }
        conns.push(s);
        if i % 500 == 499 {
            probe_health(&ts.client, &health, &mut lat).await;
        }
    }
    let opened = started.elapsed();
    let rss_open = common::rss_kib();
    // Every connection is still held; the server keeps answering others.
    for _ in 0..20 {
        probe_health(&ts.client, &health, &mut lat).await;
    }

    // Each one is closed by the server: silent ones without a word, slow ones with 408.
    let mut closed = 0;
    let mut got_408 = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in conns.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut out = Vec::new();
        match tokio::time::timeout(left, s.read_to_end(&mut out)).await {
            Ok(_) => closed += 1,
            Err(_) => panic!("connection {i} still open 60 s after the flood began"),
        }
        if i % 2 == 1 && out.starts_with(b"HTTP/1.1 408") {
            got_408 += 1;
        }
        if i % 500 == 0 {
            probe_health(&ts.client, &health, &mut lat).await;
        }
    }
    let all_closed = started.elapsed();
    drop(conns);
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "idle flood: {CONNECTIONS} connections opened in {:.2} s, all closed by the server after \
         {:.2} s ({got_408} slow heads got 408); RSS {} MiB before, {} MiB with all open; \
         /health {} probes p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        opened.as_secs_f64(),
        all_closed.as_secs_f64(),
        rss_before >> 10,
        rss_open >> 10,
        lat.len(),
        p(0.5),
        p(0.99),
        p(1.0),
    );
    assert_eq!(closed, CONNECTIONS);
    assert_eq!(got_408, CONNECTIONS / 2, "every slow head gets a 408");
    assert!(
        rss_open.saturating_sub(rss_before) < RSS_GROWTH_BOUND_MIB << 10,
        "RSS grew from {rss_before} KiB to {rss_open} KiB with the connections open"
    );
    ts.stop().await;
}
