//! Signed checkpoints into JetStream (whenever `[nats]` is set), so a copy of every one
//! lives outside the machine: each `audit.checkpoint` of the log, in order, to
//! [`SUBJECT`] in the stream [`STREAM`], the C2SP note as the payload, `Nats-Msg-Id` = the
//! event's seq and `Inferno-Tree-Size` = the size it covers. Followed from the committed
//! log and resumed after the stream's last message, so a NATS outage delays copies and
//! never loses one.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::audit::checkpointer::SignedCheckpoint;
use crate::events::{EventQuery, EventStore};

/// The stream of checkpoints.
pub const STREAM: &str = "INFERNO_CHECKPOINTS";
/// Its subject.
pub const SUBJECT: &str = "inferno.audit.checkpoints";
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub(crate) async fn follow(
    store: EventStore,
    client: async_nats::Client,
    link: std::sync::Arc<Link>,
    stop: CancellationToken,
) {
    let js = jetstream::new(client);
    let mut retry = RETRY_MIN;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = link.wait_up() => {}
        }
        match copy(&js, &store, &link, &stop).await {
            Ok(()) => return,
            Err(e) => {
                if link.is_up() && !stop.is_cancelled() {
                    tracing::warn!(error = %e, stream = STREAM, "checkpoint copy paused; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// The seq of the last checkpoint event the stream holds (0: none).
async fn prepare(js: &jetstream::Context) -> Result<u64, String> {
    let mut stream = super::jetstream::ensure_stream(js, STREAM, SUBJECT).await?;
    Ok(super::jetstream::last_message_id(&mut stream)
        .await?
        .1
        .unwrap_or(0))
}

/// Copies every checkpoint after the stream's last, then follows the log until stopped
/// (`Ok`) or NATS fails (`Err`).
async fn copy(
    js: &jetstream::Context,
    store: &EventStore,
    link: &Link,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut live = store.subscribe();
    let mut after = prepare(js).await?;
    loop {
        let s = store.clone();
        let page = tokio::task::spawn_blocking(move || {
            s.query(&EventQuery {
                after: Some(after),
                types: vec!["audit.checkpoint".into()],
                limit: 100,
                ..EventQuery::default()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the log: {e}"))?;
        if page.events.is_empty() {
            // Wait for the next checkpoint event.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = link.wait_down() => return Err("NATS disconnected".into()),
                    r = live.recv() => match r {
                        Ok(env) if env.r#type != "audit.checkpoint" => continue,
                        // A checkpoint, or a lag: read the log again.
                        _ => break,
                    },
                }
            }
            continue;
        }
        for env in &page.events {
            let Some(cp) = SignedCheckpoint::from_envelope(env) else {
                after = env.seq;
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Inferno-Tree-Size", cp.tree_size.to_string().as_str());
            let msg = PublishMessage::build()
                .payload(cp.note.clone().into())
                .headers(headers)
                .message_id(env.seq.to_string());
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = async {
                    js.send_publish(SUBJECT, msg)
                        .await
                        .map_err(|e| format!("publishing checkpoint {}: {e}", cp.tree_size))?
                        .await
                        .map_err(|e| format!("JetStream ack of checkpoint {}: {e}", cp.tree_size))
                } => { r?; }
            }
            after = env.seq;
        }
    }
}
