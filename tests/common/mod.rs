//! The one harness every integration test uses: the real server, in-process, on port 0,
//! with a temporary data dir.
#![allow(dead_code)]

pub mod leak;
pub mod rfc6962;
pub mod sse;

use std::path::PathBuf;
use std::time::Duration;

use inferno::config::Config;
use inferno::server::{RunningServer, StartOptions};
use serde_json::{json, Value};

/// The bootstrap admin's password in every test server.
pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple";

pub struct TestServer {
    pub cfg: Config,
    pub url: String,
    pub client: reqwest::Client,
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
}

/// A config for tests: port 0, temporary data dir, quiet logs.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut cfg = Config::default();
    cfg.server.bind = "127.0.0.1:0".into();
    cfg.storage.data_dir = dir.path().join("data");
    cfg.models.dir = dir.path().join("models");
    cfg.models.threads = 1;
    if let Some(server) = std::env::var("INFERNO_TEST_CLUSTER")
        .ok()
        .filter(|s| !s.is_empty())
    {
        cluster_mode(&mut cfg, &server);
    }
    cfg
}

/// `INFERNO_TEST_CLUSTER=postgres://user@host:port`: every test server is a cluster node on
/// a fresh database of that PostgreSQL server (its shared log), so the whole API suite runs
/// against the shared log (README, "Cluster mode").
fn cluster_mode(cfg: &mut Config, server: &str) {
    let name = format!("inferno_suite_{}", uuid::Uuid::new_v4().simple());
    let out = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "create database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cfg.storage.backend = "postgres".into();
    cfg.storage.url = Some(inferno::config::Secret::new(format!("{server}/{name}")));
    cfg.cluster.node_id = Some("suite-node".into());
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(&dir);
    edit(&mut cfg);
    start_config(cfg, dir).await
}

pub async fn start_config(cfg: Config, dir: tempfile::TempDir) -> TestServer {
    start_full(cfg, dir, None).await
}

/// A server on a shared engine (one model load per test binary).
pub async fn start_with_engine(
    engine: std::sync::Arc<dyn inferno::inference::Engine>,
    edit: impl FnOnce(&mut Config),
) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(&dir);
    edit(&mut cfg);
    start_full(cfg, dir, Some(engine)).await
}

pub async fn start_full(
    cfg: Config,
    dir: tempfile::TempDir,
    engine: Option<std::sync::Arc<dyn inferno::inference::Engine>>,
) -> TestServer {
    // INFERNO_TEST_LOG=debug shows the servers' logs in failing tests' output.
    if let Ok(level) = std::env::var("INFERNO_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_test_writer()
            .try_init();
    }
    leak::install_log();
    leak::secret("password", ADMIN_PASSWORD);
    let opts = StartOptions {
        admin_username: Some("admin".into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        allow_broken_tail: false,
        engine,
    };
    let server = inferno::server::start(cfg.clone(), opts)
        .await
        .expect("server starts");
    let url = server.url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        // Only for TLS servers with test certificates; TLS tests build verifying clients.
        .danger_accept_invalid_certs(cfg.server.tls.is_some())
        .build()
        .expect("client");
    let ts = TestServer {
        cfg,
        url,
        client,
        server: Some(server),
        dir,
    };
    ts.wait_ready().await;
    ts
}

impl TestServer {
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.at("/ready")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
    }

    /// Logs in and returns the JWT.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .client
            .post(self.at("/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login request");
        assert_eq!(resp.status(), 200, "login as {username}");
        let body: Value = resp.json().await.expect("login body");
        let token = body["token"].as_str().expect("token").to_string();
        leak::secret("password", password);
        leak::secret("jwt", &token);
        token
    }

    /// The events of these types (comma-separated), oldest first, through the audit API.
    pub async fn events(&self, token: &str, types: &str) -> Vec<Value> {
        let r = self
            .client
            .get(self.at(&format!("/api/v1/audit/events?type={types}&limit=1000")))
            .bearer_auth(token)
            .send()
            .await
            .expect("audit request");
        assert_eq!(r.status(), 200, "audit query for {types}");
        let body: Value = r.json().await.expect("audit body");
        body["events"].as_array().expect("events").clone()
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Creates a user with `role` and extra permissions; returns (user id, JWT).
    pub async fn user_with(&self, name: &str, role: &str, extra: &[&str]) -> (String, String) {
        let admin = self.admin_token().await;
        let password = format!("{name}-password-1234");
        leak::secret("password", &password);
        let resp = self
            .client
            .post(self.at("/api/v1/users"))
            .bearer_auth(&admin)
            .json(&json!({
                "username": name, "password": password, "role": role,
                "extra_permissions": extra,
            }))
            .send()
            .await
            .expect("create user");
        assert_eq!(resp.status(), 201, "create user {name}");
        let body: Value = resp.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_string();
        (id, self.login(name, &password).await)
    }

    /// Creates an API key with these permissions using `token`; returns (id, key).
    pub async fn api_key(&self, token: &str, permissions: &[&str]) -> (String, String) {
        let resp = self
            .client
            .post(self.at("/api/v1/auth/api-keys"))
            .bearer_auth(token)
            .json(&json!({ "name": "test-key", "permissions": permissions }))
            .send()
            .await
            .expect("create key");
        assert_eq!(resp.status(), 201, "create key");
        let body: Value = resp.json().await.unwrap();
        leak::secret("api_key", body["key"].as_str().unwrap_or_default());
        (
            body["id"].as_str().unwrap().to_string(),
            body["key"].as_str().unwrap().to_string(),
        )
    }

    /// Stops the server and starts a new one on the same data dir.
    pub async fn restart(self) -> TestServer {
        let cfg = self.cfg.clone();
        let dir = self.stop().await;
        start_config(cfg, dir).await
    }

    pub fn state(&self) -> &inferno::server::AppState {
        &self.server.as_ref().expect("running").state
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            leak::dump_store(s.state.store());
            s.shutdown().await.expect("clean shutdown");
        }
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

/// A test that ends without `stop()` still leaves its server's output to the leak scan.
impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            leak::dump_store(s.state.store());
        }
    }
}

