//! Wiring and lifecycle: builds the shared [`AppState`], binds the listener (plain or TLS),
//! serves until SIGINT/SIGTERM, then finishes in-flight requests up to a timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, AcceptorExt, TcpAcceptor};
use poem::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::checkpoint::CheckpointSigner;
use crate::audit::checkpointer::Checkpointer;
use crate::auth::AuthService;
use crate::cache::ResponseCache;
use crate::config::live::LiveConfig;
use crate::config::Config;
use crate::events::{EventStore, StoreOptions};
use crate::inference::catalog::Catalog;
use crate::inference::runner::Runner;
use crate::inference::{Engine, EngineConfig, LlamaEngine};
use crate::nats::Nats;
use crate::queue::{EmbeddedQueue, JobQueue, WorkerHandle};
use crate::ratelimit::RateLimits;
use crate::stream::{StreamHub, StreamSettings};

struct Inner {
    /// The effective configuration; some of it changes live (`PATCH /api/v1/config`).
    config: LiveConfig,
    ready: AtomicBool,
    store: EventStore,
    auth: Arc<AuthService>,
    limits: RateLimits,
    engine: Arc<dyn Engine>,
    catalog: Arc<Catalog>,
    runner: Arc<Runner>,
    queue: Arc<EmbeddedQueue>,
    streams: Arc<StreamHub>,
    connections: crate::api::conn::Connections,
    /// Present when `[nats]` is set.
    nats: Option<Nats>,
    /// Signed checkpoints of the log's Merkle tree.
    checkpoints: Arc<Checkpointer>,
    responses: Arc<ResponseCache>,
    /// `[cluster] node_id` (or its default), worked out once at start.
    node_id: String,
}

/// Start-up choices that are not configuration.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Username of the first admin on an empty data dir (default `admin`).
    pub admin_username: Option<String>,
    /// Password of the first admin; when absent one is generated and printed once.
    pub admin_password: Option<String>,
    /// Start even when the tail of the event chain does not verify.
    pub allow_broken_tail: bool,
    /// An engine to use instead of building one from `[models]` (tests share one loaded
    /// model across servers this way).
    pub engine: Option<Arc<dyn Engine>>,
}

impl StartOptions {
    /// From `INFERNO_ADMIN_USERNAME` and `INFERNO_ADMIN_PASSWORD`.
    pub fn from_env() -> Self {
        Self {
            admin_username: std::env::var("INFERNO_ADMIN_USERNAME").ok(),
            admin_password: std::env::var("INFERNO_ADMIN_PASSWORD").ok(),
            allow_broken_tail: false,
            engine: None,
        }
    }
}

/// Everything a handler may reach, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// The effective configuration now (file ▸ env ▸ runtime changes).
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.get()
    }

    /// The configuration that can change live, and its history of changes.
    pub fn live_config(&self) -> &LiveConfig {
        &self.inner.config
    }

    /// Pushes the live settings of `config` into the parts that keep their own copy (the
    /// rest read [`AppState::config`] per request).
    pub fn apply_live(&self, config: &Config) {
        let i = &self.inner;
        i.limits.set_limits(
            config.limits.requests_per_minute,
            config.auth.login_attempts_per_minute,
            config.auth.failed_auth_per_minute,
        );
        i.auth
            .set_default_rate_limit(config.limits.requests_per_minute);
        i.runner
            .set_limits(config.limits.max_prompt_chars, config.audit.record_content);
        i.queue.set_limits(
            config.queue.max_depth,
            config.queue.max_queued_per_principal,
            config.audit.record_content,
        );
        i.responses
            .set_limits(config.cache.responses, config.cache.max_bytes);
        if let Err(e) = crate::logging::set_level(&config.logging.level) {
            tracing::warn!(error = %e, "changing the log level");
        }
    }

    /// This node's id, as `/ready` and the queue's workers show it.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The response cache (`[cache] responses`).
    pub fn responses(&self) -> &ResponseCache {
        &self.inner.responses
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn auth(&self) -> &AuthService {
        &self.inner.auth
    }

    pub fn limits(&self) -> &RateLimits {
        &self.inner.limits
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// The job queue, as handlers use it.
    pub fn queue(&self) -> &dyn JobQueue {
        &*self.inner.queue
    }

    /// Token streams of jobs.
    pub fn streams(&self) -> &Arc<StreamHub> {
        &self.inner.streams
    }

    /// Open TCP connections, to notice clients that went away mid-request.
    pub fn connections(&self) -> &crate::api::conn::Connections {
        &self.inner.connections
    }

    /// The NATS publisher, when `[nats]` is set (for token publishing and its status).
    pub fn nats(&self) -> Option<&Nats> {
        self.inner.nats.as_ref()
    }

    /// Signed checkpoints of the log's Merkle tree.
    pub fn checkpoints(&self) -> &Arc<Checkpointer> {
        &self.inner.checkpoints
    }

    fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }
}

