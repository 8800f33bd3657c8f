//! `/api/v1/jobs`: queue an inference job, follow it, list and cancel your jobs.
//!
//! A job is visible to its owner (the user whose credential queued it) and to holders of
//! `manage_queue`; anyone else gets 404, so job ids cannot be probed.

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem::IntoResponse;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::{ApiError, ErrorDetail};
use super::inference::{to_input, InferenceRequest, Timings, Usage};
use super::payload::StrictJson;
use super::stream::{
    job_stream, queue_and_stream, require_streaming, resume_from, slot, Follow, Sse,
};
use super::ApiTags;
use crate::auth::{perm, Permission, Principal};
use crate::events::projections::jobs::JobRecord;
use crate::events::IdempotencyRecord;
use crate::inference::runner::{Runner, ValidInferenceRequest};
use crate::queue::{JobFilter, NewJob, Priority, QueueError, STATUSES};
use crate::server::AppState;

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            e @ QueueError::Full { .. } => ApiError::unavailable(e.to_string(), 2),
            e @ QueueError::OwnerCap { .. } => {
                // Counted here, where the refusal becomes the client's 429.
                crate::metrics::rate_limited(crate::metrics::RateLimit::QueueOwnerCap);
                ApiError::rate_limited(5).with_message(format!("{e}; retry after 5 s"))
            }
            QueueError::NotFound(id) => ApiError::not_found(format!("job {id} not found")),
            QueueError::Conflict(m) => ApiError::conflict(m),
            e @ QueueError::ShuttingDown => ApiError::unavailable(e.to_string(), 5),
            QueueError::Store(e) => e.into(),
        }
    }
}

/// `priority` of a request: `normal` when absent; `high` and `critical` need `manage_queue`.
pub(super) fn priority_of(
    requested: Option<&str>,
    principal: &Principal,
) -> Result<Priority, ApiError> {
    let Some(name) = requested else {
        return Ok(Priority::Normal);
    };
    let p = Priority::parse(name).ok_or_else(|| {
        ApiError::field(
            "priority",
            format!("priority must be low, normal, high or critical, not {name:?}"),
        )
    })?;
    if p.is_elevated() && !principal.permissions().contains(Permission::ManageQueue) {
        return Err(ApiError::forbidden("manage_queue").with_message(format!(
            "priority {name} requires the `manage_queue` permission"
        )));
    }
    Ok(p)
}

/// The job a validated request becomes.
pub(super) fn new_job(
    state: &AppState,
    principal: &Principal,
    priority: Priority,
    valid: ValidInferenceRequest,
    idempotency: Option<IdempotencyRecord>,
) -> NewJob {
    NewJob {
        owner: principal.user_id().to_string(),
        priority,
        request: Runner::job_request(&valid),
        params_record: valid.params.record(state.runner().record_content()),
        prompt_record: valid.prompt_record,
        idempotency,
    }
}

/// Whether `principal` may see `job`.
pub(super) fn may_see(principal: &Principal, job: &JobRecord) -> bool {
    job.owner.as_deref() == Some(principal.user_id())
        || principal.permissions().contains(Permission::ManageQueue)
}

#[derive(Debug, Object)]
pub struct JobLinks {
    #[oai(rename = "self")]
    pub self_: String,
    /// Server-sent events of the job's tokens.
    pub stream: String,
}

#[derive(Debug, Object)]
pub struct JobAccepted {
    pub job_id: String,
    /// `queued` (or the current state of an existing job for a repeated Idempotency-Key).
    pub status: String,
    /// 1-based place among queued jobs; absent once it left the queue.
    #[oai(nullable)]
    pub position: Option<u32>,
    pub links: JobLinks,
}

/// The answer of `POST /api/v1/jobs`: 202 with the queued job, or 200 with its events
/// for `"stream": true`.
pub enum Accepted {
    Accepted(Json<JobAccepted>),
    Stream(Sse),
}