/// The test model (`INFERNO_TEST_MODEL`, else `models/` of the checkout).
pub fn test_model_path() -> PathBuf {
    let path = std::env::var("INFERNO_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "test model missing at {}: run ops/fetch-model.sh",
        path.display()
    );
    path
}

/// The id the test model gets in [`link_test_model`]'s models dir.
pub const TEST_MODEL_ID: &str = "gemma-3-270m-q4_k_m";

/// Makes `dir` a models dir holding the test model (a symlink) as [`TEST_MODEL_ID`].
pub fn link_test_model(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let link = dir.join(format!("{TEST_MODEL_ID}.gguf"));
    if !link.exists() {
        std::os::unix::fs::symlink(test_model_path(), link).unwrap();
    }
}

/// A config edit for [`start_with`]: the test model in the server's models dir.
pub fn with_test_model(cfg: &mut Config) {
    link_test_model(&cfg.models.dir);
}

/// Runs one short greedy inference on the test model at `url` and returns its body, so
/// that the log holds real inference events (timings, sampling parameters).
pub async fn infer_once(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let r = client
        .post(format!("{url}/api/v1/inference"))
        .bearer_auth(token)
        .json(&json!({
            "model": TEST_MODEL_ID, "prompt": "The capital of France is", "max_tokens": 4,
            "temperature": 0.7, "top_p": 0.95, "seed": 7, "stop": ["\n\n"],
        }))
        .send()
        .await
        .expect("inference request");
    assert_eq!(r.status(), 200, "inference");
    let body: Value = r.json().await.expect("inference body");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{body}"
    );
    body
}

/// [`infer_once`] that returns the job id, or `None` when the server did not answer 200.
pub async fn try_infer(client: &reqwest::Client, url: &str, token: &str) -> Option<String> {
    let r = client
        .post(format!("{url}/api/v1/inference"))
        .bearer_auth(token)
        .json(&json!({"model": TEST_MODEL_ID, "prompt": "Count to ten:", "max_tokens": 4}))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let body: Value = r.json().await.ok()?;
    body["id"].as_str().map(str::to_string)
}

