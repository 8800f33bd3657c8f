//! The committed log into JetStream (`[nats] events = true`): every event, as
//! `inferno audit export` writes it, to `inferno.events.<type>` in the stream
//! [`STREAM`], with `Nats-Msg-Id` = its seq, one at a time, each acknowledged before the
//! next is sent, so the stream holds the log in order.
//!
//! Where to resume after a start or an outage: the `Nats-Msg-Id` of the stream's last
//! message when it has one (what JetStream really holds, whatever acks were lost); the
//! cursor kept in fjall when the stream was purged; the beginning of the log for a stream
//! that never held a message. A resend of an event whose ack was lost is dropped by the
//! stream's duplicate window (2 minutes). The cursor is written after each batch without
//! its own fsync (durable with the log's next append; fsynced at shutdown): it is only the
//! fallback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::events::{EventStore, ExportedEvent};

/// The stream that holds the copy of the log.
pub const STREAM: &str = "INFERNO_EVENTS";
/// Its subjects: `inferno.events.<type>`, e.g. `inferno.events.user.created`.
pub const STREAM_SUBJECTS: &str = "inferno.events.>";
/// The side keyspace of the follower's cursor (not event-sourced).
pub const CURSOR_KEYSPACE: &str = "nats_cursor";
/// The cursor's key: the last acknowledged seq, 8 bytes big-endian.
pub const CURSOR_KEY: &[u8] = b"jetstream";
/// Resends of an unacknowledged publish within this window are dropped by the stream.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Events read from the log at a time.
const CHUNK: usize = 256;
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The follower's progress, shared with [`super::Nats::status`].
#[derive(Debug)]
pub(crate) struct Progress {
    acked: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Progress {
    /// Starts from the stored cursor (0 when there is none).
    pub(crate) fn load(store: &EventStore) -> Progress {
        let acked = match store.side_get(CURSOR_KEYSPACE, CURSOR_KEY) {
            Ok(Some(v)) => v.as_slice().try_into().map_or(0, u64::from_be_bytes),
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "reading the JetStream cursor; starting from 0");
                0
            }
        };
        Progress {
            acked: AtomicU64::new(acked),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    fn set_acked(&self, seq: u64) {
        self.acked.store(seq, Ordering::Release);
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = error.map(|e| crate::audit::redact::redact(&e));
        }
    }
}

/// The cursor as last written to fjall.
struct Cursor {
    written: u64,
}

impl Cursor {
    /// Stores `acked` when it moved: buffered, or fsynced with `sync` (at shutdown).
    async fn write(&mut self, store: &EventStore, acked: u64, sync: bool) {
        if acked == self.written && !sync {
            return;
        }
        let s = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let value = acked.to_be_bytes();
            if sync {
                s.side_put(CURSOR_KEYSPACE, CURSOR_KEY, &value)
            } else {
                s.side_put_buffered(CURSOR_KEYSPACE, CURSOR_KEY, &value)
            }
        })
        .await;
        match done {
            Ok(Ok(())) => self.written = acked,
            Ok(Err(e)) => tracing::debug!(error = %e, "writing the JetStream cursor"),
            Err(_) => {}
        }
    }
}

enum Stopped {
    /// Shut down.
    Stop,
    /// NATS went away or refused: wait, then prepare again.
    Failed(String),
}

pub(crate) async fn follow(
    store: EventStore,
    client: async_nats::Client,
    link: Arc<Link>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let js = jetstream::new(client);
    let mut live = store.subscribe();
    let mut cursor = Cursor {
        written: progress.acked(),
    };
    let mut retry = RETRY_MIN;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = link.wait_up() => {}
        }
        let prepared = tokio::select! {
            _ = stop.cancelled() => break,
            r = prepare(&js, &store, progress.acked()) => r,
        };
        let failure = match prepared {
            Ok(resume) => {
                if progress.last_error().is_some() {
                    tracing::info!(stream = STREAM, "JetStream follower resumed");
                }
                if resume != progress.acked() {
                    tracing::info!(
                        from = progress.acked(),
                        to = resume,
                        "JetStream: resuming after the stream's last event"
                    );
                    progress.set_acked(resume);
                }
                progress.set_error(None);
                retry = RETRY_MIN;
                match publish_all(&js, &store, &link, &progress, &mut live, &mut cursor, &stop)
                    .await
                {
                    Stopped::Stop => break,
                    Stopped::Failed(e) => e,
                }
            }
            Err(e) => e,
        };
        // Once per pause, and not for an outage the connection already reported.
        if progress.last_error().is_none() && link.is_up() && !stop.is_cancelled() {
            tracing::warn!(error = %failure, "JetStream follower paused; retrying");
        } else {
            tracing::debug!(error = %failure, "JetStream follower paused");
        }
        progress.set_error(Some(failure));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
    cursor.write(&store, progress.acked(), true).await;
}