/// Installs the aws-lc-rs rustls provider process-wide (ring may be linked too).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A server running on the current tokio runtime.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// `true` when serving HTTPS.
    pub tls: bool,
    /// The bound address of `[metrics] public_bind`, when set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    public_metrics: Option<PublicMetrics>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
    workers: Option<WorkerHandle>,
    grace: Duration,
    /// Stops the checkpoint schedule.
    stop_checkpoints: tokio_util::sync::CancellationToken,
}

impl RunningServer {
    /// Base URL such as `http://127.0.0.1:43117`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (up to the configured timeout).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Viewers of job streams end now (they resume elsewhere or later).
        self.state.streams().close();
        // In-flight requests (synchronous inference waits on its job) finish first; then
        // the workers get the same grace time before running jobs are handed back.
        let served = self.handle.await;
        if let Some(p) = self.public_metrics.take() {
            p.stop().await;
        }
        if let Some(w) = self.workers.take() {
            w.shutdown(self.grace).await;
        }
        served.context("server task panicked")??;
        if let Err(e) = self.state.auth().flush_failures(true).await {
            tracing::warn!(error = %e, "recording failed authentications at shutdown");
        }
        // A clean stop leaves the log as it was (`inferno audit checkpoint` signs one of the
        // stopped data dir's head when asked).
        self.stop_checkpoints.cancel();
        // Its JetStream follower keeps its cursor in the store.
        if let Some(nats) = self.state.nats() {
            nats.shutdown().await;
        }
        self.state.store().shutdown().await;
        Ok(())
    }

    /// Waits until the server stops by itself.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await.context("server task panicked")??;
        Ok(())
    }
}

/// The accept queue asked of the kernel: the kernel caps it at `net.core.somaxconn`.
/// poem's own `TcpListener` asks for 1024, which a burst of thousands of connects
/// overflows: the kernel then drops SYNs and clients wait for retransmits.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with `SO_REUSEADDR` and a [`LISTEN_BACKLOG`]-deep accept queue.
fn bind(addr: SocketAddr) -> std::io::Result<TcpAcceptor> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    TcpAcceptor::from_tokio(socket.listen(LISTEN_BACKLOG)?)
}