impl TestServer {
    /// GET `path` with `token`; asserts 200 and returns the body as text.
    pub async fn get_text(&self, token: &str, path: &str) -> String {
        let r = self
            .client
            .get(self.at(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().await.expect("body")
    }

    /// GET `path` with `token`; asserts 200 and returns the body.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let text = self.get_text(token, path).await;
        serde_json::from_str(&text).expect("JSON body")
    }

    /// `POST /api/v1/jobs` with `body`; asserts 202 and returns the job id.
    pub async fn queue_job(&self, token: &str, body: &Value) -> String {
        let r = self
            .client
            .post(self.at("/api/v1/jobs"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/jobs");
        assert_eq!(r.status(), 202, "queue a job");
        let v: Value = r.json().await.expect("job body");
        v["job_id"].as_str().expect("job_id").to_string()
    }

    /// [`infer_once`] on this server.
    pub async fn infer_once(&self, token: &str) -> Value {
        infer_once(&self.client, &self.url, token).await
    }
}

/// The README's Python recipe for checking an export ("Verifying a hash yourself").
pub fn readme_recipe() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = "```python\n# verify_export.py";
    let start = readme.find(marker).expect("the recipe is in the README") + "```python\n".len();
    let end = start + readme[start..].find("```").expect("the recipe block ends");
    readme[start..end].to_string()
}

/// Runs the README's recipe with `ndjson` (an export) on stdin: (exit success, output).
pub fn run_readme_recipe(ndjson: &[u8]) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(readme_recipe())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let input = ndjson.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Paths in `v` that hold a JSON number that is not an integer.
pub fn floats_in(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => out.push(format!("{path}={n}")),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                floats_in(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                floats_in(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// A response's content type ("" when it has none).
pub fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// This process's resident memory in KiB (in-process servers count in it).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Asserts the documented error body and returns it.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = content_type(&resp);
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].is_string(), "body: {body}");
    let details = &body["error"]["details"];
    assert!(details.is_null() || details.is_object(), "body: {body}");
    body
}

/// The real `inferno` binary as a child process.
pub struct Spawned {
    pub child: std::process::Child,
    pub url: String,
    pub stderr_log: PathBuf,
    pub data_dir: PathBuf,
}

pub fn inferno_bin() -> &'static str {
    env!("CARGO_BIN_EXE_inferno")
}

/// The `http://` URL in the server's "inferno listening" log line (text or JSON format).
pub fn listening_url(log: &str) -> Option<String> {
    let pos = log.find("inferno listening")?;
    let line = log[pos..].lines().next().unwrap_or_default();
    if let Some(addr) = line
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .find_map(|w| w.strip_prefix("addr="))
    {
        return Some(format!("http://{addr}"));
    }
    let i = line.find("\"addr\":")?;
    let addr: String = line[i + 8..].chars().take_while(|c| *c != '"').collect();
    Some(format!("http://{addr}"))
}

/// Starts `inferno serve` on port 0 with `data_dir`, extra env, and waits for readiness.
pub async fn spawn_server(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Spawned {
    spawn_server_under(&[], data_dir, env).await
}

/// [`spawn_server`] run by `wrapper` (e.g. `strace ... --`): the child is the wrapper.
pub async fn spawn_server_under(
    wrapper: &[&str],
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Spawned {
    let stderr_log = data_dir.with_extension(format!("stderr-{}.log", uuid::Uuid::new_v4()));
    let stderr = std::fs::File::create(&stderr_log).unwrap();
    let mut cmd = match wrapper.split_first() {
        None => std::process::Command::new(inferno_bin()),
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(inferno_bin());
            c
        }
    };
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("INFERNO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("INFERNO_LOGGING__LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn inferno");
    // The listening address is logged once bound.
    let mut url = None;
    for _ in 0..400 {
        url = listening_url(&std::fs::read_to_string(&stderr_log).unwrap_or_default());
        if url.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = url.unwrap_or_else(|| {
        panic!(
            "inferno did not report its address: {}",
            std::fs::read_to_string(&stderr_log).unwrap_or_default()
        )
    });
    Spawned {
        child,
        url,
        stderr_log,
        data_dir: data_dir.to_path_buf(),
    }
}

impl Spawned {
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Logs in as the bootstrap admin; returns the JWT.
    pub async fn admin_token(&self, client: &reqwest::Client) -> String {
        let r = client
            .post(self.at("/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("login request");
        assert_eq!(r.status(), 200, "admin login");
        let body: Value = r.json().await.expect("login body");
        let token = body["token"].as_str().expect("token").to_string();
        leak::secret("jwt", &token);
        token
    }

    /// GET `path` with a bearer `token`; the JSON body, whatever the status.
    pub async fn get_json(&self, client: &reqwest::Client, token: &str, path: &str) -> Value {
        client
            .get(self.at(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON body")
    }

    /// GET `path` without a credential; the JSON body, whatever the status.
    pub async fn public_json(&self, client: &reqwest::Client, path: &str) -> Value {
        let r = client.get(self.at(path)).send().await.expect("GET");
        r.json().await.expect("JSON body")
    }

    /// SIGTERM and wait (graceful).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails half-way leaves no server behind.
impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        leak::dump_spawned(&self.stderr_log, &self.data_dir);
    }
}

/// Every event of `event_type` that `inferno audit export` prints for a stopped data dir.
pub fn exported_events(data_dir: &str, event_type: &str) -> Vec<Value> {
    let out = run_cli(&[
        "audit",
        "export",
        "--data-dir",
        data_dir,
        "--type",
        event_type,
    ]);
    assert!(out.status.success(), "audit export");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

/// Runs `inferno <args>` to completion.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(inferno_bin())
        .args(args)
        .output()
        .expect("run inferno")
}
