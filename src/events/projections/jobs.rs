//! Jobs and the queue: one record per job, and the indexes the queue is served from.
//!
//! - `jobs`: job id → [`JobRecord`].
//! - `job_index`:
//!   - `q<rank><job id>`: queued jobs, highest priority first (rank 0 = `critical`), then
//!     oldest first (UUID v7 ids sort by creation time). The embedded queue rebuilds its
//!     in-memory ready set from this at start-up.
//!   - `o<owner>\0<job id>`: each owner's jobs, for `GET /api/v1/jobs`.
//!   - `i<key digest>`: idempotency keys → [`IdempotencyEntry`].
//!   - `r<job id>`: running jobs (lease checks scan only these).
//!   - `n:<status>`: how many jobs are in each state (big-endian u64).
//!   - `s:paused`: present while the queue is paused.
//!
//! Old `inference.*` events (before the durable queue) still fold into records, without an
//! owner or priority. The projection is named `jobs.v2`: a data dir from before the queue
//! has no checkpoint of that name, so the whole log is folded into it once at start-up.

use super::*;
use crate::events::TimingsRecord;
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub const KS: &str = "jobs";
pub const INDEX: &str = "job_index";
const PAUSED: &[u8] = b"s:paused";

/// The four priorities, highest first.
pub const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];

/// Sort rank of a priority name (0 = highest); unknown names sort as `normal`.
pub fn priority_rank(p: &str) -> u8 {
    PRIORITIES.iter().position(|x| *x == p).unwrap_or(2) as u8
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    #[serde(default = "inference_kind")]
    pub kind: String,
    pub model: String,
    /// User id of the principal that queued it; `None` for jobs from before the queue.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default = "normal")]
    pub priority: String,
    /// `queued` | `running` | `completed` | `failed` | `cancelled` | `dead`.
    pub status: String,
    /// Times the job has started running (shutdown hand-backs not counted).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub worker: Option<String>,
    pub finish_reason: Option<String>,
    /// Error code of the error body (`VALIDATION_ERROR`, `INTERNAL_ERROR`, ...).
    #[serde(default)]
    pub error_code: Option<String>,
    /// Failure, death or cancellation reason.
    pub error: Option<String>,
    #[serde(default)]
    pub cancelled_by: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub timings: Option<TimingsRecord>,
    /// Answered from the response cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

fn inference_kind() -> String {
    "inference".into()
}

fn normal() -> String {
    "normal".into()
}

impl JobRecord {
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "cancelled" | "dead"
        )
    }
}

/// What an idempotency key points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    pub job_id: String,
    pub body_sha256: String,
    pub at: DateTime<Utc>,
}

pub struct JobsProjection;

pub fn queued_key(priority: &str, job_id: &str) -> Vec<u8> {
    let mut k = vec![b'q', b'0' + priority_rank(priority)];
    k.extend_from_slice(job_id.as_bytes());
    k
}

fn owner_key(owner: &str, job_id: &str) -> Vec<u8> {
    let mut k = vec![b'o'];
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(job_id.as_bytes());
    k
}

fn idempotency_key(digest: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(digest.as_bytes());
    k
}

fn running_key(job_id: &str) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(job_id.as_bytes());
    k
}

fn count_key(status: &str) -> Vec<u8> {
    format!("n:{status}").into_bytes()
}