/// The unauthenticated `GET /metrics` listener of `[metrics] public_bind`.
struct PublicMetrics {
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl PublicMetrics {
    /// Binds `addr` (plain HTTP) and serves `/metrics` there until stopped.
    async fn start(addr: SocketAddr, state: AppState) -> anyhow::Result<(Self, SocketAddr)> {
        let tcp = bind(addr).with_context(|| format!("binding [metrics] public_bind {addr}"))?;
        let bound = tcp
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(addr);
        let (shutdown, rx) = oneshot::channel::<()>();
        let app = crate::api::public_metrics_app(state);
        let handle = tokio::spawn(async move {
            Server::new_with_acceptor(tcp)
                .run_with_graceful_shutdown(
                    app,
                    async move {
                        let _ = rx.await;
                    },
                    Some(Duration::from_secs(5)),
                )
                .await
        });
        tracing::info!(addr = %bound, "metrics served without authentication ([metrics] public_bind)");
        Ok((Self { shutdown, handle }, bound))
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        if let Ok(Err(e)) = self.handle.await {
            tracing::warn!(error = %e, "the public metrics listener stopped with an error");
        }
    }
}

/// Opens the data dir, builds the state, binds and starts serving.
pub async fn start(config: Config, opts: StartOptions) -> anyhow::Result<RunningServer> {
    install_crypto_provider();
    // Before anything records: handles taken earlier would record nowhere.
    crate::metrics::install();
    let addr = config.bind_addr()?;
    let metrics_addr = config.metrics_public_addr()?;
    std::fs::create_dir_all(&config.storage.data_dir)
        .with_context(|| format!("creating data dir {}", config.storage.data_dir.display()))?;
    let data_dir = config.storage.data_dir.clone();
    // Cluster mode: the log is PostgreSQL's, the data dir this node's copy of it.
    let shared = match (config.storage.backend.as_str(), &config.storage.url) {
        ("postgres", Some(url)) => {
            let node = config.node_id();
            let url = url.expose().to_string();
            let log = tokio::task::spawn_blocking(move || {
                crate::events::shared::SharedLog::connect(&url, &node)
            })
            .await
            .context("connecting to the shared event log")?
            .context("connecting to the shared event log ([storage] url)")?;
            tracing::info!(
                node = log.node(),
                "cluster mode: the event log is shared in PostgreSQL"
            );
            Some(log)
        }
        _ => None,
    };
    let store = EventStore::open(
        &data_dir,
        crate::events::projections::default_projections(),
        StoreOptions {
            allow_broken_tail: opts.allow_broken_tail,
            shared,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("opening the event log in {}", data_dir.display()))?;
    // Settings changed at run time (`config.changed` events) lie over the file and env.
    let live = LiveConfig::new(
        config,
        crate::events::projections::config::get_all(&store)
            .context("reading the runtime configuration")?,
    );
    let config = (*live.get()).clone();
    if let Err(e) = crate::logging::set_level(&config.logging.level) {
        tracing::warn!(error = %e, "setting the log level");
    }
    let signer = CheckpointSigner::load(
        config.audit.signing_key.as_deref(),
        &data_dir,
        config.audit.origin.as_deref(),
    )?;
    let checkpoints = Arc::new(Checkpointer::open(
        store.clone(),
        Arc::new(signer),
        config.audit.checkpoint_every,
        Duration::from_secs(config.audit.checkpoint_secs),
    )?);
    let stop_checkpoints = tokio_util::sync::CancellationToken::new();
    checkpoints.spawn(stop_checkpoints.clone());
    let auth = Arc::new(AuthService::new(
        store.clone(),
        &config.auth,
        config.limits.requests_per_minute,
        &data_dir,
    )?);
    let admin = opts.admin_username.as_deref().unwrap_or("admin");
    if let Some(generated) = auth
        .bootstrap_admin(admin, opts.admin_password.clone())
        .await?
    {
        hand_over_admin_password(admin, &generated, &data_dir)?;
    }
    let limits = RateLimits::new(
        config.limits.requests_per_minute,
        config.auth.login_attempts_per_minute,
        config.auth.failed_auth_per_minute,
    );
    let engine: Arc<dyn Engine> = match opts.engine.clone() {
        Some(e) => e,
        None => Arc::new(
            LlamaEngine::new(engine_config(&config))
                .with_gpu(config.models.gpu_layers, config.models.main_gpu),
        ),
    };
    let catalog = Arc::new(
        Catalog::open(
            store.clone(),
            engine.clone(),
            &config.models.dir,
            &data_dir,
            config.models.max_upload_bytes,
        )
        .await
        .with_context(|| format!("scanning models in {}", config.models.dir.display()))?,
    );
    let responses = Arc::new(
        ResponseCache::open(
            store.clone(),
            config.cache.responses,
            config.cache.max_bytes,
        )
        .context("opening the response cache")?,
    );
    let runner = Arc::new(Runner::new(
        engine.clone(),
        responses.clone(),
        catalog.clone(),
        config.limits.max_prompt_chars,
        config.models.default.clone(),
        config.audit.record_content,
    ));
    let streams = StreamHub::new(
        store.clone(),
        StreamSettings {
            max_lag: config.stream.max_lag,
            max_streams: config.stream.max_streams,
        },
    );
    let queue = EmbeddedQueue::open(store.clone(), queue_settings(&config), streams.clone())
        .context("loading the job queue")?;
    // Connects in the background: NATS being down never delays or stops the start.
    let nats = match &config.nats {
        Some(n) => Some(Nats::start(n, store.clone()).await),
        None => None,
    };
    // Every generated piece also goes to `inferno.jobs.<id>.tokens`.
    if let Some(n) = &nats {
        streams.set_tap(Arc::new(n.clone()));
    }
    let state = AppState {
        inner: Arc::new(Inner {
            config: live,
            ready: AtomicBool::new(false),
            store,
            auth,
            limits,
            engine,
            catalog,
            runner: runner.clone(),
            queue: queue.clone(),
            streams,
            connections: crate::api::conn::Connections::default(),
            nats,
            checkpoints,
            responses,
            node_id: config.node_id(),
        }),
    };

    let tcp = bind(addr).with_context(|| format!("binding {addr}"))?;
    let bound = tcp
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(addr);
    let tcp = crate::api::conn::WatchedAcceptor::new(tcp, state.connections().clone());
    let (acceptor, tls) = match &config.server.tls {
        Some(tls_cfg) => {
            let tls = crate::api::tls::server_config(tls_cfg)?;
            (crate::api::tls::TlsAcceptor::new(tcp, tls).boxed(), true)
        }
        None => (tcp.boxed(), false),
    };
    // Slow or oversized request heads and idle keep-alive connections are cut off.
    let acceptor = crate::api::guard::GuardedAcceptor::new(
        acceptor,
        crate::api::guard::GuardLimits {
            header_timeout: Duration::from_secs(config.server.header_timeout_secs),
            idle_timeout: Duration::from_secs(config.server.idle_timeout_secs),
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
        },
    );

    let (public_metrics, metrics_addr) = match metrics_addr {
        Some(a) => {
            let (p, bound) = PublicMetrics::start(a, state.clone()).await?;
            (Some(p), Some(bound))
        }
        None => (None, None),
    };

    // Failed authentications reach the log in aggregate, once their window is over.
    let weak = Arc::downgrade(&state.inner);
    let every = state.auth().failure_flush_interval();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = inner.auth.flush_failures(false).await {
                tracing::warn!(error = %e, "recording failed authentications");
            }
        }
    });

    // Cluster mode: a setting changed on another node changes here too.
    if state.store().node_id().is_some() {
        let weak = Arc::downgrade(&state.inner);
        let mut changes = state.store().subscribe();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(env) if env.r#type == "config.changed" => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let state = AppState { inner };
                let live = state.live_config();
                let _one_at_a_time = live.update.lock().await;
                match crate::events::projections::config::get_all(state.store()) {
                    Ok(stored) => {
                        let config = live.reload(stored);
                        state.apply_live(&config);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the runtime configuration"),
                }
            }
        });
    }

    // Rate-limit state for principals and login keys that went quiet is dropped every minute.
    let weak = Arc::downgrade(&state.inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(inner) => inner.limits.housekeeping(),
                None => return,
            }
        }
    });

    let workers = crate::queue::spawn_workers(queue, runner)
        .await
        .context("starting the queue's workers")?;

    let app = crate::api::app(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let timeout = Duration::from_secs(config.server.shutdown_timeout_secs);
    let handle = tokio::spawn(async move {
        Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                app,
                async move {
                    let _ = rx.await;
                },
                Some(timeout),
            )
            .await
    });
    state.set_ready(true);
    tracing::info!(addr = %bound, tls, "inferno listening");
    Ok(RunningServer {
        addr: bound,
        tls,
        metrics_addr,
        state,
        public_metrics,
        shutdown: Some(tx),
        handle,
        workers: Some(workers),
        grace: timeout,
        stop_checkpoints,
    })
}

