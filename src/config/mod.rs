//! One typed configuration: defaults, then a TOML file, then `INFERNO_` environment
//! variables (`__` nests: `INFERNO_SERVER__BIND=0.0.0.0:8080`).
//!
//! Unknown keys are an error that names the key. Secrets are wrapped in [`Secret`], whose
//! `Debug` and `Display` print `***`, so a config dump never leaks them.
//!
//! Some settings can also change while the server runs (`PATCH /api/v1/config`): see
//! [`live`], which records each change in the event log and replays it over the file and
//! environment at start-up.

mod gpu;
pub mod live;

pub use gpu::{GpuLayers, GPU_BACKEND};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A string that never shows itself in `Debug` or `Display` output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub models: ModelsConfig,
    pub queue: QueueConfig,
    pub stream: StreamConfig,
    /// Absent means no NATS.
    pub nats: Option<NatsConfig>,
    pub logging: LoggingConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub cache: CacheConfig,
    pub cluster: ClusterConfig,
    /// Where each value came from (`file` or `env`; absent keys are defaults). Filled by
    /// [`Config::load`]; not configuration itself.
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
}

/// Where an effective setting came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    /// A command-line flag (`--bind`, `--data-dir`).
    Cli,
    /// `PATCH /api/v1/config`, replayed from the event log at start-up.
    Runtime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    /// Origins allowed by CORS; empty means no CORS headers at all.
    pub cors_origins: Vec<String>,
    pub cors_methods: Vec<String>,
    pub cors_headers: Vec<String>,
    /// Largest request body accepted, counted on the streamed bytes (not Content-Length).
    pub max_body_bytes: u64,
    /// How long in-flight requests may run after SIGINT/SIGTERM before the server exits.
    pub shutdown_timeout_secs: u64,
    /// A request head (line and headers) must arrive within this many seconds of its
    /// first byte (of the accept, on a new connection); else 408 and the connection closes.
    pub header_timeout_secs: u64,
    /// A connection silent this long after the server's last response is closed.
    pub idle_timeout_secs: u64,
    /// Longest wait for the next chunk of a request body before the request fails (408).
    pub body_timeout_secs: u64,
    /// Largest request head in bytes; beyond it 431 and the connection closes.
    pub max_header_bytes: usize,
    /// Most header lines in a request head (hyper's own limit is 100).
    pub max_headers: usize,
    /// Absent means plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            cors_origins: Vec::new(),
            cors_methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            cors_headers: vec![
                "Authorization".into(),
                "Content-Type".into(),
                "X-API-Key".into(),
            ],
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_timeout_secs: 30,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            body_timeout_secs: 30,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// "1.2" (default; 1.3 is preferred when the client offers it) or "1.3".
    #[serde(default = "default_tls_min")]
    pub min_version: String,
}

