//! Prometheus metrics through the public API, against the real binary: each test spawns its
//! own `inferno serve` (the recorder is process-wide, so a process of its own is what makes
//! exact deltas possible). After a known workload every counter and histogram moves by
//! exactly what the workload did; the exposition passes `promtool check metrics`; the
//! alert rules, the scrape config and the Grafana dashboard are checked against it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{expect_error, Spawned, ADMIN_PASSWORD, TEST_MODEL_ID};
use serde_json::{json, Value};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// One parsed sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed independently of the server's own parser.
#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").expect("label");
                // Values here never hold an escaped quote (the build info has none).
                let end = after.find('"').expect("closing quote");
                labels.insert(key.to_string(), after[..end].to_string());
                rest = after[end + 1..].trim_start_matches(',');
            }
            (name, labels)
        }
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

impl Scrape {
    fn parse(text: String) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(parse_sample)
            .collect();
        Scrape { text, samples }
    }

    /// Sum of `name` over the series holding every label of `filter` (0 when none).
    fn get(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Every sample name, histograms also under their family name.
    fn families(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for s in &self.samples {
            names.insert(s.name.clone());
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(family) = s.name.strip_suffix(suffix) {
                    names.insert(family.to_string());
                }
            }
        }
        names
    }
}

fn delta(before: &Scrape, after: &Scrape, name: &str, filter: &[(&str, &str)]) -> f64 {
    after.get(name, filter) - before.get(name, filter)
}

/// promtool: `INFERNO_PROMTOOL`, then `PATH`, then where `ops/setup.sh` puts it without
/// root. Missing: a loud skip, or a failure under `CI=true`.
fn promtool() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        std::env::var("INFERNO_PROMTOOL").ok().map(PathBuf::from),
        std::env::var("PATH").ok().and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .find(|f| f.is_file())
        }),
        Some(PathBuf::from(home).join(".cache/inferno/bin/promtool")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    let message = "promtool not found: run `INFERNO_SETUP_TESTS=1 ops/setup.sh` (it extracts \
                   promtool from Debian's prometheus package) or set INFERNO_PROMTOOL";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
    None
}

