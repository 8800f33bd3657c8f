//! The hostile-input corpus: every JSON route gets bodies built to hurt a parser or a store
//! (100,000-deep nesting, a million-element array, a 10 MB string in each field, invalid
//! UTF-8, NUL characters, negative and out-of-range numbers, duplicate keys, truncated and
//! oversized bodies). Each case must get a 4xx in the route's documented error body, small
//! (nothing the client sent is echoed back in bulk), while `/health` keeps answering; after
//! the corpus the chain verifies, nothing hostile reached the log, memory is back within a
//! stated bound, and a normal inference still runs.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Filler of the 10 MB strings, distinctive enough to search the log for.
const FILLER: &str = "HOSTILE-";
const TEN_MB: usize = 10_000_000;
/// The growth of resident memory allowed from before the corpus to after it.
const RSS_GROWTH_BOUND_MIB: u64 = 256;

struct Route {
    method: reqwest::Method,
    path: String,
    /// A valid body: sent as is, it succeeds.
    body: Value,
    /// JSON pointers of its string and number fields.
    strings: &'static [&'static str],
    numbers: &'static [&'static str],
    openai: bool,
}

fn routes() -> Vec<Route> {
    let m = common::TEST_MODEL_ID;
    let post = reqwest::Method::POST;
    vec![
        Route {
            method: post.clone(),
            path: "/api/v1/auth/login".into(),
            body: json!({"username": "admin", "password": common::ADMIN_PASSWORD}),
            strings: &["/username", "/password"],
            numbers: &[],
            openai: false,
        },
        Route {
            method: post.clone(),
            path: "/api/v1/inference".into(),
            body: json!({"model": m, "prompt": "Hi", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9}),
            strings: &["/model", "/prompt"],
            numbers: &["/max_tokens", "/temperature", "/top_p"],
            openai: false,
        },
        Route {
            method: post.clone(),
            path: "/api/v1/jobs".into(),
            body: json!({"model": m, "prompt": "Hi", "max_tokens": 2, "priority": "normal"}),
            strings: &["/model", "/prompt", "/priority"],
            numbers: &["/max_tokens"],
            openai: false,
        },
        Route {
            method: post.clone(),
            path: "/api/v1/users".into(),
            body: json!({"username": "mallory", "password": "long-enough-password-1",
                         "role": "user", "extra_permissions": ["read_metrics"]}),
            strings: &["/username", "/password", "/role", "/extra_permissions/0"],
            numbers: &[],
            openai: false,
        },
        Route {
            method: post.clone(),
            path: "/api/v1/auth/api-keys".into(),
            body: json!({"name": "k", "permissions": ["run_inference"],
                         "expires_in_days": 30, "rate_limit_per_minute": 60}),
            strings: &["/name", "/permissions/0"],
            numbers: &["/expires_in_days", "/rate_limit_per_minute"],
            openai: false,
        },
        Route {
            method: reqwest::Method::PATCH,
            path: format!("/api/v1/models/{m}"),
            body: json!({"aliases": ["gemma-tiny"], "defaults": {"max_tokens": 8}}),
            strings: &["/aliases/0"],
            numbers: &["/defaults/max_tokens"],
            openai: false,
        },
        Route {
            method: post.clone(),
            path: "/v1/chat/completions".into(),
            body: json!({"model": m, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
            strings: &["/model", "/messages/0/role", "/messages/0/content"],
            numbers: &["/max_tokens"],
            openai: true,
        },
        Route {
            method: post,
            path: "/v1/completions".into(),
            body: json!({"model": m, "prompt": "Hi", "max_tokens": 2, "temperature": 0.5}),
            strings: &["/model", "/prompt"],
            numbers: &["/max_tokens", "/temperature"],
            openai: true,
        },
    ]
}

/// `body` with the value at `pointer` replaced by `raw` JSON text (which may be invalid).
fn splice(body: &Value, pointer: &str, raw: &[u8]) -> Vec<u8> {
    const MARK: &str = "\u{1}splice\u{1}";
    let mut v = body.clone();
    *v.pointer_mut(pointer).expect("pointer in body") = json!(MARK);
    let text = v.to_string();
    let quoted = serde_json::to_string(MARK).unwrap();
    let at = text.find(&quoted).expect("marker");
    let mut out = text.as_bytes()[..at].to_vec();
    out.extend_from_slice(raw);
    out.extend_from_slice(&text.as_bytes()[at + quoted.len()..]);
    out
}

/// The corpus for one route: (case name, body).
fn cases(route: &Route) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let first = route.strings[0];
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let million = format!("[{}0]", "0,".repeat(999_999));
    let ten_mb = serde_json::to_string(&FILLER.repeat(TEN_MB / FILLER.len())).unwrap();
    out.push((
        "nested 100,000 deep (body)".into(),
        deep_array.clone().into(),
    ));
    out.push((
        format!("nested 100,000 deep ({first})"),
        splice(&route.body, first, deep_object.as_bytes()),
    ));
    out.push((
        format!("a million-element array ({first})"),
        splice(&route.body, first, million.as_bytes()),
    ));
    for s in route.strings {
        out.push((
            format!("10 MB string ({s})"),
            splice(&route.body, s, ten_mb.as_bytes()),
        ));
        out.push((
            format!("escaped NUL ({s})"),
            splice(&route.body, s, br#""a\u0000b""#),
        ));
        out.push((
            format!("raw NUL byte ({s})"),
            splice(&route.body, s, b"\"a\0b\""),
        ));
        out.push((
            format!("invalid UTF-8 ({s})"),
            splice(&route.body, s, b"\"a\xff\xfeb\""),
        ));
        out.push((
            format!("lone surrogate ({s})"),
            splice(&route.body, s, br#""\ud800""#),
        ));
        out.push((
            format!("a number for a string ({s})"),
            splice(&route.body, s, b"7"),
        ));
    }
    for n in route.numbers {
        for raw in [
            "-1",
            "-9223372036854775809",
            "18446744073709551616",
            "1e308",
            "-1e308",
            "1e999",
            "\"7\"",
            "[]",
        ] {
            out.push((
                format!("number {raw} ({n})"),
                splice(&route.body, n, raw.as_bytes()),
            ));
        }
    }
    let text = route.body.to_string();
    let key = text[1..].split('"').nth(1).expect("first key");
    let dup = format!("{{\"{key}\":\"x\",{}", &text[1..]);
    out.push(("duplicate key".into(), dup.into()));
    out.push((
        "truncated".into(),
        text.as_bytes()[..text.len() / 2].to_vec(),
    ));
    out.push(("empty".into(), Vec::new()));
    out.push(("null".into(), b"null".to_vec()));
    out.push(("a bare string".into(), b"\"prompt\"".to_vec()));
    out.push(("invalid UTF-8 (body)".into(), b"\xff\xfe\xfd".to_vec()));
    out.push(("trailing garbage".into(), format!("{text} {{").into()));
    out
}

/// A body over `[server] max_body_bytes`, announced with `Expect: 100-continue` as HTTP
/// clients do for large uploads: the server answers 413 before the body is sent. (Without
/// it the server answers 413 as soon as it reads the length and closes; a client still
/// writing may then see the reset instead of the answer.)
async fn oversized(addr: &str, method: &str, path: &str, token: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
         connection: close\r\n\r\n",
        11 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ct, body.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_body_gets_a_small_4xx_in_the_error_body_and_nothing_breaks() {
    // One principal sends every case: its rate limit is raised out of the way.
    let ts = common::start_with(|c| {
        common::with_test_model(c);
        c.limits.requests_per_minute = 1_000_000;
    })
    .await;
    let admin = ts.admin_token().await;
    let routes = routes();

    // Each valid body works, so the cases below are refused for what they change.
    for r in &routes {
        let resp = ts
            .client
            .request(r.method.clone(), ts.at(&r.path))
            .bearer_auth(&admin)
            .json(&r.body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{} {}: {}",
            r.method,
            r.path,
            resp.status()
        );
    }
    let rss_before = common::rss_kib();

    // `/health` is probed throughout.
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (url, done) = (ts.at("/health"), done.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "/health");
                lat.push(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lat
        })
    };

    // A fresh connection per case: the server closes one after some of these.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let addr = ts.url.trim_start_matches("http://").to_string();
    let mut count = 0;
    for r in &routes {
        let mut all: Vec<(String, Option<Vec<u8>>)> =
            cases(r).into_iter().map(|(n, b)| (n, Some(b))).collect();
        all.push(("11 MiB body".into(), None));
        for (name, body) in all {
            let (status, ct, bytes) = match body {
                Some(body) => {
                    let resp = client
                        .request(r.method.clone(), ts.at(&r.path))
                        .bearer_auth(&admin)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{} {name}: {e}", r.path));
                    let (status, ct) = (resp.status().as_u16(), common::content_type(&resp));
                    (status, ct, resp.bytes().await.unwrap().to_vec())
                }
                None => oversized(&addr, r.method.as_str(), &r.path, &admin).await,
            };
            let what = format!(
                "{} {name}: {status} {}",
                r.path,
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
            assert!((400..500).contains(&status), "{what}");
            assert!(ct.starts_with("application/json"), "{what} ({ct})");
            assert!(bytes.len() < 4096, "{what}: {} bytes back", bytes.len());
            let body: Value = serde_json::from_slice(&bytes).expect("JSON error body");
            assert!(body["error"]["message"].is_string(), "{what}");
            if r.openai {
                assert!(body["error"]["type"].is_string(), "{what}");
            } else {
                assert!(body["error"]["code"].is_string(), "{what}");
            }
            count += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut lat = probe.await.expect("the /health probe never failed");
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "hostile cases: {count}; /health probes {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );

    // Nothing hostile reached the log, and the chain verifies.
    let export = ts.get_text(&admin, "/api/v1/audit/export").await;
    assert!(
        !export.contains(&FILLER.repeat(4)),
        "a 10 MB string reached the log"
    );
    assert!(
        export.len() < 1 << 20,
        "the log grew by {} bytes",
        export.len()
    );
    let verify = ts.get_json(&admin, "/api/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");

    // Memory is back within the bound, and the server still serves inference.
    let rss_after = common::rss_kib();
    println!(
        "RSS before the corpus {} MiB, after {} MiB",
        rss_before >> 10,
        rss_after >> 10
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_MIB << 10,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let out = common::infer_once(&ts.client, &ts.url, &admin).await;
    assert!(out["text"].is_string(), "{out}");
    ts.stop().await;
}