/// Adds `delta` to the count of jobs in `status`.
fn add_count(tx: &mut ProjectionTx<'_>, status: &str, delta: i64) -> Result<(), EventError> {
    let key = count_key(status);
    let now = tx
        .get(INDEX, &key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    let next = now.saturating_add_signed(delta);
    tx.put(INDEX, key, next.to_be_bytes().to_vec())
}

/// Applies `f` to the job and keeps the indexes and counts in step with its status.
fn update(
    tx: &mut ProjectionTx<'_>,
    job_id: &str,
    env: &Envelope,
    f: impl FnOnce(&mut JobRecord),
) -> Result<(), EventError> {
    let Some(mut j) = tx.get_json::<JobRecord>(KS, job_id.as_bytes())? else {
        return Ok(());
    };
    let before = (j.status.clone(), j.priority.clone());
    f(&mut j);
    j.updated_at = env.ts;
    if j.is_finished() && j.finished_at.is_none() {
        j.finished_at = Some(env.ts);
    }
    if before.0 == "queued" {
        tx.delete(INDEX, queued_key(&before.1, job_id))?;
    }
    if j.status == "queued" {
        j.finished_at = None;
        tx.put(INDEX, queued_key(&j.priority, job_id), Vec::new())?;
    }
    if before.0 != j.status {
        if before.0 == "running" {
            tx.delete(INDEX, running_key(job_id))?;
        }
        if j.status == "running" {
            tx.put(INDEX, running_key(job_id), Vec::new())?;
        }
        add_count(tx, &before.0, -1)?;
        add_count(tx, &j.status, 1)?;
    }
    tx.put_json(KS, job_id.as_bytes(), &j)?;
    Ok(())
}

fn completed(j: &mut JobRecord, finish: &str, prompt: u64, completion: u64, t: TimingsRecord) {
    j.status = "completed".into();
    j.finish_reason = Some(finish.to_string());
    j.prompt_tokens = Some(prompt);
    j.completion_tokens = Some(completion);
    j.timings = Some(t);
    j.error = None;
    j.error_code = None;
}

fn new_record(env: &Envelope, job_id: &str, model: &str) -> JobRecord {
    JobRecord::queued(job_id, model, env.ts)
}

impl JobRecord {
    /// A job just queued at `ts` (priority `normal`, no owner: the caller sets those).
    pub fn queued(job_id: &str, model: &str, ts: DateTime<Utc>) -> JobRecord {
        JobRecord {
            job_id: job_id.to_string(),
            kind: inference_kind(),
            model: model.to_string(),
            owner: None,
            priority: normal(),
            status: "queued".into(),
            attempts: 0,
            created_at: ts,
            updated_at: ts,
            started_at: None,
            finished_at: None,
            worker: None,
            finish_reason: None,
            error_code: None,
            error: None,
            cancelled_by: None,
            prompt_tokens: None,
            completion_tokens: None,
            timings: None,
            cached: false,
        }
    }
}

impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        "jobs.v2"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS, INDEX]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        let set = |s: &str| s.to_string();
        match event {
            Event::JobQueued(e) => {
                let mut j = new_record(env, &e.job_id, &e.model);
                j.kind = e.kind.clone();
                j.owner = Some(e.owner.clone());
                j.priority = e.priority.clone();
                tx.put_json(KS, e.job_id.as_bytes(), &j)?;
                tx.put(INDEX, queued_key(&e.priority, &e.job_id), Vec::new())?;
                add_count(tx, "queued", 1)?;
                tx.put(INDEX, owner_key(&e.owner, &e.job_id), Vec::new())?;
                if let Some(idem) = &e.idempotency {
                    let entry = IdempotencyEntry {
                        job_id: e.job_id.clone(),
                        body_sha256: idem.body_sha256.clone(),
                        at: env.ts,
                    };
                    tx.put_json(INDEX, idempotency_key(&idem.key_sha256), &entry)?;
                }
            }
            Event::JobStarted(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("running");
                j.attempts = e.attempt;
                j.worker = Some(e.worker.clone());
                j.started_at = Some(env.ts);
            })?,
            Event::JobCompleted(e) => update(tx, &e.job_id, env, |j| {
                completed(
                    j,
                    &e.finish_reason,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.timings,
                );
                j.cached = e.cached;
            })?,
            Event::JobFailed(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("failed");
                j.error_code = Some(e.code.clone());
                j.error = Some(e.error.clone());
            })?,
            Event::JobCancelled(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("cancelled");
                j.finish_reason = Some(set("cancelled"));
                j.cancelled_by = Some(e.by.clone());
                j.completion_tokens = e.completion_tokens;
                j.error = None;
            })?,
            Event::JobPriorityChanged(e) => {
                update(tx, &e.job_id, env, |j| j.priority = e.to.clone())?
            }
            Event::JobRequeued(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("queued");
                j.worker = None;
                if !e.counts_attempt {
                    j.attempts = j.attempts.saturating_sub(1);
                }
            })?,
            Event::JobRetried(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("queued");
                j.attempts = e.attempt;
                j.error = None;
                j.error_code = None;
                j.finish_reason = None;
                j.cancelled_by = None;
                j.finished_at = None;
            })?,
            Event::JobDead(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("dead");
                j.error_code = Some(set("INTERNAL_ERROR"));
                j.error = Some(e.error.clone());
            })?,
            Event::QueuePaused(_) => tx.put(INDEX, PAUSED.to_vec(), Vec::new())?,
            Event::QueueResumed(_) => tx.delete(INDEX, PAUSED.to_vec())?,
            Event::QueuePurged(e) => {
                for (k, v) in tx.scan_prefix(KS, b"")? {
                    let j: JobRecord = serde_json::from_slice(&v)
                        .map_err(|e| EventError::decode("jobs record", e))?;
                    let old = j.finished_at.is_some_and(|t| t < e.finished_before);
                    if old && e.statuses.contains(&j.status) {
                        tx.delete(KS, k)?;
                        add_count(tx, &j.status, -1)?;
                        if let Some(owner) = &j.owner {
                            tx.delete(INDEX, owner_key(owner, &j.job_id))?;
                        }
                    }
                }
            }
            // Jobs from before the durable queue.
            Event::InferenceQueued(e) => {
                let j = new_record(env, &e.job_id, &e.model);
                tx.put_json(KS, e.job_id.as_bytes(), &j)?;
                add_count(tx, "queued", 1)?;
            }
            Event::InferenceStarted(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("running");
                j.attempts += 1;
            })?,
            Event::InferenceCompleted(e) => update(tx, &e.job_id, env, |j| {
                completed(
                    j,
                    &e.finish_reason,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.timings,
                )
            })?,
            Event::InferenceFailed(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("failed");
                j.error = Some(e.error.clone());
            })?,
            Event::InferenceCancelled(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("cancelled");
                j.error = Some(e.reason.clone());
            })?,
            _ => {}
        }
        Ok(())
    }
}