/// `[queue]` as the embedded queue takes it.
pub fn queue_settings(config: &Config) -> crate::queue::QueueSettings {
    let q = &config.queue;
    let concurrency = if q.concurrency == 0 {
        config.models.parallel
    } else {
        q.concurrency
    };
    crate::queue::QueueSettings {
        max_depth: q.max_depth,
        max_queued_per_principal: q.max_queued_per_principal,
        max_attempts: q.max_attempts,
        lease: Duration::from_secs(q.lease_secs),
        retention: Duration::from_secs(q.retention_hours.saturating_mul(3600)),
        job_timeout: Duration::from_secs(q.job_timeout_secs),
        concurrency,
        worker_name: format!("{}-worker", config.node_id()),
        record_content: config.audit.record_content,
    }
}

/// Where a generated first-admin password goes: the controlling terminal when there is
/// one, else `<data_dir>/initial-admin-password` (mode 0600). Never the log stream: the log
/// says which, without the value.
fn hand_over_admin_password(admin: &str, password: &str, data_dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let message = format!(
        "\n  Created the first admin user {admin:?} with password: {password}\n  \
         It is shown once; change it with POST /api/v1/auth/password.\n\n"
    );
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        if tty.write_all(message.as_bytes()).is_ok() {
            tracing::info!(
                user = admin,
                "created the first admin user; its password was written to the terminal"
            );
            return Ok(());
        }
    }
    let path = data_dir.join("initial-admin-password");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(format!("{password}\n").as_bytes())?;
    file.sync_all()?;
    tracing::info!(
        user = admin,
        file = %path.display(),
        "created the first admin user; no terminal, so its password was written to this file (mode 0600): read it, then delete it"
    );
    Ok(())
}

/// The engine settings from `[models]`.
pub fn engine_config(config: &Config) -> EngineConfig {
    let m = &config.models;
    EngineConfig {
        parallel: m.parallel,
        threads: if m.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            m.threads
        },
        ctx_per_slot: m.ctx_per_slot,
        max_loaded: m.max_loaded,
        max_waiting: m.max_waiting,
        max_wait: std::time::Duration::from_secs(m.max_wait_secs),
        prompt_cache: config.cache.prompt_prefix,
        ..EngineConfig::default()
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so a
/// signal that arrives while the server is still starting is not lost.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// `inferno serve`: start, then stop gracefully on a signal.
pub async fn serve(config: Config, opts: StartOptions) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    let server = start(config, opts).await?;
    signal.await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.state.set_ready(false);
    server.shutdown().await
}
