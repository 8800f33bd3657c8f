//! # NATS publishing
//!
//! With `[nats]` set, Inferno publishes to a NATS server:
//!
//! - tokens of running jobs to `inferno.jobs.<job_id>.tokens` ([`Nats::publish_token`]),
//! - job lifecycle events (`job.queued`, `job.started`, `job.completed`, ...) to
//!   `inferno.jobs.<job_id>.events`, followed from the committed log,
//! - with `events = true`, every committed event of the log to the JetStream stream
//!   `INFERNO_EVENTS` (`inferno.events.<type>`), exactly once and in order,
//! - every signed checkpoint of the log's Merkle tree to the JetStream stream
//!   `INFERNO_CHECKPOINTS` (`inferno.audit.checkpoints`).
//!
//! NATS never stands in the way of serving: the client connects in the background with
//! async-nats' own reconnect, publishing never blocks a request or generation, and while
//! NATS is down core NATS messages are dropped (and counted: core NATS is at-most-once)
//! while the JetStream follower waits and resumes from its last acknowledged seq.
//!
//! ## Layout
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | the [`Nats`] handle, the connection and its state, [`NatsStatus`] |
//! | `tokens.rs` | the bounded token channel and the task that drains it |
//! | `lifecycle.rs` | follows the committed log, publishes job events to core NATS |
//! | `checkpoints.rs` | follows the log's signed checkpoints into JetStream `INFERNO_CHECKPOINTS` |
//! | `jetstream.rs` | follows the committed log into JetStream, with a cursor in fjall |

mod checkpoints;
mod jetstream;
mod lifecycle;
mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::events::EventStore;

pub use checkpoints::{STREAM as CHECKPOINT_STREAM, SUBJECT as CHECKPOINT_SUBJECT};
pub use jetstream::{CURSOR_KEY, CURSOR_KEYSPACE, STREAM, STREAM_SUBJECTS};

/// Longest [`Nats::shutdown`] waits for the publishing tasks.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// `inferno.jobs.<job_id>.tokens`.
pub fn token_subject(job_id: &str) -> String {
    format!("inferno.jobs.{job_id}.tokens")
}

/// `inferno.jobs.<job_id>.events`.
pub fn lifecycle_subject(job_id: &str) -> String {
    format!("inferno.jobs.{job_id}.events")
}

/// Whether `s` can stand as one token of a subject (no `.`, wildcard or whitespace).
fn subject_token_ok(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

/// A point-in-time view of the publisher, for `GET /api/v1/queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsStatus {
    pub connected: bool,
    /// When `connected` last changed (or when the client started).
    pub since: DateTime<Utc>,
    /// The last connection or publishing error, if any since the last (re)connect.
    pub last_error: Option<String>,
    pub tokens_published: u64,
    /// Tokens not published: NATS down, channel full, or a publish error.
    pub tokens_dropped: u64,
    pub lifecycle_published: u64,
    /// Lifecycle messages not published (NATS down or a publish error).
    pub lifecycle_dropped: u64,
    /// Present with `[nats] events = true`.
    pub jetstream: Option<JetStreamStatus>,
}

/// The JetStream follower's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamStatus {
    pub stream: String,
    /// The last event seq JetStream acknowledged.
    pub acked_seq: u64,
    /// Committed events not yet acknowledged: the log head minus `acked_seq`.
    pub lag: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Never connected yet, no failure seen.
    Starting,
    Connected,
    Disconnected,
}

#[derive(Debug)]
struct LinkInner {
    state: LinkState,
    since: DateTime<Utc>,
    last_error: Option<String>,
}

/// The connection's state as the publishers see it; logs once per change.
#[derive(Debug)]
pub(crate) struct Link {
    inner: Mutex<LinkInner>,
    /// `true` while connected, for tasks that wait for the connection.
    up: watch::Sender<bool>,
    /// Set by [`Nats::shutdown`]: the client's closing is not an outage to report.
    closing: std::sync::atomic::AtomicBool,
}

