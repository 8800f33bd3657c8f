//! Server-sent events of a job: `POST /api/v1/inference` and `POST /api/v1/jobs` with
//! `"stream": true`, and `GET /api/v1/jobs/{id}/stream` to join or resume one.
//!
//! Events, in order: `job` `{"job_id"}`; `queued` `{"position"}` while the job waits (again
//! whenever its place changes); `token` `{"index","text"}` per generated piece, SSE id
//! `<job_id>:<index>`; then exactly one `done` `{"finish_reason","usage","timings"}` or one
//! `error` in the error body's shape. A job run again (a retry, or after a crash) sends
//! `retry` `{"attempt"}` and starts its pieces over at index 0.
//!
//! How a stream follows a job (`crate::stream` keeps the pieces): subscribe to the live
//! channel, read the job, read stored pieces from the next index, and finish when the job
//! read before that storage read had already ended; otherwise take live pieces in order,
//! and go back to storage on a gap, a lag, a restart or the job's end.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use poem::web::sse::{Event, SSE};
use poem::{IntoResponse, Response};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{
    MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object, Union};
use tokio::sync::broadcast::error::RecvError;

use super::conn::PeerWatch;
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::inference::{Timings, Usage};
use crate::auth::{Permission, Principal};
use crate::events::projections::jobs::JobRecord;
use crate::events::EventContext;
use crate::server::AppState;
use crate::stream::{Chunk, StreamSlot};

/// Stored pieces read per storage round.
const PAGE: usize = 256;

#[derive(Debug, Object)]
pub struct JobEvent {
    pub job_id: String,
}

#[derive(Debug, Object)]
pub struct QueuedEvent {
    /// 1-based place among queued jobs.
    #[oai(nullable)]
    pub position: Option<u32>,
}

#[derive(Debug, Object)]
pub struct RetryEvent {
    /// The attempt that starts now; earlier pieces are void.
    pub attempt: u32,
}

#[derive(Debug, Object)]
pub struct TokenEvent {
    /// 0-based, gap-free within one attempt.
    pub index: u64,
    pub text: String,
}

#[derive(Debug, Object)]
pub struct DoneEvent {
    /// `stop`, `length` or `cancelled`.
    pub finish_reason: String,
    pub usage: Usage,
    pub timings: Timings,
}

/// The data of one event; the SSE `event` field names which (`job`, `queued`, `retry`,
/// `token`, `done`, `error`).
#[derive(Debug, Union)]
pub enum StreamEvent {
    Job(JobEvent),
    Queued(QueuedEvent),
    Retry(RetryEvent),
    Token(TokenEvent),
    Done(DoneEvent),
    Error(ErrorBody),
}

/// A `text/event-stream` answer whose events' data are `S` (documented in the spec).
pub struct Sse<S = StreamEvent> {
    events: BoxStream<'static, Event>,
    keep_alive: Duration,
    schema: PhantomData<fn() -> S>,
}

impl<S> Sse<S> {
    pub(super) fn new(events: BoxStream<'static, Event>, keep_alive: Duration) -> Self {
        Self {
            events,
            keep_alive,
            schema: PhantomData,
        }
    }
}

/// Keep-alive comments every `[stream] keep_alive_secs`.
pub(super) fn keep_alive(state: &AppState) -> Duration {
    Duration::from_secs(state.config().stream.keep_alive_secs.max(1))
}

impl<S: Type> Payload for Sse<S> {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    /// The schema of one event, the fields of the SSE wire format (how OpenAPI 3.2's
    /// `itemSchema`, and tools such as Schemathesis for 3.0, read a `text/event-stream`
    /// schema); `data` is the JSON of the schema `S` (its title), registered beside it.
    fn schema_ref() -> MetaSchemaRef {
        let string = |description| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                description: Some(description),
                ..MetaSchema::new("string")
            }))
        };
        let data = MetaSchemaRef::Inline(Box::new(MetaSchema {
            title: Some(S::name().into_owned()),
            description: Some("The event's data: JSON of the schema named in the title."),
            ..MetaSchema::new("string")
        }));
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some("One server-sent event."),
            required: vec!["data"],
            properties: vec![
                ("event", string("The event's name.")),
                ("id", string("The event's id, for `Last-Event-ID`.")),
                ("data", data),
            ],
            ..MetaSchema::new("object")
        }))
    }

    fn register(registry: &mut Registry) {
        S::register(registry);
    }
}

impl<S: Type> ApiResponse for Sse<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Server-sent events.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Self as Payload>::CONTENT_TYPE,
                    schema: <Self as Payload>::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }
}

/// One JSON body, or server-sent events (`"stream": true`), both documented under 200.
pub enum JsonOrSse<T, S = StreamEvent> {
    Json(Json<T>),
    Stream(Sse<S>),
}

impl<T: ToJSON, S: Type> IntoResponse for JsonOrSse<T, S> {
    fn into_response(self) -> Response {
        match self {
            JsonOrSse::Json(j) => j.into_response(),
            JsonOrSse::Stream(s) => s.into_response(),
        }
    }
}

