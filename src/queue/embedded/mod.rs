//! The embedded queue: job state in the event log's database, a ready set in memory.
//!
//! The log (through the `jobs` projection) is the truth; the in-memory [`State`] is what
//! this process derived from it at start-up and has changed since, each change made only
//! after its event committed. A claim (the worker taking the next job) is a pop from the
//! ready set; `job.started` follows from the run. Enqueue reserves room under the lock
//! before it appends, so `max_depth` and the per-owner cap hold under concurrency and a
//! refused job leaves nothing behind.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::*;
use crate::events::projections::jobs::{self as proj, priority_rank, JobRecord};

mod ops;
use crate::events::{self as ev, Event, EventStore, SideWrite};
use crate::stream::StreamHub;

pub(super) const PAYLOADS: &str = "job_payloads";
pub(super) const RESULTS: &str = "job_results";
/// Cluster mode with the embedded queue: the jobs this node queued, in a side keyspace
/// written directly (so it stays on this node). Each node loads, runs and recovers only
/// its own jobs, never another node's from the shared log; the shared queue is
/// `[queue] backend = "postgres"`.
pub(super) const LOCAL_JOBS: &str = "job_local";
/// How long an `Idempotency-Key` maps to its job.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Limits and timings of the queue (`[queue]`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub max_depth: usize,
    pub max_queued_per_principal: usize,
    pub max_attempts: u32,
    pub lease: Duration,
    pub retention: Duration,
    pub job_timeout: Duration,
    pub concurrency: usize,
    pub worker_name: String,
    /// `[audit] record_content`: outputs' text in `job.completed`.
    pub record_content: bool,
}

/// A job this process took from the ready set and has not finished.
pub(super) struct Running {
    pub cancel: Arc<JobCancel>,
}

#[derive(Default)]
pub(super) struct State {
    /// (priority rank, job id): the first is the next to start.
    pub ready: BTreeSet<(u8, String)>,
    /// Ready jobs per priority rank.
    pub ready_by_rank: [usize; 4],
    pub running: HashMap<String, Running>,
    /// Queued jobs per owner, reservations included.
    pub queued_by_owner: HashMap<String, usize>,
    /// Owner of each queued job.
    pub queued_owner: HashMap<String, String>,
    /// Enqueues that reserved room and have not committed yet.
    pub reserved: usize,
    pub paused: bool,
    /// Shutting down: nothing more starts.
    pub draining: bool,
    pub waiters: HashMap<String, Vec<oneshot::Sender<JobEnd>>>,
    pub idempotency_in_flight: HashSet<String>,
    /// When each queued job was enqueued (this process), for queue wait figures.
    pub enqueued_at: HashMap<String, Instant>,
    pub waker: Option<Waker>,
    pub heartbeats: HashMap<String, chrono::DateTime<Utc>>,
    /// (when, tokens) of jobs completed in the last minute.
    pub recent: VecDeque<(Instant, u64)>,
}

impl State {
    /// Forgets completions older than a minute (the window of the queue's stats).
    pub(super) fn trim_recent(&mut self) {
        let minute = Duration::from_secs(60);
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| t.elapsed() > minute)
        {
            self.recent.pop_front();
        }
    }

    fn depth(&self) -> usize {
        self.ready.len() + self.running.len() + self.reserved
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn position(&self, job_id: &str) -> Option<usize> {
        self.ready
            .iter()
            .position(|(_, id)| id == job_id)
            .map(|p| p + 1)
    }

    fn unqueue_owner(&mut self, owner: &str) {
        if let Some(n) = self.queued_by_owner.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.queued_by_owner.remove(owner);
            }
        }
    }

    /// Place of the newest job of `rank` (the last of its priority): O(1).
    fn position_of_newest(&self, rank: u8) -> usize {
        self.ready_by_rank[..=rank as usize].iter().sum()
    }

    fn insert_ready(&mut self, j: &JobRecord) {
        let rank = priority_rank(&j.priority);
        if self.ready.insert((rank, j.job_id.clone())) {
            self.ready_by_rank[rank as usize] += 1;
            let owner = j.owner.clone().unwrap_or_default();
            *self.queued_by_owner.entry(owner.clone()).or_default() += 1;
            self.queued_owner.insert(j.job_id.clone(), owner);
        }
        self.wake();
    }

    fn remove_ready(&mut self, j: &JobRecord) -> bool {
        let rank = priority_rank(&j.priority);
        let removed = self.ready.remove(&(rank, j.job_id.clone()));
        if removed {
            self.ready_by_rank[rank as usize] -= 1;
            self.unqueue_owner(j.owner.as_deref().unwrap_or_default());
            self.queued_owner.remove(&j.job_id);
        }
        removed
    }
}