fn default_tls_min() -> String {
    "1.2".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret, at least 32 bytes; when absent one is generated once and kept in the
    /// data dir (mode 0600).
    pub jwt_secret: Option<Secret>,
    pub token_ttl_hours: u64,
    /// Failed logins allowed per minute per (username, client IP), and per client IP;
    /// successful logins do not count.
    pub login_attempts_per_minute: u32,
    /// Failed authentications (bad JWT or API key) allowed per minute per client IP; over
    /// it, requests with credentials from that IP get 429 until the budget refills.
    pub failed_auth_per_minute: u32,
    /// Failed authentications are recorded in aggregate: at most one
    /// `auth.authentication_failed` event per client IP per this many seconds, with a count.
    pub failure_event_window_secs: u64,
    /// Live (not revoked, not expired) API keys one user may hold.
    pub max_keys_per_user: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_hours: 24,
            login_attempts_per_minute: 10,
            failed_auth_per_minute: 30,
            failure_event_window_secs: 60,
            max_keys_per_user: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_prompt_chars: usize,
    /// Requests per minute per principal (API key, or user for JWTs).
    pub requests_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_prompt_chars: 10_000,
            requests_per_minute: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// "embedded" (the log in the data dir only) or "postgres" (cluster mode: the log in
    /// PostgreSQL at `url`, the data dir a local copy).
    pub backend: String,
    /// PostgreSQL URL when `backend = "postgres"`; may hold a password.
    pub url: Option<Secret>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            backend: "embedded".into(),
            url: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in events, `/ready` and the queue; default: the hostname and a
    /// hash of the data dir's path.
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Folder scanned for `*.gguf`; the model id is the file stem.
    pub dir: PathBuf,
    /// Model used when a request names none.
    pub default: Option<String>,
    /// Concurrent sequences (slots) per loaded model.
    pub parallel: usize,
    /// llama.cpp threads per model; 0 means the number of cores.
    pub threads: usize,
    /// Context tokens per slot.
    pub ctx_per_slot: u32,
    /// Models kept loaded at once; the least recently used idle one is unloaded first.
    pub max_loaded: usize,
    /// Largest model upload, counted on the streamed bytes.
    pub max_upload_bytes: u64,
    /// Requests per model that may wait for a free slot; beyond it a request fails at once
    /// with 503 and Retry-After. 0 = none wait: only free slots take requests.
    pub max_waiting: usize,
    /// Longest a request waits for a free slot before it fails with 503 and Retry-After.
    pub max_wait_secs: u64,
    /// Layers of each model offloaded to the GPU: a number or "all". Default: all on a
    /// build with a GPU backend (`--features cuda|vulkan|metal`), 0 on the CPU build.
    pub gpu_layers: GpuLayers,
    /// The GPU that holds the model (and its KV cache) when layers are offloaded.
    pub main_gpu: u32,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./models"),
            default: None,
            parallel: 4,
            threads: 0,
            ctx_per_slot: 2048,
            max_loaded: 2,
            max_upload_bytes: 32 * 1024 * 1024 * 1024,
            max_waiting: 64,
            max_wait_secs: 300,
            gpu_layers: GpuLayers::build_default(),
            main_gpu: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// "embedded" or "postgres".
    pub backend: String,
    /// PostgreSQL URL when `backend = "postgres"`; may hold a password.
    pub url: Option<Secret>,
    /// Jobs queued or running at most; beyond it clients get 503 with Retry-After and
    /// nothing is queued.
    pub max_depth: usize,
    /// Queued jobs one user may hold; beyond it 429 with Retry-After.
    pub max_queued_per_principal: usize,
    /// Attempts before a job that keeps failing (or losing its worker) is `dead`.
    pub max_attempts: u32,
    /// A running job whose worker has not been heard from for this long is re-queued.
    pub lease_secs: u64,
    /// Finished jobs (and their stored results) are purged after this many hours.
    pub retention_hours: u64,
    /// Longest one attempt may run before it fails.
    pub job_timeout_secs: u64,
    /// Jobs run at once by this node's worker; 0 = `[models] parallel` (one model's slots),
    /// so priorities decide at every free slot.
    pub concurrency: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            url: None,
            max_depth: 1024,
            max_queued_per_principal: 256,
            max_attempts: 3,
            lease_secs: 30,
            retention_hours: 168,
            job_timeout_secs: 600,
            concurrency: 0,
        }
    }
}

/// `[stream]`: server-sent token streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Tokens a live consumer may fall behind before it continues from storage.
    pub max_lag: usize,
    /// Open streams at most; beyond it 503 with Retry-After.
    pub max_streams: usize,
    /// Seconds between keep-alive comments.
    pub keep_alive_secs: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_lag: 256,
            max_streams: 1024,
            keep_alive_secs: 15,
        }
    }
}