impl IntoResponse for Accepted {
    fn into_response(self) -> poem::Response {
        match self {
            Accepted::Accepted(j) => j.with_status(StatusCode::ACCEPTED).into_response(),
            Accepted::Stream(s) => s.into_response(),
        }
    }
}

/// Both answers are in the spec. (Generators such as `@hey-api/openapi-ts` make an operation
/// with a `text/event-stream` answer an SSE-only call: `tests/sdk/ts/flow.ts` queues through
/// the generated client's own `post` for that reason.)
impl ApiResponse for Accepted {
    fn meta() -> MetaResponses {
        let mut responses = vec![MetaResponse {
            description: "Queued; follow `links.self`.",
            status: Some(202),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: <Json<JobAccepted> as Payload>::CONTENT_TYPE,
                schema: <Json<JobAccepted> as Payload>::schema_ref(),
            }],
            headers: vec![],
        }];
        for mut r in <Sse as ApiResponse>::meta().responses {
            r.description = "With `\"stream\": true`: the job's events, as from \
                             `GET /api/v1/jobs/{id}/stream`.";
            responses.push(r);
        }
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        <Json<JobAccepted> as Payload>::register(registry);
        <Sse as ApiResponse>::register(registry);
    }
}

#[derive(ApiResponse)]
pub enum Streamed {
    /// The job's events: `job`, `queued` while it waits, `token` (id `<job_id>:<index>`),
    /// then one `done` or `error`.
    #[oai(status = 200)]
    Stream(Sse),
}

/// The outcome of a job, present once it completed or was cancelled.
#[derive(Debug, Object)]
pub struct JobResult {
    /// Output text (partial for a cancelled job).
    #[oai(nullable)]
    pub text: Option<String>,
    /// `stop`, `length` or `cancelled`.
    #[oai(nullable)]
    pub finish_reason: Option<String>,
    #[oai(nullable)]
    pub usage: Option<Usage>,
    #[oai(nullable)]
    pub timings: Option<Timings>,
    /// Answered from the response cache, without running the model.
    pub cached: bool,
}

#[derive(Debug, Object)]
pub struct Job {
    pub id: String,
    pub model: String,
    /// User id of the job's owner.
    #[oai(nullable)]
    pub owner: Option<String>,
    /// `queued`, `running`, `completed`, `failed`, `cancelled` or `dead`.
    pub status: String,
    /// `low`, `normal`, `high` or `critical`.
    pub priority: String,
    pub attempts: u32,
    /// 1-based place among queued jobs, while queued.
    #[oai(nullable)]
    pub position: Option<u32>,
    pub queued_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub worker: Option<String>,
    /// Who cancelled it (a principal id, or `client` when the waiting client went away).
    #[oai(nullable)]
    pub cancelled_by: Option<String>,
    // Documented on `JobResult`: a field doc here would wrap its `$ref` in an `allOf`,
    // which openapi-python-client turns into an inline model named `Job` + `Result`,
    // clashing with `JobResult` itself.
    pub result: Option<JobResult>,
    /// Present once failed or dead, in the error body's shape.
    #[oai(nullable)]
    pub error: Option<ErrorDetail>,
}

pub(super) fn job_view(state: &AppState, j: JobRecord) -> Job {
    let queue = state.queue();
    let position = if j.status == "queued" {
        queue.position(&j.job_id).map(|p| p as u32)
    } else {
        None
    };
    let result = matches!(j.status.as_str(), "completed" | "cancelled").then(|| JobResult {
        text: queue.result_text(&j.job_id).ok().flatten(),
        finish_reason: j.finish_reason.clone(),
        usage: j.completion_tokens.map(|c| Usage {
            prompt_tokens: j.prompt_tokens.unwrap_or_default() as u32,
            completion_tokens: c as u32,
        }),
        timings: j.timings.map(Timings::from),
        cached: j.cached,
    });
    let error = j
        .error
        .clone()
        .filter(|_| matches!(j.status.as_str(), "failed" | "dead"));
    Job {
        position,
        result,
        error: error.map(|message| ErrorDetail {
            code: j
                .error_code
                .clone()
                .unwrap_or_else(|| "INTERNAL_ERROR".into()),
            message,
            details: None,
        }),
        id: j.job_id,
        model: j.model,
        owner: j.owner,
        status: j.status,
        priority: j.priority,
        attempts: j.attempts,
        queued_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        worker: j.worker,
        cancelled_by: j.cancelled_by,
    }
}

