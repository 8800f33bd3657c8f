//! `/api/v1/queue`: the queue manager's view and controls (`manage_queue`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::error::ApiError;
use super::jobs::{cancel_and_wait, job_view, page, status_filter, Job, JobPage};
use super::payload::StrictJson;
use super::security::Auth;
use super::ApiTags;
use crate::auth::perm;
use crate::queue::{JobFilter, Priority, FINISHED};
use crate::server::AppState;

#[derive(Debug, Object)]
pub struct StatusCount {
    pub status: String,
    pub count: u64,
}

#[derive(Debug, Object)]
pub struct ModelCount {
    pub model: String,
    pub queued: u64,
    pub running: u64,
}

#[derive(Debug, Object)]
pub struct Worker {
    pub name: String,
    /// The node it runs on (`[cluster] node_id`; in cluster mode each node lists its own).
    pub node: String,
    pub last_heartbeat: DateTime<Utc>,
    /// Ids of the jobs it runs now.
    pub running_jobs: Vec<String>,
}

#[derive(Debug, Object)]
pub struct QueueOverview {
    /// Jobs per state, every state listed.
    pub by_status: Vec<StatusCount>,
    /// Queued and running jobs per model.
    pub by_model: Vec<ModelCount>,
    /// Seconds the oldest queued job has waited; absent when none is queued.
    #[oai(nullable)]
    pub oldest_queued_age_secs: Option<f64>,
    pub workers: Vec<Worker>,
    pub completed_last_minute: u64,
    pub tokens_last_minute: u64,
    /// While paused, jobs are accepted but none starts.
    pub paused: bool,
    /// `[queue] max_depth`: queued + running jobs beyond it are refused with 503.
    pub max_depth: u64,
    /// NATS publishing; absent when `[nats]` is not configured.
    #[oai(skip_serializing_if_is_none)]
    pub nats: Option<NatsOverview>,
}

/// The NATS publisher: connection, core NATS counters, the JetStream copy of the log.
#[derive(Debug, Object)]
pub struct NatsOverview {
    /// `[nats]` is set (always true where this object is present).
    pub configured: bool,
    pub connected: bool,
    /// When `connected` last changed, or when the client started.
    pub since: DateTime<Utc>,
    /// The last connection error since the last (re)connect.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Tokens published to `inferno.jobs.<job_id>.tokens`.
    pub tokens_published: u64,
    /// Tokens dropped (NATS down or the buffer full): core NATS is at-most-once.
    pub tokens_dropped: u64,
    /// Job lifecycle events published to `inferno.jobs.<job_id>.events`.
    pub lifecycle_published: u64,
    /// Job lifecycle events dropped while NATS was down.
    pub lifecycle_dropped: u64,
    /// The JetStream copy of the log; present with `[nats] events = true`.
    #[oai(nullable)]
    pub jetstream: Option<JetStreamOverview>,
}