/// `[nats]`: token and job lifecycle publishing to core NATS, and with `events` a copy of
/// the event log in JetStream. NATS being down never stops the server (see `src/nats/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:4222` (or `tls://`, several comma-separated); may hold
    /// `user:password@`, so it is a secret.
    pub url: Secret,
    /// A `.creds` file (user JWT and NKey seed) for a server that authenticates that way.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Token for a server that authenticates by token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Also publish every committed audit event to the JetStream stream `INFERNO_EVENTS`.
    #[serde(default)]
    pub events: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// "text" or "json".
    pub format: String,
    /// tracing filter, e.g. "info" or "inferno=debug,info".
    pub level: String,
    /// When set, logs also go to a daily-rolling file in this folder.
    pub dir: Option<PathBuf>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Store prompt and output text in inference events (default: SHA-256 and length only).
    pub record_content: bool,
    /// The Ed25519 note key that signs checkpoints of the log's Merkle tree (a C2SP
    /// signed-note private key, as `inferno audit keygen` writes it). Keep it outside the
    /// data dir: unset, one is generated once into `<data_dir>/audit-signing.key` and then
    /// shares the data dir's trust.
    pub signing_key: Option<PathBuf>,
    /// The checkpoint origin (and key name) a generated key gets; default
    /// `inferno/<16 random hex digits>`.
    pub origin: Option<String>,
    /// Sign a checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or this many seconds after the last one, when events came since.
    pub checkpoint_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            record_content: false,
            signing_key: None,
            origin: None,
            checkpoint_every: 1000,
            checkpoint_secs: 60,
        }
    }
}

/// `[metrics]`: Prometheus metrics. `GET /metrics` on the API address always needs the
/// `read_metrics` permission; `public_bind` adds a listener that serves it without.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Also serve `GET /metrics` without authentication, over plain HTTP, on this address
    /// (e.g. `127.0.0.1:9464`) for scrapers. Unset: no such listener.
    pub public_bind: Option<String>,
}