/// One page of jobs, newest first.
#[derive(Debug, Object)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

pub(super) fn status_filter(status: Option<String>) -> Result<Option<String>, ApiError> {
    match status {
        Some(s) if !STATUSES.contains(&s.as_str()) => Err(ApiError::field(
            "status",
            format!("status must be one of {}", STATUSES.join(", ")),
        )),
        other => Ok(other),
    }
}

pub(super) fn page(state: &AppState, p: crate::queue::JobPage) -> JobPage {
    JobPage {
        jobs: p.jobs.into_iter().map(|j| job_view(state, j)).collect(),
        next_cursor: p.next_cursor,
    }
}

/// The job, when `principal` may see it; 404 otherwise.
pub(super) fn visible_job(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<JobRecord, ApiError> {
    match state.queue().get(id)? {
        Some(j) if may_see(principal, &j) => Ok(j),
        _ => Err(ApiError::not_found(format!("job {id} not found"))),
    }
}

/// Cancels and, for a running job, waits up to 5 s for its run to stop.
pub(super) async fn cancel_and_wait(
    state: &AppState,
    ctx: &crate::events::EventContext,
    id: &str,
    by: &str,
) -> Result<JobRecord, ApiError> {
    let queue = state.queue();
    let j = queue.cancel(ctx, id, by).await?;
    if j.status != "running" {
        return Ok(j);
    }
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), queue.wait(id)).await;
    Ok(match waited {
        Ok(Ok(end)) => end.record,
        _ => queue.get(id)?.unwrap_or(j),
    })
}