impl Link {
    fn new() -> Link {
        Link {
            inner: Mutex::new(LinkInner {
                state: LinkState::Starting,
                since: Utc::now(),
                last_error: None,
            }),
            up: watch::Sender::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Resolves once connected (at once when connected now).
    pub(crate) async fn wait_up(&self) {
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Resolves once disconnected (at once when disconnected now).
    pub(crate) async fn wait_down(&self) {
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|up| !*up).await;
    }

    fn set(&self, next: LinkState, error: Option<String>) {
        let Ok(mut s) = self.inner.lock() else { return };
        if let Some(e) = error {
            s.last_error = Some(crate::audit::redact::redact(&e));
        }
        if s.state == next {
            return;
        }
        let was = s.state;
        s.state = next;
        s.since = Utc::now();
        match next {
            LinkState::Connected => {
                s.last_error = None;
                tracing::info!("NATS connected");
            }
            LinkState::Disconnected if was == LinkState::Starting => tracing::warn!(
                error = s.last_error.as_deref().unwrap_or("unreachable"),
                "NATS not reachable; serving without it and retrying in the background"
            ),
            LinkState::Disconnected => tracing::warn!(
                "NATS disconnected; token and lifecycle messages are dropped until it is back, \
                 reconnecting in the background"
            ),
            LinkState::Starting => {}
        }
        drop(s);
        self.up.send_replace(next == LinkState::Connected);
    }

    fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event;
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        match event {
            Event::Connected => self.set(LinkState::Connected, None),
            Event::Disconnected => self.set(LinkState::Disconnected, None),
            Event::Closed => self.set(LinkState::Disconnected, Some("connection closed".into())),
            Event::ClientError(e) => self.set(LinkState::Disconnected, Some(e.to_string())),
            // The connection still stands; keep the error for the status.
            Event::ServerError(e) => {
                if let Ok(mut s) = self.inner.lock() {
                    s.last_error = Some(crate::audit::redact::redact(&e.to_string()));
                }
            }
            Event::LameDuckMode | Event::Draining | Event::SlowConsumer(_) => {}
        }
    }

    fn snapshot(&self) -> (bool, DateTime<Utc>, Option<String>) {
        match self.inner.lock() {
            Ok(s) => (
                s.state == LinkState::Connected,
                s.since,
                s.last_error.clone(),
            ),
            Err(_) => (false, Utc::now(), None),
        }
    }
}

/// Counters of one kind of core NATS message.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> (u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

struct Inner {
    client: Option<async_nats::Client>,
    link: Arc<Link>,
    tokens: tokens::TokenSender,
    token_counts: Arc<Counters>,
    lifecycle_counts: Arc<Counters>,
    jetstream: Option<Arc<jetstream::Progress>>,
    store: EventStore,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Handle to the NATS publisher; cheap to clone. Started by the server when `[nats]` is
/// set.
#[derive(Clone)]
pub struct Nats {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("connected", &self.inner.link.is_up())
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// Starts the client (connecting in the background) and the publishing tasks. Never
    /// fails: a client that cannot even be built (an unreadable credentials file) is
    /// reported in the log and in [`Nats::status`], and everything it would publish is
    /// dropped and counted.
    pub async fn start(config: &NatsConfig, store: EventStore) -> Nats {
        let link = Arc::new(Link::new());
        let client = match connect(config, link.clone()).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "NATS client not started; serving without NATS");
                link.set(LinkState::Disconnected, Some(e));
                None
            }
        };
        let stop = CancellationToken::new();
        let token_counts = Arc::new(Counters::default());
        let lifecycle_counts = Arc::new(Counters::default());
        let (tokens, token_rx) = tokens::channel();
        let mut tasks = Vec::new();
        let mut progress = None;
        if let Some(client) = &client {
            tasks.push(tokio::spawn(tokens::drain(
                token_rx,
                client.clone(),
                link.clone(),
                token_counts.clone(),
                stop.clone(),
            )));
            tasks.push(tokio::spawn(lifecycle::follow(
                store.clone(),
                client.clone(),
                link.clone(),
                lifecycle_counts.clone(),
                stop.clone(),
            )));
            // Signed checkpoints always get a copy outside the machine.
            tasks.push(tokio::spawn(checkpoints::follow(
                store.clone(),
                client.clone(),
                link.clone(),
                stop.clone(),
            )));
            if config.events {
                let p = Arc::new(jetstream::Progress::load(&store));
                progress = Some(p.clone());
                tasks.push(tokio::spawn(jetstream::follow(
                    store.clone(),
                    client.clone(),
                    link.clone(),
                    p,
                    stop.clone(),
                )));
            }
        } else if config.events {
            progress = Some(Arc::new(jetstream::Progress::load(&store)));
        }
        Nats {
            inner: Arc::new(Inner {
                client,
                link,
                tokens,
                token_counts,
                lifecycle_counts,
                jetstream: progress,
                store,
                stop,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// Publishes one generated token of `job_id` to `inferno.jobs.<job_id>.tokens` as
    /// `{"job_id","index","text"}`. Never blocks and never fails: when NATS is down or the
    /// bounded channel is full the token is dropped and counted (core NATS is
    /// at-most-once).
    pub fn publish_token(&self, job_id: &str, index: u64, text: &str) {
        let i = &self.inner;
        if i.client.is_none() || !i.link.is_up() || !subject_token_ok(job_id) {
            i.token_counts.dropped();
            return;
        }
        if !i.tokens.try_send(job_id, index, text) {
            i.token_counts.dropped();
        }
    }

    /// Connection state, counters and the JetStream follower's progress.
    pub fn status(&self) -> NatsStatus {
        let i = &self.inner;
        let (connected, since, last_error) = i.link.snapshot();
        let (tokens_published, tokens_dropped) = i.token_counts.get();
        let (lifecycle_published, lifecycle_dropped) = i.lifecycle_counts.get();
        let jetstream = i.jetstream.as_ref().map(|p| {
            let acked_seq = p.acked();
            JetStreamStatus {
                stream: STREAM.to_string(),
                acked_seq,
                lag: i.store.head().0.saturating_sub(acked_seq),
                last_error: p.last_error(),
            }
        });
        NatsStatus {
            connected,
            since,
            last_error,
            tokens_published,
            tokens_dropped,
            lifecycle_published,
            lifecycle_dropped,
            jetstream,
        }
    }

    /// Stops the publishing tasks (the JetStream follower stores its cursor), flushes what
    /// the client still holds and closes the connection. Call before the event store shuts
    /// down.
    pub async fn shutdown(&self) {
        let i = &self.inner;
        i.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = i
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            tracing::warn!("NATS publishers did not stop in time");
        }
        i.link.closing.store(true, Ordering::Release);
        if let Some(c) = &i.client {
            if i.link.is_up() {
                // Flushes what is still buffered, then closes the connection.
                let _ = tokio::time::timeout(Duration::from_secs(1), c.drain()).await;
            }
        }
    }
}

/// The stream hub's tap: each piece a run generates goes to its job's token subject.
impl crate::stream::TokenTap for Nats {
    fn token(&self, job_id: &str, index: u64, text: &str) {
        self.publish_token(job_id, index, text);
    }
}

/// Builds the client; it connects (and reconnects, forever) in the background.
async fn connect(config: &NatsConfig, link: Arc<Link>) -> Result<async_nats::Client, String> {
    let mut opts = match &config.credentials {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("reading nats.credentials {}: {e}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(token) = &config.token {
        opts = opts.token(token.expose().to_string());
    }
    let addrs = config
        .url
        .expose()
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        // Never the URL itself: it may hold a password.
        .map_err(|_| "nats.url is not a NATS server URL".to_string())?;
    opts.name("inferno")
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .event_callback(move |event| {
            let link = link.clone();
            async move { link.on_event(event) }
        })
        .connect(addrs)
        .await
        .map_err(|e| format!("starting the NATS client: {}", e.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(token_subject("j1"), "inferno.jobs.j1.tokens");
        assert_eq!(lifecycle_subject("j1"), "inferno.jobs.j1.events");
        assert!(subject_token_ok("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
        for bad in ["", "a.b", "a*", ">", "a b", "a\nb"] {
            assert!(!subject_token_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn link_changes_state_once_per_change() {
        let link = Link::new();
        assert!(!link.is_up());
        link.on_event(async_nats::Event::ClientError(
            async_nats::ClientError::Other("connection refused".into()),
        ));
        let (up, since, err) = link.snapshot();
        assert!(!up);
        assert_eq!(err.as_deref(), Some("nats: connection refused"));
        // A second failure keeps the state and its time.
        link.on_event(async_nats::Event::ClientError(
            async_nats::ClientError::Other("timed out".into()),
        ));
        assert_eq!(link.snapshot().1, since);
        link.on_event(async_nats::Event::Connected);
        let (up, _, err) = link.snapshot();
        assert!(up && err.is_none());
        assert!(link.is_up());
        link.on_event(async_nats::Event::Disconnected);
        assert!(!link.is_up());
    }

    /// A port where nothing listens.
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn publish_token_never_waits_and_counts_what_nats_down_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(
            dir.path(),
            crate::events::default_projections(),
            Default::default(),
        )
        .unwrap();
        let config = NatsConfig {
            url: crate::config::Secret::new(format!("nats://127.0.0.1:{}", dead_port())),
            credentials: None,
            token: None,
            events: true,
        };
        let nats = Nats::start(&config, store.clone()).await;
        let started = std::time::Instant::now();
        for i in 0..10_000 {
            nats.publish_token("job-1", i, "tok");
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "publishing waited"
        );
        let s = nats.status();
        assert!(!s.connected);
        assert_eq!((s.tokens_published, s.tokens_dropped), (0, 10_000));
        let js = s.jetstream.expect("events = true");
        assert_eq!(js.stream, STREAM);
        assert_eq!(js.acked_seq, 0);
        assert_eq!(js.lag, store.head().0);
        nats.shutdown().await;
        store.shutdown().await;
    }
}