/// Runs promtool with `args` (and `stdin`), asserting success; returns its output.
fn run_promtool(promtool: &PathBuf, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(format!("{MANIFEST}/ops/prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The address `inferno serve` logged for its public metrics listener.
fn public_metrics_url(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("metrics served without authentication"))
        .unwrap_or_else(|| panic!("no public metrics line in:\n{log}"));
    let addr = line
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= field");
    format!("http://{addr}")
}

struct Server {
    spawned: Spawned,
    client: reqwest::Client,
    metrics_url: String,
    _dir: Option<tempfile::TempDir>,
}

/// `inferno serve` with the test model, a public metrics listener and `extra` env.
async fn spawn(extra: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spawn_at(&dir.path().join("data"), extra).await;
    s._dir = Some(dir);
    s
}

/// [`spawn`] on `data` (a data dir that outlives the server).
async fn spawn_at(data: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let models = data.with_extension("models");
    common::link_test_model(&models);
    let models = models.to_string_lossy().to_string();
    let mut env = vec![
        ("INFERNO_MODELS__DIR", models.as_str()),
        ("INFERNO_MODELS__PARALLEL", "2"),
        ("INFERNO_MODELS__THREADS", "2"),
        ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "10000"),
        ("INFERNO_METRICS__PUBLIC_BIND", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    let spawned = common::spawn_server(data, &env).await;
    let log = std::fs::read_to_string(&spawned.stderr_log).unwrap();
    Server {
        metrics_url: public_metrics_url(&log),
        spawned,
        client: reqwest::Client::new(),
        _dir: None,
    }
}

impl Server {
    fn at(&self, path: &str) -> String {
        self.spawned.at(path)
    }

    async fn scrape(&self, key: &str) -> Scrape {
        let r = self
            .client
            .get(self.at("/metrics"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "scrape");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        Scrape::parse(r.text().await.unwrap())
    }

    async fn key(&self, token: &str, body: Value) -> String {
        let r = self
            .client
            .post(self.at("/api/v1/auth/api-keys"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create key");
        let v: Value = r.json().await.unwrap();
        v["key"].as_str().unwrap().to_string()
    }

    async fn get_status(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = self.client.get(self.at(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    }

    async fn login_status(&self, username: &str, password: &str) -> u16 {
        self.client
            .post(self.at("/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Requests, auth failures, rate limits, two real inference jobs: every family moves by
/// exactly what was done, and nothing secret reaches the exposition.
#[tokio::test]
async fn a_known_workload_moves_every_family_by_exactly_its_amount() {
    let s = spawn(&[]).await;
    let admin = s.spawned.admin_token(&s.client).await;
    let metrics_key = s
        .key(
            &admin,
            json!({"name": "scraper", "permissions": ["read_metrics"]}),
        )
        .await;
    let models_key = s
        .key(
            &admin,
            json!({"name": "no-metrics", "permissions": ["read_models"]}),
        )
        .await;
    let limited_key = s
        .key(
            &admin,
            json!({"name": "slow", "permissions": ["read_models"], "rate_limit_per_minute": 1}),
        )
        .await;
    let before = s.scrape(&metrics_key).await;

    // Authenticated reads, and two misses on a templated route.
    for _ in 0..3 {
        assert_eq!(s.get_status("/api/v1/models", Some(&admin)).await, 200);
    }
    for id in ["nope-1", "nope-2"] {
        let path = format!("/api/v1/jobs/{id}");
        assert_eq!(s.get_status(&path, Some(&admin)).await, 404);
    }
    // Failed logins, a malformed API key, no credentials, a missing permission.
    assert_eq!(s.login_status("admin", "wrong-password-123").await, 401);
    assert_eq!(s.login_status("nobody-here", "whatever-123").await, 401);
    let r = s
        .client
        .get(s.at("/api/v1/models"))
        .header("x-api-key", "not-a-key")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    let r = s.client.get(s.at("/api/v1/metrics")).send().await.unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    let r = s
        .client
        .get(s.at("/api/v1/metrics"))
        .header("x-api-key", &models_key)
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "read_metrics");
    // A key allowed one request a minute: the second is rate limited.
    for expected in [200, 429] {
        let r = s
            .client
            .get(s.at("/api/v1/models"))
            .header("x-api-key", &limited_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected);
    }
    // Two real inference jobs, one after the other.
    let mut usage = Vec::new();
    for prompt in ["The capital of France is", "Count to ten: one, two,"] {
        let r = s
            .client
            .post(s.at("/api/v1/inference"))
            .bearer_auth(&admin)
            .json(&json!({"model": TEST_MODEL_ID, "prompt": prompt, "max_tokens": 8, "temperature": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "inference");
        let v: Value = r.json().await.unwrap();
        usage.push((
            v["usage"]["prompt_tokens"].as_u64().unwrap() as f64,
            v["usage"]["completion_tokens"].as_u64().unwrap() as f64,
            v["finish_reason"].as_str().unwrap().to_string(),
        ));
    }

    let after = s.scrape(&metrics_key).await;
    let d = |name: &str, filter: &[(&str, &str)]| delta(&before, &after, name, filter);
    let req = |method: &'static str, route: &'static str, status: &'static str| {
        d(
            "inferno_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };

    // HTTP requests by route template and status.
    assert_eq!(req("GET", "/api/v1/models", "200"), 4.0);
    assert_eq!(req("GET", "/api/v1/models", "401"), 1.0);
    assert_eq!(req("GET", "/api/v1/models", "429"), 1.0);
    assert_eq!(req("GET", "/api/v1/jobs/{id}", "404"), 2.0);
    assert_eq!(req("POST", "/api/v1/auth/login", "401"), 2.0);
    assert_eq!(req("GET", "/api/v1/metrics", "401"), 1.0);
    assert_eq!(req("GET", "/api/v1/metrics", "403"), 1.0);
    assert_eq!(req("POST", "/api/v1/inference", "200"), 2.0);
    // The first scrape counts once it has answered.
    assert_eq!(req("GET", "/metrics", "200"), 1.0);
    assert_eq!(d("inferno_http_requests_total", &[]), 15.0);
    let models_route = [("method", "GET"), ("route", "/api/v1/models")];
    assert_eq!(
        d("inferno_http_request_duration_seconds_count", &models_route),
        6.0
    );
    // Raw paths never become labels.
    assert!(!after.text.contains("nope-1"), "{}", after.text);

    // Authentication failures by kind, permission refusals, rate limits.
    let fail = |credential: &'static str, reason: &'static str| {
        d(
            "inferno_auth_failures_total",
            &[("credential", credential), ("reason", reason)],
        )
    };
    assert_eq!(fail("password", "wrong_password"), 1.0);
    assert_eq!(fail("password", "unknown_user"), 1.0);
    assert_eq!(fail("api_key", "malformed"), 1.0);
    assert_eq!(fail("none", "missing"), 1.0);
    assert_eq!(d("inferno_auth_failures_total", &[]), 4.0);
    assert_eq!(
        d(
            "inferno_permission_denied_total",
            &[("permission", "read_metrics")]
        ),
        1.0
    );
    assert_eq!(d("inferno_permission_denied_total", &[]), 1.0);
    assert_eq!(
        d(
            "inferno_rate_limited_requests_total",
            &[("limit", "principal")]
        ),
        1.0
    );
    assert_eq!(d("inferno_rate_limited_requests_total", &[]), 1.0);

    // Tokens by model equal the jobs' usage; one latency observation per job, one
    // inter-token interval per generated token after the first.
    let model = [("model", TEST_MODEL_ID)];
    let prompt: f64 = usage.iter().map(|u| u.0).sum();
    let generated: f64 = usage.iter().map(|u| u.1).sum();
    assert!(generated >= 2.0, "{usage:?}");
    assert_eq!(d("inferno_prompt_tokens_total", &model), prompt);
    assert_eq!(d("inferno_generation_tokens_total", &model), generated);
    for family in [
        "inferno_time_to_first_token_seconds_count",
        "inferno_e2e_request_latency_seconds_count",
        "inferno_job_queue_wait_seconds_count",
    ] {
        assert_eq!(d(family, &model), 2.0, "{family}");
    }
    let intervals: f64 = usage.iter().map(|u| (u.1 - 1.0).max(0.0)).sum();
    assert_eq!(
        d("inferno_inter_token_latency_seconds_count", &model),
        intervals
    );
    // Each decode step feeds the prompt (one chunk, it is short) or the last sampled
    // token; the token that ends a sequence by length is never fed.
    let fed: f64 = usage
        .iter()
        .map(|(p, c, finish)| p + c - f64::from(u8::from(finish == "length")))
        .sum();
    assert_eq!(d("inferno_decode_batch_tokens_sum", &model), fed);
    let steps: f64 = usage
        .iter()
        .map(|(_, c, finish)| 1.0 + c - f64::from(u8::from(finish == "length")))
        .sum();
    assert_eq!(d("inferno_decode_batch_size_sum", &model), steps);
    assert!(d("inferno_decode_batch_size_count", &model) >= 1.0);

    // Jobs by state, runs by outcome, the engine at rest.
    assert_eq!(d("inferno_jobs", &[("state", "completed")]), 2.0);
    assert_eq!(after.get("inferno_jobs", &[("state", "queued")]), 0.0);
    assert_eq!(after.get("inferno_jobs", &[("state", "running")]), 0.0);
    assert_eq!(
        d("inferno_job_runs_total", &[("outcome", "completed")]),
        2.0
    );
    assert_eq!(after.get("inferno_models_loaded", &[]), 1.0);
    assert_eq!(after.get("inferno_slots", &model), 2.0);
    assert_eq!(after.get("inferno_busy_slots", &model), 0.0);
    assert_eq!(after.get("inferno_requests_waiting", &model), 0.0);
    assert_eq!(after.get("inferno_kv_cache_usage_ratio", &model), 0.0);
    assert!(after.has("inferno_prefix_cache_hits_total"));
    assert_eq!(after.get("inferno_prefix_cache_hits_total", &model), 0.0);
    assert!(after.has("inferno_response_cache_hits_total"));
    assert_eq!(after.get("inferno_response_cache_hits_total", &[]), 0.0);
    assert_eq!(after.get("inferno_response_cache_misses_total", &[]), 0.0);
    assert_eq!(after.get("inferno_queue_max_depth", &[]), 1024.0);
    assert!(
        after.get("inferno_event_log_head_seq", &[])
            > before.get("inferno_event_log_head_seq", &[])
    );
    assert_eq!(after.get("inferno_event_chain_broken", &[]), 0.0);

    // The build info.
    let info = after
        .samples
        .iter()
        .find(|s| s.name == "inferno_build_info")
        .expect("build info");
    assert_eq!(info.value, 1.0);
    assert_eq!(info.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        info.labels["llama_cpp_system_info"].contains("CPU"),
        "{info:?}"
    );

    // No secret, no user name of a failed login, in any label or line.
    for secret in [
        ADMIN_PASSWORD,
        admin.as_str(),
        metrics_key.as_str(),
        models_key.as_str(),
        limited_key.as_str(),
        "wrong-password-123",
        "nobody-here",
        "not-a-key",
    ] {
        assert!(!after.text.contains(secret), "{secret} in the exposition");
    }

    // The exposition passes promtool's checks (format and lint).
    if let Some(promtool) = promtool() {
        run_promtool(&promtool, &["check", "metrics"], Some(&after.text));
    }

    // The JSON summary shows the same numbers.
    let r = s
        .client
        .get(s.at("/api/v1/metrics"))
        .header("x-api-key", &metrics_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let summary: Value = r.json().await.unwrap();
    let m = summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == TEST_MODEL_ID)
        .expect("the model in the summary")
        .clone();
    assert_eq!(
        m["prompt_tokens"].as_f64(),
        Some(after.get("inferno_prompt_tokens_total", &model))
    );
    assert_eq!(
        m["generation_tokens"].as_f64(),
        Some(after.get("inferno_generation_tokens_total", &model))
    );
    assert_eq!(m["time_to_first_token"]["count"], 2);
    assert!(m["time_to_first_token"]["p50_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(m["slots"], 2);
    assert_eq!(summary["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(summary["models_loaded"], 1);
    let state = |name: &str| {
        summary["jobs"]["by_state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["count"].as_f64().unwrap())
    };
    assert_eq!(
        state("completed"),
        Some(after.get("inferno_jobs", &[("state", "completed")]))
    );
    let failures = summary["auth"]["failures"].as_array().unwrap();
    let total: f64 = failures.iter().map(|f| f["count"].as_f64().unwrap()).sum();
    assert_eq!(total, after.get("inferno_auth_failures_total", &[]));
    let route = summary["http"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/api/v1/models" && r["method"] == "GET")
        .unwrap()
        .clone();
    assert_eq!(
        route["requests"].as_f64(),
        Some(after.get("inferno_http_requests_total", &models_route))
    );
    assert_eq!(route["client_errors"], 2);
    assert!(summary.get("nats").is_none(), "{summary}");

    // Every metric the Grafana dashboard draws is in a real scrape.
    let families = after.families();
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        // Present only with [nats]: checked by the NATS test below.
        .filter(|n| !n.starts_with("inferno_nats_") && !n.starts_with("inferno_jetstream_"))
        .filter(|n| !families.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics not in a scrape: {missing:?}"
    );

    assert!(s.spawned.terminate().success());
}

/// The metric names the dashboard's queries use, histograms by family name.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{MANIFEST}/ops/prometheus/grafana-dashboard.json"))
        .expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["panels"].is_array());
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard has queries");
    let re = regex::Regex::new(r"inferno_[a-z0-9_]+").unwrap();
    let mut names = BTreeSet::new();
    for e in &exprs {
        for m in re.find_iter(e) {
            let n = m.as_str();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            names.insert(family.to_string());
        }
    }
    names
}

/// `[metrics] public_bind` serves the exposition without credentials; the API's own
/// routes need `read_metrics`.
#[tokio::test]
async fn the_public_listener_needs_no_credentials_and_the_api_routes_need_read_metrics() {
    let s = spawn(&[]).await;
    let r = s
        .client
        .get(format!("{}/metrics", s.metrics_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("# TYPE inferno_build_info gauge"), "{text}");
    assert!(text.contains("inferno_jobs{state=\"queued\"} 0"), "{text}");
    // Only /metrics there.
    let r = s
        .client
        .get(format!("{}/api/v1/models", s.metrics_url))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;

    let admin = s.spawned.admin_token(&s.client).await;
    let without = s
        .key(
            &admin,
            json!({"name": "k", "permissions": ["read_models", "view_audit_logs"]}),
        )
        .await;
    for path in ["/metrics", "/api/v1/metrics"] {
        let r = s.client.get(s.at(path)).send().await.unwrap();
        expect_error(r, 401, "AUTHENTICATION_FAILED").await;
        let r = s
            .client
            .get(s.at(path))
            .header("x-api-key", &without)
            .send()
            .await
            .unwrap();
        let body = expect_error(r, 403, "PERMISSION_DENIED").await;
        assert_eq!(body["error"]["details"]["required"], "read_metrics");
        // The admin (all permissions) may.
        assert_eq!(s.get_status(path, Some(&admin)).await, 200, "{path}");
    }
    assert!(s.spawned.terminate().success());
}

/// With `[nats]` set (here a NATS that never answers) the NATS families are present, and
/// the exposition still passes promtool.
#[tokio::test]
async fn nats_families_report_a_nats_that_is_down() {
    let s = spawn(&[
        ("INFERNO_NATS__URL", "nats://127.0.0.1:1"),
        ("INFERNO_NATS__EVENTS", "true"),
    ])
    .await;
    let r = s
        .client
        .get(format!("{}/metrics", s.metrics_url))
        .send()
        .await
        .unwrap();
    let scrape = Scrape::parse(r.text().await.unwrap());
    assert_eq!(scrape.get("inferno_nats_connected", &[]), 0.0);
    // The start-up events are committed but never reach JetStream.
    let lag = scrape.get("inferno_jetstream_publish_lag_events", &[]);
    assert!(lag >= 1.0, "lag {lag}");
    assert_eq!(
        lag,
        scrape.get("inferno_event_log_head_seq", &[]),
        "nothing acknowledged"
    );
    let families = scrape.families();
    for name in dashboard_metrics()
        .into_iter()
        .filter(|n| n.starts_with("inferno_nats_") || n.starts_with("inferno_jetstream_"))
    {
        assert!(families.contains(&name), "{name} not in the scrape");
    }
    if let Some(promtool) = promtool() {
        run_promtool(&promtool, &["check", "metrics"], Some(&scrape.text));
    }
    assert!(s.spawned.terminate().success());
}

/// The alert rules and the scrape config load in promtool, and the rules' unit tests
/// (alerts.test.yml: each alert fires on its input and not on a healthy one) pass.
#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let out = run_promtool(&promtool, &["check", "rules", "alerts.yml"], None);
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    run_promtool(&promtool, &["check", "config", "prometheus.yml"], None);
    run_promtool(&promtool, &["test", "rules", "alerts.test.yml"], None);
    let rules = std::fs::read_to_string(format!("{MANIFEST}/ops/prometheus/alerts.yml")).unwrap();
    for alert in [
        "InfernoQueueBacklog",
        "InfernoHighErrorRate",
        "InfernoEventChainBroken",
        "InfernoNatsDown",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// `inferno_events_appended_total` counts every committed event. Needs
/// `metrics::events_appended` called by the event log's writer after each commit.
#[tokio::test]
async fn events_appended_counts_every_committed_event() {
    let s = spawn(&[]).await;
    let admin = s.spawned.admin_token(&s.client).await;
    let key = s
        .key(
            &admin,
            json!({"name": "scraper", "permissions": ["read_metrics"]}),
        )
        .await;
    let before = s.scrape(&key).await;
    for _ in 0..3 {
        s.key(&admin, json!({"name": "more", "permissions": []}))
            .await;
    }
    let after = s.scrape(&key).await;
    let appended = delta(&before, &after, "inferno_events_appended_total", &[]);
    let head = delta(&before, &after, "inferno_event_log_head_seq", &[]);
    assert!(head >= 3.0);
    assert_eq!(appended, head);
    assert!(
        delta(
            &before,
            &after,
            "inferno_event_append_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(s.spawned.terminate().success());
}

/// A server opened read-only on a broken chain (`--allow-broken-tail`) reports it:
/// `inferno_event_chain_broken` is 1, the metric the chain alert fires on.
#[tokio::test]
async fn a_broken_chain_shows_in_the_chain_gauge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let healthy = spawn_at(&data, &[]).await;
    let r = healthy
        .client
        .get(format!("{}/metrics", healthy.metrics_url))
        .send()
        .await
        .unwrap();
    let scrape = Scrape::parse(r.text().await.unwrap());
    assert_eq!(scrape.get("inferno_event_chain_broken", &[]), 0.0);
    assert!(healthy.spawned.terminate().success());
    let out = common::run_cli(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("verify report");
    let head = report["head_seq"].as_u64().unwrap();

    // Corrupt the newest event (as tests/cli.rs does), then open it read-only.
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
    let log = dir.path().join("broken.log");
    let mut child = Command::new(common::inferno_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--allow-broken-tail",
            "--data-dir",
        ])
        .arg(&data)
        .env("INFERNO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("INFERNO_METRICS__PUBLIC_BIND", "127.0.0.1:0")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut url = None;
    for _ in 0..400 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if common::listening_url(&text).is_some() {
            url = Some(public_metrics_url(&text));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let url = url.unwrap_or_else(|| panic!("{}", std::fs::read_to_string(&log).unwrap()));
    let r = reqwest::get(format!("{url}/metrics")).await.unwrap();
    let scrape = Scrape::parse(r.text().await.unwrap());
    assert_eq!(scrape.get("inferno_event_chain_broken", &[]), 1.0);
    child.kill().unwrap();
    child.wait().unwrap();
}