pub struct JobsApi;

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Queue an inference job and return at once. Requires permission `run_inference`.
    ///
    /// `priority` `high` or `critical` also requires `manage_queue`. With an
    /// `Idempotency-Key` header, a repeat of the same request by the same user within 24 h
    /// returns the first job instead of queueing again; the same key with another body is
    /// 409. A full queue is 503 with `Retry-After`; a user holding
    /// `[queue] max_queued_per_principal` queued jobs gets 429 with `Retry-After`.
    ///
    /// `"stream": true` (also needs `use_streaming`) answers 200 with the job's
    /// server-sent events instead of 202, as `GET /api/v1/jobs/{id}/stream` does; the
    /// client leaving cancels the job unless `"detach": true`. (Only the 202 is listed
    /// below, so that generated clients read this as a JSON call.)
    #[oai(path = "/api/v1/jobs", method = "post", operation_id = "create_job")]
    async fn create(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        auth: crate::api::security::Auth<perm::RunInference>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: StrictJson<InferenceRequest>,
    ) -> Result<Accepted, ApiError> {
        let principal = auth.principal();
        let priority = priority_of(body.0.priority.as_deref(), principal)?;
        let (stream, detach) = (body.0.wants_stream(), body.0.detached());
        if stream {
            require_streaming(principal)?;
        }
        let idempotency = match idempotency_key.0.as_deref().map(str::trim) {
            None => None,
            Some(k) if k.is_empty() || k.len() > 255 => {
                return Err(ApiError::field(
                    "Idempotency-Key",
                    "Idempotency-Key must be 1 to 255 characters",
                ))
            }
            Some(k) => Some(IdempotencyRecord {
                key_sha256: crate::queue::idempotency_digest(principal.user_id(), k),
                body_sha256: crate::queue::body_digest(body.0.to_json_string().as_bytes()),
            }),
        };
        let no_cache = body.0.bypasses_cache();
        let valid = state.runner().validate(to_input(body.0)?)?;
        let mut job = new_job(&state, principal, priority, valid, idempotency);
        job.request.no_cache = no_cache;
        if stream {
            let sse = queue_and_stream(&state, req, &auth.ctx, job, detach).await?;
            return Ok(Accepted::Stream(sse));
        }
        let enq = state.queue().enqueue(&auth.ctx, job).await?;
        let id = enq.record.job_id.clone();
        Ok(Accepted::Accepted(Json(JobAccepted {
            status: enq.record.status,
            position: enq.position.map(|p| p as u32),
            links: JobLinks {
                self_: format!("/api/v1/jobs/{id}"),
                stream: format!("/api/v1/jobs/{id}/stream"),
            },
            job_id: id,
        })))
    }

    /// A job: state, priority, attempts, times, position while queued, result or error.
    /// Requires permission `run_inference`; visible to its owner or with `manage_queue`.
    #[oai(path = "/api/v1/jobs/:id", method = "get", operation_id = "get_job")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: crate::api::security::Auth<perm::RunInference>,
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        let j = visible_job(&state, auth.principal(), &id.0)?;
        Ok(Json(job_view(&state, j)))
    }

    /// Join a job's server-sent events: its tokens from the start, or after
    /// `Last-Event-ID`, then live until one `done` or `error` event. Requires permission
    /// `use_streaming`; visible to the job's owner or with `manage_queue`.
    ///
    /// A running job catches up from storage and then goes live with no gap and no
    /// duplicate; a finished job replays and ends; a queued job sends `queued` events with
    /// its position until it starts. Leaving this stream never cancels the job.
    #[oai(
        path = "/api/v1/jobs/:id/stream",
        method = "get",
        operation_id = "stream_job"
    )]
    async fn stream(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        auth: crate::api::security::Auth<perm::UseStreaming>,
        id: Path<String>,
        /// `<job_id>:<index>` of the last event received: the stream goes on after it.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
    ) -> Result<Streamed, ApiError> {
        let j = visible_job(&state, auth.principal(), &id.0)?;
        let from = resume_from(&j.job_id, last_event_id.0.as_deref())?;
        let slot = slot(&state)?;
        let follow = Follow {
            from,
            owner: None,
            peer: state.connections().watch(req.remote_addr()),
        };
        Ok(Streamed::Stream(job_stream(
            state.0.clone(),
            j.job_id,
            follow,
            slot,
        )))
    }

    /// Your jobs, newest first, paged. Requires permission `run_inference`.
    #[oai(path = "/api/v1/jobs", method = "get", operation_id = "list_jobs")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: crate::api::security::Auth<perm::RunInference>,
        /// Only jobs in this state.
        status: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// 1 to 1000, default 100.
        limit: Query<Option<u32>>,
    ) -> Result<Json<JobPage>, ApiError> {
        let filter = JobFilter {
            status: status_filter(status.0)?,
            owner: Some(auth.principal().user_id().to_string()),
            ..JobFilter::default()
        };
        let limit = super::page_limit(limit.0)?;
        let p = state.queue().list(&filter, cursor.0.as_deref(), limit)?;
        Ok(Json(page(&state, p)))
    }

    /// Cancel a job: a queued one never runs, a running one stops at its next token and
    /// keeps its partial text. Requires permission `run_inference` (own jobs) or
    /// `manage_queue`.
    #[oai(
        path = "/api/v1/jobs/:id",
        method = "delete",
        operation_id = "cancel_job"
    )]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        auth: crate::api::security::Auth<perm::RunInference>,
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        visible_job(&state, auth.principal(), &id.0)?;
        let by = auth.principal().actor().id;
        let j = cancel_and_wait(&state, &auth.ctx, &id.0, &by).await?;
        Ok(Json(job_view(&state, j)))
    }
}
