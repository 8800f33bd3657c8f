//! `/api/v1/audit`: query, tail, verify and export the event log (`view_audit_logs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::error::ApiError;
use super::security::Auth;
use super::stream::Sse;
use super::ApiTags;
use crate::auth::{perm, Permission};
use crate::events::{format_ts, Envelope, EventQuery, EventStore};
use crate::server::AppState;

/// One stored event envelope, exactly as hashed.
#[derive(Debug, Clone, Object)]
pub struct AuditEvent {
    /// Gap-free, from 1.
    pub seq: u64,
    /// UUID v7.
    pub id: String,
    /// RFC 3339, UTC.
    pub ts: String,
    #[oai(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub actor: Value,
    #[oai(nullable)]
    pub request_id: Option<String>,
    #[oai(nullable)]
    pub client_ip: Option<String>,
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
    /// Payload fields of an old event version left out because events must not hold them
    /// (e.g. `payload.password_hash` of `user.created` v1); absent when none.
    #[oai(nullable)]
    pub redacted: Option<Vec<String>>,
}

impl From<&Envelope> for AuditEvent {
    fn from(e: &Envelope) -> Self {
        let fields = e.redacted_fields();
        let shown = e.shown();
        Self {
            seq: e.seq,
            id: e.id.to_string(),
            ts: format_ts(&e.ts),
            event_type: e.r#type.clone(),
            version: e.version,
            actor: serde_json::json!({"kind": e.actor.kind.as_str(), "id": e.actor.id}),
            request_id: e.request_id.clone(),
            client_ip: e.client_ip.clone(),
            payload: shown.payload.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            redacted: (!fields.is_empty())
                .then(|| fields.iter().map(|f| format!("payload.{f}")).collect()),
        }
    }
}

#[derive(Debug, Object)]
pub struct EventPageBody {
    pub events: Vec<AuditEvent>,
    /// Pass as `after` (oldest first) or `before` (newest first) for the next page.
    #[oai(nullable)]
    pub next_cursor: Option<u64>,
}

#[derive(Debug, Object)]
pub struct VerifyBody {
    pub ok: bool,
    pub events: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first event whose hash or link does not verify.
    #[oai(nullable)]
    pub first_bad_seq: Option<u64>,
    /// Why it does not: `missing`, `unreadable`, `not canonical` (not in the layout and
    /// canonical form the server writes; such bytes are never re-encoded to be hashed),
    /// `seq mismatch`, `broken link` or `hash mismatch`.
    #[oai(nullable)]
    pub first_bad_reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// One envelope per line (NDJSON), oldest first.
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Ok(Binary<Body>),
}