/// The stream `name` on `subjects` (file storage, a 2-minute duplicate window), created
/// when missing.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("JetStream stream {name}: {e}"))
}

/// The stream's state, and the `Nats-Msg-Id` of its last message (a seq of the log).
pub(crate) async fn last_message_id(
    stream: &mut stream::Stream,
) -> Result<(stream::State, Option<u64>), String> {
    let state = stream
        .info()
        .await
        .map_err(|e| format!("JetStream stream info: {e}"))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok((state, None));
    }
    let id = match stream.get_raw_message(state.last_sequence).await {
        Ok(m) => m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .and_then(|v| v.as_str().parse::<u64>().ok()),
        Err(_) => None,
    };
    Ok((state, id))
}

/// Makes sure the stream exists and returns the seq to resume after.
async fn prepare(js: &jetstream::Context, store: &EventStore, acked: u64) -> Result<u64, String> {
    let mut stream = ensure_stream(js, STREAM, STREAM_SUBJECTS).await?;
    let (state, last_id) = last_message_id(&mut stream).await?;
    if state.last_sequence == 0 {
        // A stream that never held a message gets the whole log.
        return Ok(0);
    }
    if state.messages == 0 {
        return Ok(acked);
    }
    let head = store.head().0;
    match last_id {
        Some(id) if id <= head => Ok(id),
        Some(id) => {
            tracing::warn!(
                stream_last = id,
                head,
                "JetStream stream holds events beyond this log's head (another log publishes to it?); resuming from the cursor"
            );
            Ok(acked)
        }
        None => Ok(acked),
    }
}

/// Publishes every committed event after the acknowledged one, then waits for more, until
/// stopped or NATS fails.
async fn publish_all(
    js: &jetstream::Context,
    store: &EventStore,
    link: &Link,
    progress: &Progress,
    live: &mut broadcast::Receiver<Arc<crate::events::Envelope>>,
    cursor: &mut Cursor,
    stop: &CancellationToken,
) -> Stopped {
    loop {
        // Whatever the live tail held is read from storage below.
        while !matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
        let s = store.clone();
        let after = progress.acked();
        let batch = match tokio::task::spawn_blocking(move || s.export_after(after, CHUNK)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Stopped::Failed(format!("reading the log: {e}")),
            Err(e) => return Stopped::Failed(format!("reading the log: {e}")),
        };
        if batch.is_empty() {
            cursor.write(store, after, false).await;
            tokio::select! {
                _ = stop.cancelled() => return Stopped::Stop,
                _ = live.recv() => {}
                _ = link.wait_down() => return Stopped::Failed("NATS disconnected".into()),
            }
            continue;
        }
        for ev in batch {
            let seq = ev.seq;
            let acked = tokio::select! {
                _ = stop.cancelled() => return Stopped::Stop,
                // An ack that was in flight may or may not have been stored: `prepare`
                // reads the stream's last message after the reconnect.
                _ = link.wait_down() => return Stopped::Failed("NATS disconnected".into()),
                r = publish(js, ev) => r,
            };
            match acked {
                Ok(()) => progress.set_acked(seq),
                Err(e) => return Stopped::Failed(e),
            }
        }
        cursor.write(store, progress.acked(), false).await;
    }
}

/// One event, waiting for the stream's acknowledgement.
async fn publish(js: &jetstream::Context, ev: ExportedEvent) -> Result<(), String> {
    let subject = format!("inferno.events.{}", ev.event_type);
    let msg = PublishMessage::build()
        .payload(ev.line.into())
        .message_id(ev.seq.to_string());
    js.send_publish(subject, msg)
        .await
        .map_err(|e| format!("publishing event {}: {e}", ev.seq))?
        .await
        .map_err(|e| format!("JetStream ack of event {}: {e}", ev.seq))?;
    Ok(())
}
