//! The durable job queue: every inference is a job.
//!
//! # Layout
//!
//! - `mod.rs` (this file): job types, the [`JobQueue`] trait the API talks to, and the
//!   [`Executor`] trait a worker runs jobs with (the inference [`Runner`] in the server).
//! - `embedded`: [`EmbeddedQueue`], the default backend, on fjall in the event log's own
//!   database. Every state change is an event and a projection update in one batch
//!   (`events/projections/jobs.rs`), so the queue is a projection of the log.
//! - `backend`: the apalis 1.0 [`Backend`](apalis_core::backend::Backend) over the embedded
//!   queue's ready set: a claim is a pop, and a push wakes the worker (no polling interval).
//! - `run`: one job's execution with its events (`job.started`, then `job.completed`,
//!   `job.failed`, `job.cancelled`, `job.requeued` or `job.dead`), shared by every backend.
//! - `worker`: the apalis `WorkerBuilder` (concurrency, retry, timeout) and `Monitor` wiring,
//!   leases, retention.
//!
//! The cluster issue adds a PostgreSQL backend (apalis-postgres) behind the same trait.
//!
//! [`Runner`]: crate::inference::runner::Runner

mod backend;
mod embedded;
mod run;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::events::projections::jobs::JobRecord;
use crate::events::{ContentRecord, EventContext, EventError, IdempotencyRecord, SamplingRecord};
use crate::inference::{ChatMessage, Completion, SamplingParams};
pub use crate::stream::TokenSink;

pub use embedded::{body_digest, idempotency_digest, EmbeddedQueue, QueueSettings};
pub use worker::{spawn_workers, WorkerHandle};

/// Job priority: higher ones start first; within one priority the oldest starts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }

    /// `high` and `critical` need `manage_queue`.
    pub fn is_elevated(self) -> bool {
        self >= Priority::High
    }
}

/// Job states, as the API shows them.
pub const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "dead",
];
/// States a job can be purged or retried from.
pub const FINISHED: [&str; 4] = ["completed", "failed", "cancelled", "dead"];

/// A prompt as stored with a job (the side keyspace `job_payloads`, never the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredPrompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// Everything a worker needs to run a job; stored outside the log next to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Resolved model id.
    pub model: String,
    pub prompt: StoredPrompt,
    pub params: SamplingParams,
    /// `"cache": false`: the response cache is neither read nor written for this job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

/// A job to queue, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// User id of the principal (the job's owner; per-owner caps count on it).
    pub owner: String,
    pub priority: Priority,
    pub request: JobRequest,
    /// The prompt and parameters as the log records them.
    pub prompt_record: ContentRecord,
    pub params_record: SamplingRecord,
    pub idempotency: Option<IdempotencyRecord>,
}

/// How a job ended, for a caller waiting on it.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub record: JobRecord,
    /// Output text (partial for a cancelled job).
    pub text: Option<String>,
    /// Engine figures of a completed or cancelled run.
    pub completion: Option<Completion>,
    /// The error of a failed or dead run, as this process saw it (with `details`).
    pub error: Option<ExecError>,
}

/// What [`JobQueue::enqueue`] did.
#[derive(Debug)]
pub struct Enqueued {
    pub record: JobRecord,
    /// 1-based place among queued jobs (`None` once it left the queue).
    pub position: Option<usize>,
    /// `true` when an earlier request with the same `Idempotency-Key` created it.
    pub existing: bool,
}

/// Queue-level failures; each says how the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// 503 `SERVICE_UNAVAILABLE` with `Retry-After`: `[queue] max_depth` reached.
    #[error("the queue is full ({max_depth} jobs queued or running)")]
    Full { max_depth: usize },
    /// 429 `RATE_LIMITED` with `Retry-After`: the owner's queued jobs are at the cap.
    #[error("at most {cap} queued jobs per principal")]
    OwnerCap { cap: usize },
    /// 404 `NOT_FOUND`.
    #[error("job not found: {0}")]
    NotFound(String),
    /// 409 `CONFLICT`.
    #[error("{0}")]
    Conflict(String),
    /// 503: the server is shutting down (no new work).
    #[error("the queue is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] EventError),
}

/// Filters of the list routes; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<String>,
    pub model: Option<String>,
    pub owner: Option<String>,
    pub priority: Option<Priority>,
}

impl JobFilter {
    pub fn matches(&self, j: &JobRecord) -> bool {
        self.status.as_deref().is_none_or(|s| j.status == s)
            && self.model.as_deref().is_none_or(|m| j.model == m)
            && self
                .owner
                .as_deref()
                .is_none_or(|o| j.owner.as_deref() == Some(o))
            && self.priority.is_none_or(|p| j.priority == p.as_str())
    }
}