/// The settings that change live (`PATCH /api/v1/config`); [`QueueSettings`] holds their
/// values at start-up.
#[derive(Debug, Default)]
pub(super) struct LiveLimits {
    max_depth: AtomicUsize,
    max_queued_per_principal: AtomicUsize,
    record_content: AtomicBool,
}

pub struct EmbeddedQueue {
    pub(super) store: EventStore,
    pub(super) settings: QueueSettings,
    pub(super) live: LiveLimits,
    pub(super) state: Mutex<State>,
    pub(super) payloads: Mutex<HashMap<String, Arc<JobRequest>>>,
    pub(super) streams: Arc<StreamHub>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The first `limit` of `jobs` (newest first) that match `filter`, and the cursor of the
/// next page when more remain.
fn page_of(
    jobs: impl Iterator<Item = Result<JobRecord, EventError>>,
    filter: &JobFilter,
    limit: usize,
) -> Result<JobPage, QueueError> {
    let limit = limit.clamp(1, crate::paging::MAX_LIMIT);
    let mut page = Vec::new();
    let mut next_cursor = None;
    for j in jobs {
        let j = j?;
        if !filter.matches(&j) {
            continue;
        }
        if page.len() == limit {
            next_cursor = page.last().map(|j: &JobRecord| j.job_id.clone());
            break;
        }
        page.push(j);
    }
    Ok(JobPage {
        jobs: page,
        next_cursor,
    })
}

/// The digest an `Idempotency-Key` is stored under: owner and key, never the key alone.
pub fn idempotency_digest(owner: &str, key: &str) -> String {
    let mut data = owner.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(key.as_bytes());
    sha256_hex(&data)
}

pub fn body_digest(body: &[u8]) -> String {
    sha256_hex(body)
}

impl EmbeddedQueue {
    /// Loads the queue from the `jobs` projection: queued jobs into the ready set, the
    /// paused flag. Jobs found `running` belong to a process that is gone; the worker
    /// start-up hands them back ([`EmbeddedQueue::recover`]).
    pub fn open(
        store: EventStore,
        settings: QueueSettings,
        streams: Arc<StreamHub>,
    ) -> Result<Arc<Self>, QueueError> {
        let mut state = State {
            paused: proj::is_paused(&store)?,
            ..State::default()
        };
        let clustered = store.node_id().is_some();
        for id in proj::queued_ids(&store)? {
            if clustered && store.side_get(LOCAL_JOBS, id.as_bytes())?.is_none() {
                continue;
            }
            if let Some(j) = proj::get(&store, &id)? {
                state.insert_ready(&j);
            }
        }
        let live = LiveLimits {
            max_depth: AtomicUsize::new(settings.max_depth),
            max_queued_per_principal: AtomicUsize::new(settings.max_queued_per_principal),
            record_content: AtomicBool::new(settings.record_content),
        };
        Ok(Arc::new(EmbeddedQueue {
            store,
            settings,
            live,
            state: Mutex::new(state),
            payloads: Mutex::new(HashMap::new()),
            streams,
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is one
        // statement), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings at start-up; see [`EmbeddedQueue::max_depth`] and friends for those
    /// that change live.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// `[queue] max_depth`, `max_queued_per_principal` and `[audit] record_content`
    /// changed live: they hold from the next job on.
    pub fn set_limits(
        &self,
        max_depth: usize,
        max_queued_per_principal: usize,
        record_content: bool,
    ) {
        self.live.max_depth.store(max_depth, Ordering::Relaxed);
        self.live
            .max_queued_per_principal
            .store(max_queued_per_principal, Ordering::Relaxed);
        self.live
            .record_content
            .store(record_content, Ordering::Relaxed);
    }

    pub fn max_depth(&self) -> usize {
        self.live.max_depth.load(Ordering::Relaxed)
    }

    pub fn max_queued_per_principal(&self) -> usize {
        self.live.max_queued_per_principal.load(Ordering::Relaxed)
    }

    /// Whether outputs' text goes into `job.completed`.
    pub fn record_content(&self) -> bool {
        self.live.record_content.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The token streams of this queue's jobs.
    pub fn streams(&self) -> &Arc<StreamHub> {
        &self.streams
    }

    fn record(&self, job_id: &str) -> Result<JobRecord, QueueError> {
        proj::get(&self.store, job_id)?.ok_or_else(|| QueueError::NotFound(job_id.to_string()))
    }

    /// The stored request of a job.
    pub(super) fn payload(&self, job_id: &str) -> Result<Option<Arc<JobRequest>>, QueueError> {
        if let Some(p) = self
            .payloads
            .lock()
            .ok()
            .and_then(|m| m.get(job_id).cloned())
        {
            return Ok(Some(p));
        }
        match self.store.side_get(PAYLOADS, job_id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok().map(Arc::new)),
        }
    }

    /// The next job to start, unless paused or draining; registers `waker` otherwise.
    pub(super) fn claim(&self, waker: &Waker) -> Option<(String, Arc<JobCancel>)> {
        let mut s = self.lock();
        if s.paused || s.draining {
            s.waker = Some(waker.clone());
            return None;
        }
        let Some(first) = s.ready.pop_first() else {
            s.waker = Some(waker.clone());
            return None;
        };
        s.ready_by_rank[first.0 as usize] -= 1;
        let job_id = first.1;
        let owner = s.queued_owner.remove(&job_id).unwrap_or_default();
        s.unqueue_owner(&owner);
        let cancel = Arc::new(JobCancel::default());
        s.running.insert(
            job_id.clone(),
            Running {
                cancel: cancel.clone(),
            },
        );
        Some((job_id, cancel))
    }

    /// How long a job waited in this process's queue before it was claimed.
    pub(super) fn take_wait(&self, job_id: &str) -> Option<Duration> {
        self.lock().enqueued_at.remove(job_id).map(|t| t.elapsed())
    }

    /// A run ended with `record` as the job's state: wakes waiters, forgets the run. A job
    /// handed back to the queue (`queued` again) returns to the ready set.
    pub(super) fn finish_run(
        &self,
        record: JobRecord,
        text: Option<String>,
        completion: Option<Completion>,
        error: Option<ExecError>,
    ) {
        let mut s = self.lock();
        s.running.remove(&record.job_id);
        self.payloads_forget(&record);
        if record.status == "queued" {
            s.insert_ready(&record);
            return;
        }
        if record.status == "completed" {
            s.recent
                .push_back((Instant::now(), record.completion_tokens.unwrap_or_default()));
            s.trim_recent();
        }
        if let Some(ws) = s.waiters.remove(&record.job_id) {
            let end = JobEnd {
                record,
                text,
                completion,
                error,
            };
            for w in ws {
                let _ = w.send(end.clone());
            }
        }
    }

    fn payloads_forget(&self, record: &JobRecord) {
        if record.is_finished() {
            if let Ok(mut p) = self.payloads.lock() {
                p.remove(&record.job_id);
            }
        }
    }

    /// The run of `job_id` in this process, if any.
    pub(super) fn running_cancel(&self, job_id: &str) -> Option<Arc<JobCancel>> {
        self.lock().running.get(job_id).map(|r| r.cancel.clone())
    }

    pub(super) fn heartbeat(&self, worker: &str) {
        self.lock()
            .heartbeats
            .insert(worker.to_string(), Utc::now());
    }

    /// Stops claiming and cancels every run with [`SHUTDOWN`]: their runs hand them back.
    pub(super) fn drain(&self, cancel_running: bool) {
        let mut s = self.lock();
        s.draining = true;
        if cancel_running {
            for r in s.running.values() {
                r.cancel.cancel(SHUTDOWN);
            }
        }
    }

    pub(super) fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Jobs the log shows running but no run of this process holds, last changed before
    /// `older_than` ago: their worker is gone (a crash, `kill -9`). Each goes back to the
    /// queue with its attempt counted, or is dead once `max_attempts` were spent.
    pub async fn recover(&self, older_than: Duration) -> Result<usize, QueueError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let mut orphans = Vec::new();
        for id in proj::running_ids(&self.store)? {
            if let Some(j) = proj::get(&self.store, &id)? {
                orphans.push(j);
            }
        }
        let orphans: Vec<JobRecord> = orphans
            .into_iter()
            .filter(|j| j.status == "running" && j.updated_at <= cutoff)
            // Cluster mode: another node's running job is that node's to recover.
            .filter(|j| {
                self.store.node_id().is_none()
                    || j.worker.as_deref() == Some(self.settings.worker_name.as_str())
            })
            .filter(|j| !self.lock().running.contains_key(&j.job_id))
            .collect();
        let reason = if older_than.is_zero() {
            "worker_lost"
        } else {
            "lease_expired"
        };
        for j in &orphans {
            let event = if j.attempts >= self.settings.max_attempts {
                Event::JobDead(ev::JobDead {
                    job_id: j.job_id.clone(),
                    error: format!(
                        "its worker was lost on attempt {} of {}",
                        j.attempts, self.settings.max_attempts
                    ),
                })
            } else {
                Event::JobRequeued(ev::JobRequeued {
                    job_id: j.job_id.clone(),
                    reason: reason.into(),
                    counts_attempt: true,
                })
            };
            self.store
                .append(&EventContext::system(), vec![event])
                .await?;
            let after = self.record(&j.job_id)?;
            let mut s = self.lock();
            if after.status == "queued" {
                s.insert_ready(&after);
            }
        }
        Ok(orphans.len())
    }

    fn retry_after_full(&self) -> QueueError {
        QueueError::Full {
            max_depth: self.max_depth(),
        }
    }

    /// Reserves room for one job of `owner`; undone by [`EmbeddedQueue::unreserve`].
    fn reserve(&self, owner: &str, idem: Option<&str>) -> Result<(), QueueError> {
        let mut s = self.lock();
        if s.draining {
            return Err(QueueError::ShuttingDown);
        }
        if s.depth() >= self.max_depth() {
            return Err(self.retry_after_full());
        }
        let owned = s.queued_by_owner.get(owner).copied().unwrap_or_default();
        let cap = self.max_queued_per_principal();
        if owned >= cap {
            return Err(QueueError::OwnerCap { cap });
        }
        if let Some(d) = idem {
            if !s.idempotency_in_flight.insert(d.to_string()) {
                return Err(QueueError::Conflict(
                    "a request with this Idempotency-Key is being queued".into(),
                ));
            }
        }
        s.reserved += 1;
        *s.queued_by_owner.entry(owner.to_string()).or_default() += 1;
        Ok(())
    }

    fn unreserve(&self, s: &mut State, owner: &str, idem: Option<&str>) {
        s.reserved = s.reserved.saturating_sub(1);
        s.unqueue_owner(owner);
        if let Some(d) = idem {
            s.idempotency_in_flight.remove(d);
        }
    }

    /// An earlier job of the same idempotency key, or 409 when the body differs.
    fn idempotent_hit(&self, idem: &IdempotencyRecord) -> Result<Option<Enqueued>, QueueError> {
        let Some(hit) = proj::idempotency(&self.store, &idem.key_sha256)? else {
            return Ok(None);
        };
        let age = (Utc::now() - hit.at).to_std().unwrap_or_default();
        if age > IDEMPOTENCY_TTL {
            return Ok(None);
        }
        if hit.body_sha256 != idem.body_sha256 {
            return Err(QueueError::Conflict(
                "this Idempotency-Key was used with a different request body".into(),
            ));
        }
        let Some(record) = proj::get(&self.store, &hit.job_id)? else {
            return Ok(None); // purged: queue it again
        };
        Ok(Some(Enqueued {
            position: self.position(&record.job_id),
            record,
            existing: true,
        }))
    }

    /// Commits `events` about a job that is not running here, then re-reads it.
    async fn change(
        &self,
        ctx: &EventContext,
        job_id: &str,
        events: Vec<Event>,
    ) -> Result<JobRecord, QueueError> {
        self.store.append(ctx, events).await?;
        self.record(job_id)
    }

    /// Wakes the waiters of a job that finished without a run (cancelled while queued).
    fn notify_end(&self, record: &JobRecord) {
        let ws = self.lock().waiters.remove(&record.job_id);
        for w in ws.into_iter().flatten() {
            let _ = w.send(JobEnd {
                record: record.clone(),
                text: None,
                completion: None,
                error: None,
            });
        }
    }
}