/// The follower that copies every committed event into JetStream.
#[derive(Debug, Object)]
pub struct JetStreamOverview {
    /// `INFERNO_EVENTS`.
    pub stream: String,
    /// The last event seq the stream acknowledged.
    pub acked_seq: u64,
    /// Committed events not yet in the stream (log head minus `acked_seq`).
    pub lag: u64,
    /// Why the follower last paused (NATS down, no JetStream, ...); cleared when it resumes.
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<crate::nats::NatsStatus> for NatsOverview {
    fn from(s: crate::nats::NatsStatus) -> Self {
        NatsOverview {
            configured: true,
            connected: s.connected,
            since: s.since,
            last_error: s.last_error,
            tokens_published: s.tokens_published,
            tokens_dropped: s.tokens_dropped,
            lifecycle_published: s.lifecycle_published,
            lifecycle_dropped: s.lifecycle_dropped,
            jetstream: s.jetstream.map(|j| JetStreamOverview {
                stream: j.stream,
                acked_seq: j.acked_seq,
                lag: j.lag,
                last_error: j.last_error,
            }),
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct SetPriority {
    /// `low`, `normal`, `high` or `critical`.
    pub priority: String,
}

#[derive(Debug, Object)]
pub struct Purged {
    /// Jobs removed from the queue (their events stay in the log).
    pub purged: u64,
}

#[derive(Debug, Object)]
pub struct PauseState {
    pub paused: bool,
}

/// `30s`, `15m`, `12h`, `7d` or a number of seconds.
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

fn job_id(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state.queue().get(id)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("job {id} not found"))),
    }
}

pub struct QueueApi;

#[OpenApi(tag = "ApiTags::Queue")]
impl QueueApi {
    /// Counts by state and model, the oldest queued job's age, workers, recent throughput,
    /// the paused flag and, when configured, the NATS publisher's state. Requires
    /// permission `manage_queue`.
    #[oai(
        path = "/api/v1/queue",
        method = "get",
        operation_id = "queue_overview"
    )]
    async fn overview(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ManageQueue>,
    ) -> Result<Json<QueueOverview>, ApiError> {
        let s = state.queue().stats()?;
        let node = state.node_id();
        Ok(Json(QueueOverview {
            by_status: s
                .by_status
                .into_iter()
                .map(|(status, count)| StatusCount { status, count })
                .collect(),
            by_model: s
                .by_model
                .into_iter()
                .map(|(model, queued, running)| ModelCount {
                    model,
                    queued,
                    running,
                })
                .collect(),
            oldest_queued_age_secs: s.oldest_queued_age.map(|d| d.as_secs_f64()),
            workers: s
                .workers
                .into_iter()
                .map(|w| Worker {
                    name: w.name,
                    node: node.to_string(),
                    last_heartbeat: w.last_heartbeat,
                    running_jobs: w.running_jobs,
                })
                .collect(),
            completed_last_minute: s.completed_last_minute,
            tokens_last_minute: s.tokens_last_minute,
            paused: s.paused,
            max_depth: s.max_depth as u64,
            nats: state.nats().map(|n| n.status().into()),
        }))
    }

    /// Every user's jobs, newest first, filtered and paged. Requires permission
    /// `manage_queue`.
    #[oai(
        path = "/api/v1/queue/jobs",
        method = "get",
        operation_id = "queue_list_jobs"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ManageQueue>,
        status: Query<Option<String>>,
        model: Query<Option<String>>,
        /// Owner's user id.
        user: Query<Option<String>>,
        priority: Query<Option<String>>,
        cursor: Query<Option<String>>,
        /// 1 to 1000, default 100.
        limit: Query<Option<u32>>,
    ) -> Result<Json<JobPage>, ApiError> {
        let priority = match priority.0.as_deref() {
            None => None,
            Some(p) => Some(Priority::parse(p).ok_or_else(|| {
                ApiError::field("priority", "priority must be low, normal, high or critical")
            })?),
        };
        let filter = JobFilter {
            status: status_filter(status.0)?,
            model: model.0,
            owner: user.0,
            priority,
        };
        let limit = super::page_limit(limit.0)?;
        let p = state.queue().list(&filter, cursor.0.as_deref(), limit)?;
        Ok(Json(page(&state, p)))
    }

    /// Cancel any job. Requires permission `manage_queue`.
    #[oai(
        path = "/api/v1/queue/jobs/:id/cancel",
        method = "post",
        operation_id = "queue_cancel_job"
    )]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        job_id(&state, &id.0)?;
        let by = auth.principal().actor().id;
        let j = cancel_and_wait(&state, &auth.ctx, &id.0, &by).await?;
        Ok(Json(job_view(&state, j)))
    }

    /// Queue a failed, dead or cancelled job again, attempts reset. Requires permission
    /// `manage_queue`.
    #[oai(
        path = "/api/v1/queue/jobs/:id/retry",
        method = "post",
        operation_id = "queue_retry_job"
    )]
    async fn retry(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        job_id(&state, &id.0)?;
        let j = state.queue().retry(&auth.ctx, &id.0).await?;
        Ok(Json(job_view(&state, j)))
    }

    /// Change a job's priority (queued jobs move in the queue). Requires permission
    /// `manage_queue`.
    #[oai(
        path = "/api/v1/queue/jobs/:id/priority",
        method = "post",
        operation_id = "queue_set_priority"
    )]
    async fn priority(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
        id: Path<String>,
        body: StrictJson<SetPriority>,
    ) -> Result<Json<Job>, ApiError> {
        let p = Priority::parse(&body.0.priority).ok_or_else(|| {
            ApiError::field("priority", "priority must be low, normal, high or critical")
        })?;
        job_id(&state, &id.0)?;
        let j = state.queue().set_priority(&auth.ctx, &id.0, p).await?;
        Ok(Json(job_view(&state, j)))
    }

    /// Pause the queue: jobs are still accepted, none starts; running jobs finish. Survives
    /// restarts. Requires permission `manage_queue`.
    #[oai(
        path = "/api/v1/queue/pause",
        method = "post",
        operation_id = "queue_pause"
    )]
    async fn pause(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
    ) -> Result<Json<PauseState>, ApiError> {
        state.queue().pause(&auth.ctx).await?;
        Ok(Json(PauseState { paused: true }))
    }

    /// Resume a paused queue. Requires permission `manage_queue`.
    #[oai(
        path = "/api/v1/queue/resume",
        method = "post",
        operation_id = "queue_resume"
    )]
    async fn resume(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
    ) -> Result<Json<PauseState>, ApiError> {
        state.queue().resume(&auth.ctx).await?;
        Ok(Json(PauseState { paused: false }))
    }

    /// Purge finished jobs in `status` that finished more than `older_than` ago (`30s`,
    /// `15m`, `12h`, `7d`; default 0), with their stored results. Their events stay; a
    /// `queue.purged` event records the purge. Requires permission `manage_queue`.
    #[oai(
        path = "/api/v1/queue/jobs",
        method = "delete",
        operation_id = "queue_purge"
    )]
    async fn purge(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageQueue>,
        /// `completed`, `failed`, `dead` or `cancelled`.
        status: Query<String>,
        older_than: Query<Option<String>>,
    ) -> Result<Json<Purged>, ApiError> {
        if !FINISHED.contains(&status.0.as_str()) {
            return Err(ApiError::field(
                "status",
                "status must be completed, failed, dead or cancelled",
            ));
        }
        let older_than = match older_than.0.as_deref() {
            None => std::time::Duration::ZERO,
            Some(s) => parse_duration(s).ok_or_else(|| {
                ApiError::field(
                    "older_than",
                    "older_than must look like 30s, 15m, 12h or 7d",
                )
            })?,
        };
        let n = state
            .queue()
            .purge(&auth.ctx, &[status.0], older_than, false)
            .await?;
        Ok(Json(Purged { purged: n }))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(parse_duration("h"), None);
    }
}