/// One page of jobs, newest first.
#[derive(Debug)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    pub next_cursor: Option<String>,
}

/// One worker as `GET /api/v1/queue` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub last_heartbeat: chrono::DateTime<chrono::Utc>,
    pub running_jobs: Vec<String>,
}

/// `GET /api/v1/queue`.
#[derive(Debug, Clone)]
pub struct QueueStats {
    /// Jobs per state (every state listed, zeros included).
    pub by_status: Vec<(String, u64)>,
    /// Queued and running jobs per model.
    pub by_model: Vec<(String, u64, u64)>,
    pub oldest_queued_age: Option<Duration>,
    pub workers: Vec<WorkerInfo>,
    pub completed_last_minute: u64,
    pub tokens_last_minute: u64,
    pub paused: bool,
    pub max_depth: usize,
}

/// Cancels a running job from elsewhere and tells the run why.
#[derive(Debug, Default)]
pub struct JobCancel {
    flag: AtomicBool,
    notify: Notify,
    by: Mutex<Option<String>>,
}

impl JobCancel {
    /// `by`: a principal id, `client`, or [`SHUTDOWN`].
    pub fn cancel(&self, by: &str) {
        if let Ok(mut b) = self.by.lock() {
            b.get_or_insert_with(|| by.to_string());
        }
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub fn by(&self) -> Option<String> {
        self.by.lock().ok().and_then(|b| b.clone())
    }

    /// Resolves once [`JobCancel::cancel`] was called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The `by` of a cancellation that hands the job back to the queue at shutdown.
pub const SHUTDOWN: &str = "shutdown";

/// Why a run failed, in the error body's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecError {
    /// HTTP status a synchronous caller gets.
    pub status: u16,
    /// Error body code (`VALIDATION_ERROR`, `NOT_FOUND`, `CONFLICT`, `INTERNAL_ERROR`, ...).
    pub code: &'static str,
    pub message: String,
    /// The error body's `details`.
    pub details: Option<serde_json::Value>,
    /// Whether another attempt may succeed (engine or load failures); validation, context
    /// overflow and a deleted or disabled model never retry.
    pub retryable: bool,
}

/// Runs one job's request to its end (the inference runner in the server; a test double
/// in unit tests). Each generated piece goes to `tokens` as it comes. Returns the text and the engine's figures; a run stopped by `cancel`
/// returns `Ok` with finish reason `cancelled` and the partial text.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(
        &self,
        job: &JobRequest,
        cancel: &JobCancel,
        tokens: &mut TokenSink,
    ) -> Result<(String, Completion), ExecError>;
}

/// The queue as handlers see it; the embedded backend implements it today, the PostgreSQL
/// one (cluster mode) will.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Queues a job durably (its event and payload in one batch), or returns the job an
    /// earlier request with the same idempotency key created.
    async fn enqueue(&self, ctx: &EventContext, job: NewJob) -> Result<Enqueued, QueueError>;
    /// Resolves when the job is finished. Call right after `enqueue`.
    fn wait(&self, job_id: &str) -> oneshot::Receiver<JobEnd>;
    fn get(&self, job_id: &str) -> Result<Option<JobRecord>, QueueError>;
    /// 1-based place among queued jobs.
    fn position(&self, job_id: &str) -> Option<usize>;
    /// Stored output text of a finished job (until purged).
    fn result_text(&self, job_id: &str) -> Result<Option<String>, QueueError>;
    /// Jobs matching `filter`, newest first, after `cursor`.
    fn list(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError>;
    /// A queued job never runs; a running one stops at its next token.
    async fn cancel(
        &self,
        ctx: &EventContext,
        job_id: &str,
        by: &str,
    ) -> Result<JobRecord, QueueError>;
    /// A failed, dead or cancelled job goes back to the queue with its attempts reset.
    async fn retry(&self, ctx: &EventContext, job_id: &str) -> Result<JobRecord, QueueError>;
    async fn set_priority(
        &self,
        ctx: &EventContext,
        job_id: &str,
        priority: Priority,
    ) -> Result<JobRecord, QueueError>;
    async fn pause(&self, ctx: &EventContext) -> Result<(), QueueError>;
    async fn resume(&self, ctx: &EventContext) -> Result<(), QueueError>;
    /// Removes finished jobs with one of `statuses` finished more than `older_than` ago,
    /// and their stored results; returns how many.
    async fn purge(
        &self,
        ctx: &EventContext,
        statuses: &[String],
        older_than: Duration,
        automatic: bool,
    ) -> Result<u64, QueueError>;
    fn stats(&self) -> Result<QueueStats, QueueError>;
}

/// Shared handle.
pub type SharedQueue = Arc<EmbeddedQueue>;