/// `[cache]`: the prompt-prefix KV cache and the response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Slots keep a finished sequence's KV cells, and a prompt that starts with the same
    /// tokens prefills only the rest. Needs a restart (it shapes the llama.cpp context).
    pub prompt_prefix: bool,
    /// Cache the answers of deterministic requests (temperature 0, or a `seed`) in the data
    /// dir; a hit answers without running the model.
    pub responses: bool,
    /// Largest total size of cached answers; the least recently used go first.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prompt_prefix: true,
            responses: false,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why a configuration could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file` (when given), then `INFERNO_*__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`] with an explicit environment, so precedence is testable.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only nested keys are configuration; INFERNO_ADMIN_PASSWORD and friends are not.
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("INFERNO_") && k.contains("__"))
            .collect();
        figment = figment.merge(EnvVars(vars));
        let mut config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        config.sources = live::leaves(&config)
            .into_keys()
            .filter_map(|key| {
                let meta = figment.find_metadata(&key)?;
                let source = if meta.name == ENV_PROVIDER {
                    Source::Env
                } else if matches!(meta.source, Some(figment::Source::File(_))) {
                    Source::File
                } else {
                    return None;
                };
                Some((key, source))
            })
            .collect();
        Ok(config)
    }

    /// `[cluster] node_id`, or the hostname and the first 8 hex digits of SHA-256 over the
    /// data dir's canonical path (two nodes on one host differ by their data dirs).
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.cluster.node_id {
            return id.clone();
        }
        use sha2::{Digest, Sha256};
        let data_dir = &self.storage.data_dir;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let digest = hex::encode(Sha256::digest(dir.to_string_lossy().as_bytes()));
        format!("{host}-{}", &digest[..8])
    }

    /// Where `key` (dotted, e.g. `limits.requests_per_minute`) came from.
    pub fn source_of(&self, key: &str) -> Source {
        self.sources.get(key).copied().unwrap_or(Source::Default)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        self.metrics_public_addr()?;
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "logging.format must be \"text\" or \"json\", not {:?}",
                self.logging.format
            )));
        }
        if !matches!(self.queue.backend.as_str(), "embedded" | "postgres") {
            return Err(ConfigError::Invalid(format!(
                "queue.backend must be \"embedded\" or \"postgres\", not {:?}",
                self.queue.backend
            )));
        }
        match (self.storage.backend.as_str(), &self.storage.url) {
            ("embedded", _) | ("postgres", Some(_)) => {}
            ("postgres", None) => {
                return Err(ConfigError::Invalid(
                    "storage.url is required with storage.backend = \"postgres\"".into(),
                ))
            }
            (other, _) => {
                return Err(ConfigError::Invalid(format!(
                    "storage.backend must be \"embedded\" or \"postgres\", not {other:?}"
                )))
            }
        }
        if let Some(node) = &self.cluster.node_id {
            if node.is_empty()
                || node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ConfigError::Invalid(format!(
                    "cluster.node_id must be 1-64 letters, digits, '-', '_' or '.', not {node:?}"
                )));
            }
        }
        if let Some(tls) = &self.server.tls {
            if !matches!(tls.min_version.as_str(), "1.2" | "1.3") {
                return Err(ConfigError::Invalid(format!(
                    "server.tls.min_version must be \"1.2\" or \"1.3\", not {:?}",
                    tls.min_version
                )));
            }
        }
        if self.queue.max_depth == 0
            || self.queue.max_queued_per_principal == 0
            || self.queue.max_attempts == 0
            || self.queue.lease_secs == 0
            || self.queue.job_timeout_secs == 0
        {
            return Err(ConfigError::Invalid(
                "queue.max_depth, queue.max_queued_per_principal, queue.max_attempts, \
                 queue.lease_secs and queue.job_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if self.cache.max_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "cache.max_bytes must be at least 1024, not {}",
                self.cache.max_bytes
            )));
        }
        if self.audit.checkpoint_every == 0 || self.audit.checkpoint_secs == 0 {
            return Err(ConfigError::Invalid(
                "audit.checkpoint_every and audit.checkpoint_secs must be at least 1".into(),
            ));
        }
        if let Some(origin) = &self.audit.origin {
            if origin.is_empty() || origin.contains('+') || origin.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::Invalid(format!(
                    "audit.origin must be non-empty, without spaces or '+', not {origin:?}"
                )));
            }
        }
        if self.models.parallel == 0 {
            return Err(ConfigError::Invalid(
                "models.parallel must be at least 1".into(),
            ));
        }
        if self.models.main_gpu >= gpu::MAX_DEVICES {
            return Err(ConfigError::Invalid(format!(
                "models.main_gpu must be a device index below {}, not {}",
                gpu::MAX_DEVICES,
                self.models.main_gpu
            )));
        }
        if self.models.max_wait_secs == 0 {
            return Err(ConfigError::Invalid(
                "models.max_wait_secs must be at least 1".into(),
            ));
        }
        if let Some(nats) = &self.nats {
            // The message never repeats the URL: it may hold a password.
            let urls = nats.url.expose().split(',').map(str::trim);
            if urls
                .clone()
                .any(|u| u.parse::<async_nats::ServerAddr>().is_err())
            {
                return Err(ConfigError::Invalid(
                    "nats.url must be a NATS server URL such as nats://127.0.0.1:4222".into(),
                ));
            }
            if nats.credentials.is_some() && nats.token.is_some() {
                return Err(ConfigError::Invalid(
                    "nats.credentials and nats.token are exclusive: set one".into(),
                ));
            }
        }
        for (key, value) in [
            (
                "limits.requests_per_minute",
                self.limits.requests_per_minute as u64,
            ),
            (
                "limits.max_prompt_chars",
                self.limits.max_prompt_chars as u64,
            ),
            (
                "auth.login_attempts_per_minute",
                self.auth.login_attempts_per_minute as u64,
            ),
            (
                "auth.failed_auth_per_minute",
                self.auth.failed_auth_per_minute as u64,
            ),
            ("models.max_upload_bytes", self.models.max_upload_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(ConfigError::Invalid(format!(
                "logging.level must be a tracing filter such as \"info\" or \"inferno=debug,info\", not {:?}",
                self.logging.level
            )));
        }
        for origin in &self.server.cors_origins {
            if !valid_origin(origin) {
                return Err(ConfigError::Invalid(format!(
                    "server.cors_origins: {origin:?} is not an origin such as https://app.example.com"
                )));
            }
        }
        if self.server.header_timeout_secs == 0
            || self.server.idle_timeout_secs == 0
            || self.server.body_timeout_secs == 0
            || self.server.max_header_bytes < 1024
            || !(1..=100).contains(&self.server.max_headers)
        {
            return Err(ConfigError::Invalid(
                "server.header_timeout_secs, idle_timeout_secs and body_timeout_secs must be at \
                 least 1, server.max_header_bytes at least 1024, server.max_headers 1 to 100"
                    .into(),
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// `[metrics] public_bind` as an address, when set.
    pub fn metrics_public_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(bind) = &self.metrics.public_bind else {
            return Ok(None);
        };
        bind.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics.public_bind must be an address like 127.0.0.1:9464, not {bind:?}"
            ))
        })
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.bind must be an address like 127.0.0.1:8080, not {:?}",
                self.server.bind
            ))
        })
    }

    /// The configuration as TOML with secrets masked, for `inferno config show`-style dumps.
    pub fn redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).unwrap_or(toml::Value::Boolean(false));
        let secrets: Vec<(&str, &str)> = live::SECRET_KEYS
            .iter()
            .filter_map(|k| k.split_once('.'))
            .collect();
        mask(&mut value, &secrets);
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

/// `scheme://host[:port]` with nothing after it (what browsers send in `Origin`).
fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '@'])
}