/// Filters shared by the list and export endpoints.
struct Filters {
    after: Option<u64>,
    before: Option<u64>,
    event_type: Option<String>,
    actor: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Filters {
    fn query(&self, limit: usize, newest_first: bool) -> EventQuery {
        EventQuery {
            after: self.after,
            before: self.before,
            types: self
                .event_type
                .iter()
                .flat_map(|t| t.split(','))
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            actor: self.actor.clone(),
            since: self.since,
            until: self.until,
            limit,
            newest_first,
        }
    }
}

/// Events after `after` (ascending) from the store, in pages, then live from the broadcast.
/// How often an open tail checks its credential again.
const RECHECK_SECS: u64 = 30;

/// Event types after which an open tail re-checks its credential at once.
const REVOKING: &[&str] = &[
    "api_key.revoked",
    "api_key.rotated",
    "auth.token_revoked",
    "user.disabled",
    "user.deleted",
    "user.password_changed",
    "user.updated",
];

/// The SSE tail: stored events after `after`, then live ones. It ends when `allowed`
/// (the credential that opened it, checked again) turns false: every `recheck` and at once
/// after a revoking event.
fn tail(
    store: EventStore,
    after: u64,
    types: Vec<String>,
    allowed: impl Fn() -> bool + Send + 'static,
    recheck: Duration,
) -> BoxStream<'static, AuditEvent> {
    let mut live = store.subscribe();
    async_stream::stream! {
        let mut last = after;
        let mut tick = tokio::time::interval(recheck);
        tick.tick().await;
        loop {
            // Catch up from the store.
            loop {
                let page = store.query(&EventQuery {
                    after: Some(last),
                    limit: 500,
                    ..EventQuery::default()
                });
                let Ok(page) = page else { return };
                if page.events.is_empty() {
                    break;
                }
                if page.events.iter().any(|e| REVOKING.contains(&e.r#type.as_str())) && !allowed() {
                    return;
                }
                for e in &page.events {
                    last = e.seq;
                    if types.is_empty() || types.contains(&e.r#type) {
                        yield AuditEvent::from(e);
                    }
                }
            }
            // Then live, until we fall behind.
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    _ = tick.tick() => {
                        if !allowed() {
                            return;
                        }
                        continue;
                    }
                };
                match received {
                    Ok(e) if e.seq <= last => continue,
                    Ok(e) if e.seq == last + 1 => {
                        last = e.seq;
                        if REVOKING.contains(&e.r#type.as_str()) && !allowed() {
                            return;
                        }
                        if types.is_empty() || types.contains(&e.r#type) {
                            yield AuditEvent::from(e.as_ref());
                        }
                    }
                    // A gap or a lag: catch up from the store again.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
    .boxed()
}

pub struct AuditApi;

#[OpenApi(tag = "ApiTags::Audit")]
impl AuditApi {
    /// Query the event log with filters, cursor-paginated. Requires permission
    /// `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/events",
        method = "get",
        operation_id = "list_audit_events"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        /// Only events with seq greater than this.
        after: Query<Option<u64>>,
        /// Only events with seq less than this.
        before: Query<Option<u64>>,
        /// Event type(s), comma-separated, e.g. `auth.login_failed`.
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
        /// Actor id.
        actor: Query<Option<String>>,
        /// RFC 3339 lower bound on `ts`.
        since: Query<Option<DateTime<Utc>>>,
        /// RFC 3339 upper bound on `ts`.
        until: Query<Option<DateTime<Utc>>>,
        /// 1 to 1000; default 100.
        limit: Query<Option<u32>>,
        /// `asc` (oldest first, default) or `desc` (newest first).
        order: Query<Option<String>>,
    ) -> Result<Json<EventPageBody>, ApiError> {
        let limit = limit.0.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::field("limit", "limit must be between 1 and 1000"));
        }
        let newest_first = match order.0.as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => return Err(ApiError::field("order", "order must be asc or desc")),
        };
        let filters = Filters {
            after: after.0,
            before: before.0,
            event_type: event_type.0,
            actor: actor.0,
            since: since.0,
            until: until.0,
        };
        let page = state
            .store()
            .query(&filters.query(limit as usize, newest_first))?;
        Ok(Json(EventPageBody {
            events: page.events.iter().map(AuditEvent::from).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// One event by its sequence number. Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/events/:seq",
        method = "get",
        operation_id = "get_audit_event"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        seq: Path<u64>,
    ) -> Result<Json<AuditEvent>, ApiError> {
        match state.store().get(seq.0)? {
            Some(e) => Ok(Json(AuditEvent::from(&e))),
            None => Err(ApiError::not_found(format!("no event with seq {}", seq.0))),
        }
    }

    /// Live tail over SSE. Each event's SSE `id` is its seq; reconnect with `Last-Event-ID`
    /// (or `?after=`) to resume: stored events are replayed before going live. Requires
    /// permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/stream",
        method = "get",
        operation_id = "stream_audit_events"
    )]
    async fn stream(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ViewAuditLogs>,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
        after: Query<Option<u64>>,
        /// Event type(s), comma-separated.
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
    ) -> Result<Sse<AuditEvent>, ApiError> {
        let resume = match last_event_id.0 {
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                ApiError::field("Last-Event-ID", "Last-Event-ID must be an event seq")
            })?),
            None => None,
        };
        let from = resume.or(after.0).unwrap_or(0);
        let types = event_type
            .0
            .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
        // The tail ends when the credential that opened it no longer could.
        let (checker, principal) = (state.0.clone(), auth.principal().clone());
        let allowed = move || {
            checker
                .auth()
                .recheck(&principal)
                .is_ok_and(|p| p.permissions().contains(Permission::ViewAuditLogs))
        };
        let stream = tail(
            state.store().clone(),
            from,
            types,
            allowed,
            Duration::from_secs(RECHECK_SECS),
        );
        let events = stream
            .map(|e| {
                let data = serde_json::to_string(&poem_openapi::types::ToJSON::to_json(&e))
                    .unwrap_or_default();
                poem::web::sse::Event::message(data)
                    .id(e.seq.to_string())
                    .event_type(e.event_type.clone())
            })
            .boxed();
        Ok(Sse::new(events, Duration::from_secs(15)))
    }

    /// Recompute the whole hash chain. Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/verify",
        method = "get",
        operation_id = "verify_audit_log"
    )]
    async fn verify(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
    ) -> Result<Json<VerifyBody>, ApiError> {
        let store = state.store().clone();
        let r = tokio::task::spawn_blocking(move || store.verify())
            .await
            .map_err(ApiError::internal)?;
        crate::metrics::chain_verified(!r.ok);
        Ok(Json(VerifyBody {
            ok: r.ok,
            events: r.events,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            first_bad_seq: r.first_bad_seq,
            first_bad_reason: r.first_bad_reason,
        }))
    }

    /// Export envelopes as NDJSON (filters as for the list), verifiable offline with the
    /// documented hash rule. Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/export",
        method = "get",
        operation_id = "export_audit_log"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn export(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        after: Query<Option<u64>>,
        before: Query<Option<u64>>,
        #[oai(name = "type")] event_type: Query<Option<String>>,
        actor: Query<Option<String>>,
        since: Query<Option<DateTime<Utc>>>,
        until: Query<Option<DateTime<Utc>>>,
    ) -> Result<ExportResponse, ApiError> {
        let filters = Filters {
            after: after.0,
            before: before.0,
            event_type: event_type.0,
            actor: actor.0,
            since: since.0,
            until: until.0,
        };
        let store = state.store().clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
        tokio::task::spawn_blocking(move || {
            let mut cursor = filters.after;
            loop {
                let mut q = filters.query(1000, false);
                q.after = cursor;
                let page = match store.query(&q) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                };
                let mut buf = Vec::new();
                for e in &page.events {
                    buf.extend_from_slice(&e.export_line());
                    buf.push(b'\n');
                }
                if !buf.is_empty() && tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
                match page.next_cursor {
                    Some(c) if !page.events.is_empty() => cursor = Some(c),
                    _ => return,
                }
            }
        });
        let stream = tokio_stream_from(rx);
        Ok(ExportResponse::Ok(Binary(Body::from_bytes_stream(stream))))
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    async_stream::stream! {
        while let Some(item) = rx.recv().await {
            yield item;
        }
    }
}