pub fn get(store: &EventStore, job_id: &str) -> Result<Option<JobRecord>, EventError> {
    read_json(store, KS, job_id.as_bytes())
}

/// All jobs, ordered by job id (UUID v7 ids sort by creation time).
pub fn list(store: &EventStore) -> Result<Vec<JobRecord>, EventError> {
    scan_json(store, KS, b"")
}

/// Ids of queued jobs in the order they are to start.
pub fn queued_ids(store: &EventStore) -> Result<Vec<String>, EventError> {
    Ok(store
        .projection_scan(INDEX, b"q")?
        .into_iter()
        .filter_map(|(k, _)| String::from_utf8(k.get(2..)?.to_vec()).ok())
        .collect())
}

/// Ids of running jobs.
pub fn running_ids(store: &EventStore) -> Result<Vec<String>, EventError> {
    Ok(store
        .projection_scan(INDEX, b"r")?
        .into_iter()
        .filter_map(|(k, _)| String::from_utf8(k[1..].to_vec()).ok())
        .collect())
}

/// How many jobs are in `status`.
pub fn count(store: &EventStore, status: &str) -> Result<u64, EventError> {
    Ok(store
        .projection_get(INDEX, &count_key(status))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Job ids of one owner, oldest first.
pub fn owner_job_ids(store: &EventStore, owner: &str) -> Result<Vec<String>, EventError> {
    let mut prefix = vec![b'o'];
    prefix.extend_from_slice(owner.as_bytes());
    prefix.push(0);
    Ok(store
        .projection_scan(INDEX, &prefix)?
        .into_iter()
        .filter_map(|(k, _)| String::from_utf8(k[prefix.len()..].to_vec()).ok())
        .collect())
}

pub fn idempotency(
    store: &EventStore,
    digest: &str,
) -> Result<Option<IdempotencyEntry>, EventError> {
    match store.projection_get(INDEX, &idempotency_key(digest))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| EventError::decode("idempotency record", e)),
    }
}

pub fn is_paused(store: &EventStore) -> Result<bool, EventError> {
    Ok(store.projection_get(INDEX, PAUSED)?.is_some())
}
