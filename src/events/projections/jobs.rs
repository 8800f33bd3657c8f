//! Inference jobs and their lifecycle.

use super::*;
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub const KS: &str = "jobs";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub model: String,
    /// `queued` | `running` | `completed` | `failed` | `cancelled` | `dead`.
    pub status: String,
    /// Times the job has started running.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finish_reason: Option<String>,
    /// Failure, death or cancellation reason.
    pub error: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

pub struct JobsProjection;

fn update(
    tx: &mut ProjectionTx<'_>,
    job_id: &str,
    env: &Envelope,
    f: impl FnOnce(&mut JobRecord),
) -> Result<(), EventError> {
    if let Some(mut j) = tx.get_json::<JobRecord>(KS, job_id.as_bytes())? {
        f(&mut j);
        j.updated_at = env.ts;
        tx.put_json(KS, job_id.as_bytes(), &j)?;
    }
    Ok(())
}

impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        "jobs"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        let set = |s: &str| s.to_string();
        match event {
            Event::InferenceQueued(e) => {
                let j = JobRecord {
                    job_id: e.job_id.clone(),
                    model: e.model.clone(),
                    status: set("queued"),
                    attempts: 0,
                    created_at: env.ts,
                    updated_at: env.ts,
                    finish_reason: None,
                    error: None,
                    prompt_tokens: None,
                    completion_tokens: None,
                };
                tx.put_json(KS, e.job_id.as_bytes(), &j)?;
            }
            Event::InferenceStarted(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("running");
                j.attempts += 1;
            })?,
            Event::InferenceCompleted(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("completed");
                j.finish_reason = Some(e.finish_reason.clone());
                j.prompt_tokens = Some(e.prompt_tokens);
                j.completion_tokens = Some(e.completion_tokens);
                j.error = None;
            })?,
            Event::InferenceFailed(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("failed");
                j.error = Some(e.error.clone());
            })?,
            Event::InferenceCancelled(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("cancelled");
                j.error = Some(e.reason.clone());
            })?,
            Event::JobRetried(e) => update(tx, &e.job_id, env, |j| j.status = set("queued"))?,
            Event::JobDead(e) => update(tx, &e.job_id, env, |j| {
                j.status = set("dead");
                j.error = Some(e.error.clone());
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