impl<T: ToJSON, S: Type> ApiResponse for JsonOrSse<T, S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The whole answer (JSON), or its events with `\"stream\": true`.",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: <Json<T> as Payload>::CONTENT_TYPE,
                        schema: <Json<T> as Payload>::schema_ref(),
                    },
                    MetaMediaType {
                        content_type: <Sse<S> as Payload>::CONTENT_TYPE,
                        schema: <Sse<S> as Payload>::schema_ref(),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <Json<T> as Payload>::register(registry);
        <Sse<S> as Payload>::register(registry);
    }
}

impl<S: Send> IntoResponse for Sse<S> {
    fn into_response(self) -> Response {
        let mut resp = SSE::new(self.events)
            .keep_alive(self.keep_alive)
            .into_response();
        // Proxies (nginx) would otherwise buffer the stream.
        resp.headers_mut().insert(
            "x-accel-buffering",
            poem::http::HeaderValue::from_static("no"),
        );
        resp
    }
}

pub(super) fn event<T: ToJSON>(name: &'static str, id: Option<String>, data: &T) -> Event {
    let e = Event::message(data.to_json_string()).event_type(name);
    match id {
        Some(id) => e.id(id),
        None => e,
    }
}

/// 403 unless the principal also holds `use_streaming`.
pub(super) fn require_streaming(principal: &Principal) -> Result<(), ApiError> {
    if principal.permissions().contains(Permission::UseStreaming) {
        Ok(())
    } else {
        Err(ApiError::forbidden("use_streaming"))
    }
}

/// A place among `[stream] max_streams`, or 503.
pub(super) fn slot(state: &AppState) -> Result<StreamSlot, ApiError> {
    state.streams().open_stream().ok_or_else(|| {
        ApiError::unavailable(
            format!(
                "at most {} streams may be open at once",
                state.streams().settings().max_streams
            ),
            2,
        )
    })
}

/// The index after `Last-Event-ID` (`<job_id>:<index>`) of `job_id`'s stream.
pub(super) fn resume_from(job_id: &str, last_event_id: Option<&str>) -> Result<u64, ApiError> {
    let Some(raw) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    let bad = || {
        ApiError::field(
            "Last-Event-ID",
            format!("Last-Event-ID must be <job_id>:<index> of this job ({job_id})"),
        )
    };
    let (id, index) = raw.rsplit_once(':').ok_or_else(bad)?;
    if id != job_id {
        return Err(bad());
    }
    index
        .parse::<u64>()
        .ok()
        .and_then(|i| i.checked_add(1))
        .ok_or_else(bad)
}

/// Cancels the job when the stream is dropped before its job ended (the client left).
struct CancelOnDrop {
    state: AppState,
    ctx: EventContext,
    job_id: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let state = self.state.clone();
        let finished = state
            .queue()
            .get(&self.job_id)
            .ok()
            .flatten()
            .is_none_or(|j| j.is_finished());
        if finished {
            return;
        }
        let ctx = self.ctx.clone();
        let job_id = std::mem::take(&mut self.job_id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = state.queue().cancel(&ctx, &job_id, "client").await;
            });
        }
    }
}

/// Forgets the job's live channel when the stream ends.
struct Unsubscribe {
    state: AppState,
    job_id: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.state.streams().unsubscribe(&self.job_id);
    }
}

/// How a stream is tied to its request.
pub(super) struct Follow {
    /// First piece to send.
    pub from: u64,
    /// `Some`: the request that queued the job; its client leaving cancels the job.
    pub owner: Option<EventContext>,
    /// The client's connection, to notice it leaving while nothing is sent.
    pub peer: Option<Arc<PeerWatch>>,
}

fn done_event(j: &JobRecord) -> DoneEvent {
    DoneEvent {
        finish_reason: j
            .finish_reason
            .clone()
            .unwrap_or_else(|| "cancelled".into()),
        usage: Usage {
            prompt_tokens: j.prompt_tokens.unwrap_or_default() as u32,
            completion_tokens: j.completion_tokens.unwrap_or_default() as u32,
        },
        timings: j.timings.unwrap_or_default().into(),
    }
}

fn error_event(j: &JobRecord) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            code: j
                .error_code
                .clone()
                .unwrap_or_else(|| "INTERNAL_ERROR".into()),
            message: j.error.clone().unwrap_or_else(|| "the job failed".into()),
            details: None,
        },
    }
}

pub(super) fn failure(message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            code: "INTERNAL_ERROR".into(),
            message: message.into(),
            details: None,
        },
    }
}

/// Queues `job` and answers with its events from the start. The client leaving cancels the
/// job unless `detach` (or the job is an earlier one, returned for its idempotency key).
pub(super) async fn queue_and_stream(
    state: &AppState,
    req: &poem::Request,
    ctx: &EventContext,
    job: crate::queue::NewJob,
    detach: bool,
) -> Result<Sse, ApiError> {
    let slot = slot(state)?;
    let enq = state.queue().enqueue(ctx, job).await?;
    let follow = Follow {
        from: 0,
        owner: (!detach && !enq.existing).then(|| ctx.clone()),
        peer: state.connections().watch(req.remote_addr()),
    };
    Ok(job_stream(state.clone(), enq.record.job_id, follow, slot))
}