fn mask(value: &mut toml::Value, paths: &[(&str, &str)]) {
    for (section, key) in paths {
        if let Some(v) = value.get_mut(*section).and_then(|t| t.get_mut(*key)) {
            *v = toml::Value::String("***".into());
        }
    }
}

const ENV_PROVIDER: &str = "INFERNO_ environment variable";

/// Environment provider over an explicit list of variables (so tests need not touch the
/// process environment), with figment's `__` nesting and lower-cased keys.
struct EnvVars(Vec<(String, String)>);

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_PROVIDER)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, raw) in &self.0 {
            let key = key.trim_start_matches("INFERNO_").to_ascii_lowercase();
            let path: Vec<&str> = key.split("__").collect();
            let value: figment::value::Value = raw.parse().expect("figment values parse");
            insert_path(&mut dict, &path, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[&str], value: figment::value::Value) {
    use figment::value::{Tag, Value};
    if path.len() == 1 {
        dict.insert(path[0].to_string(), value);
        return;
    }
    let entry = dict
        .entry(path[0].to_string())
        .or_insert_with(|| Value::Dict(Tag::Default, figment::value::Dict::new()));
    if let Value::Dict(_, inner) = entry {
        insert_path(inner, &path[1..], value);
    }
}

/// Turns figment's error into one line that names the key, e.g.
/// `unknown field `bnd` in server (from /etc/inferno.toml)`.
fn describe(err: figment::Error) -> ConfigError {
    let mut parts = Vec::new();
    for e in err {
        let key = e.path.join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(src) => format!("{} {}", m.name, src),
                None => m.name.to_string(),
            })
            .unwrap_or_default();
        let kind = e.kind.to_string();
        let mut msg = if key.is_empty() {
            kind
        } else {
            format!("{kind} at key `{key}`")
        };
        if !source.is_empty() {
            msg.push_str(&format!(" (from {source})"));
        }
        parts.push(msg);
    }
    ConfigError::Invalid(parts.join("; "))
}