/// What following a job yields, before it is shaped for a client (our SSE events, or
/// OpenAI's chunks).
#[derive(Debug)]
pub(super) enum Item {
    Queued(Option<u32>),
    Retry(u32),
    Token(u64, String),
    /// Completed or cancelled, with the number of pieces the job has.
    Done(Box<JobRecord>, u64),
    /// Failed, dead, or unreadable, with the number of pieces the job has.
    Error(ErrorBody, u64),
}

/// The event stream of `job_id` as an answer.
pub(super) fn job_stream(state: AppState, job_id: String, follow: Follow, slot: StreamSlot) -> Sse {
    let keep_alive = keep_alive(&state);
    let id = job_id.clone();
    let head = futures::stream::once(async move { event("job", None, &JobEvent { job_id: id }) });
    let sse_id = job_id.clone();
    let items = follow_job(state, job_id, follow, slot).map(move |item| {
        let id = |i: u64| Some(format!("{sse_id}:{i}"));
        match item {
            Item::Queued(position) => event("queued", None, &QueuedEvent { position }),
            Item::Retry(attempt) => event("retry", None, &RetryEvent { attempt }),
            Item::Token(index, text) => event("token", id(index), &TokenEvent { index, text }),
            // The id after the last piece: resuming from it gives just the end again.
            Item::Done(j, pieces) => event("done", id(pieces), &done_event(&j)),
            Item::Error(e, pieces) => event("error", id(pieces), &e),
        }
    });
    Sse::new(head.chain(items).boxed(), keep_alive)
}

/// Follows `job_id` from piece `follow.from` to its end.
pub(super) fn follow_job(
    state: AppState,
    job_id: String,
    follow: Follow,
    slot: StreamSlot,
) -> impl futures::Stream<Item = Item> + Send + 'static {
    async_stream::stream! {
        let _slot = slot;
        let hub = state.streams().clone();
        // Declared before the receiver, so dropped after it.
        let _unsubscribe = Unsubscribe { state: state.clone(), job_id: job_id.clone() };
        let mut rx = hub.subscribe(&job_id);
        let viewer = follow.owner.is_none();
        let _cancel = follow.owner.map(|ctx| CancelOnDrop {
            state: state.clone(),
            ctx,
            job_id: job_id.clone(),
        });
        let peer = follow.peer;
        let gone = async move {
            match peer {
                Some(w) => w.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(gone);
        let mut end = state.queue().wait(&job_id);
        let mut ended = false;
        let mut next = follow.from;
        let mut position = None;
        loop {
            // The job first, then storage: a job seen ended here has all its pieces stored.
            let record = match state.queue().get(&job_id) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    yield Item::Error(failure("the job is gone (purged)"), next);
                    return;
                }
                Err(e) => {
                    tracing::warn!(job_id, error = %e, "reading a streamed job failed");
                    yield Item::Error(failure("the job could not be read"), next);
                    return;
                }
            };
            loop {
                let page = match hub.stored(&job_id, next, PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(job_id, error = %e, "reading stored tokens failed");
                        yield Item::Error(failure("the job's tokens could not be read"), next);
                        return;
                    }
                };
                let full = page.len() == PAGE;
                for (index, text) in page {
                    if index != next {
                        break;
                    }
                    yield Item::Token(index, text);
                    next = index + 1;
                }
                if !full {
                    break;
                }
            }
            match record.status.as_str() {
                "completed" | "cancelled" => {
                    yield Item::Done(Box::new(record), hub.pieces(&job_id).unwrap_or(next));
                    return;
                }
                "failed" | "dead" => {
                    yield Item::Error(error_event(&record), hub.pieces(&job_id).unwrap_or(next));
                    return;
                }
                "queued" => {
                    let now = state.queue().position(&job_id).map(|p| p as u32);
                    if position != Some(now) {
                        position = Some(now);
                        yield Item::Queued(now);
                    }
                }
                _ => {}
            }
            let recheck = if record.status == "queued" { 1 } else { 5 };
            let sleep = tokio::time::sleep(Duration::from_secs(recheck));
            tokio::pin!(sleep);
            // Live pieces in order until something sends us back to storage.
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok(Chunk::Token { index, text }) if index == next => {
                            yield Item::Token(index, text.to_string());
                            next = index + 1;
                        }
                        Ok(Chunk::Token { index, .. }) if index < next => {}
                        Ok(Chunk::Token { .. }) => break,
                        Ok(Chunk::Started { attempt }) => {
                            if next > 0 {
                                yield Item::Retry(attempt);
                                next = 0;
                            }
                            break;
                        }
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            rx = hub.subscribe(&job_id);
                            break;
                        }
                    },
                    _ = &mut end, if !ended => {
                        // Ended (or the queue let go of the waiter: the timer re-checks).
                        ended = true;
                        break;
                    }
                    _ = &mut sleep => break,
                    _ = &mut gone => return,
                    _ = hub.closed(), if viewer => return,
                }
            }
        }
    }
}
