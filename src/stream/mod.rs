//! Token streams of jobs: every piece a run generates is numbered, stored beside the log
//! (side keyspace `job_tokens`, never in the audit log) and sent to live consumers.
//!
//! A consumer ([`crate::api`]'s SSE routes) subscribes first and reads storage second, so
//! anything stored after its read reaches it live: a catch-up from storage followed by the
//! live tail has no gap, and the index of each piece removes duplicates. The live channel
//! of a job is a `broadcast` of `[stream] max_lag` pieces: a consumer that falls further
//! behind is told it lagged and reads storage again, so a slow consumer never holds up
//! generation or other consumers, and what one stream holds in memory is bounded.
//!
//! Stored pieces are written without their own fsync; they become durable with the job's
//! next event (fjall has one journal), at the latest with the event that ends the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::events::{EventError, EventStore};

/// Side keyspace of the stored pieces: key `<job_id>/<index, u32 big-endian>`.
pub const TOKENS: &str = "job_tokens";

/// `[stream]` settings.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Pieces a live consumer may fall behind before it continues from storage.
    pub max_lag: usize,
    /// Open streams at most; more is 503.
    pub max_streams: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_lag: 256,
            max_streams: 1024,
        }
    }
}

/// What live consumers of a job receive.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// A run of the job started; the pieces of any earlier attempt were dropped.
    Started {
        attempt: u32,
    },
    Token {
        index: u64,
        text: Arc<str>,
    },
}

/// Receives every piece as it is generated (NATS publishing).
pub trait TokenTap: Send + Sync {
    fn token(&self, job_id: &str, index: u64, text: &str);
}

struct Live {
    tx: broadcast::Sender<Chunk>,
    /// A run is sending on `tx`: keep the entry even with no receiver.
    producing: bool,
}

pub struct StreamHub {
    store: EventStore,
    settings: StreamSettings,
    live: Mutex<HashMap<String, Live>>,
    open: AtomicUsize,
    tap: OnceLock<Arc<dyn TokenTap>>,
    closing: CancellationToken,
}

fn key(job_id: &str, index: u64) -> Vec<u8> {
    let mut k = prefix(job_id);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

fn prefix(job_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(job_id.len() + 5);
    k.extend_from_slice(job_id.as_bytes());
    k.push(b'/');
    k
}

impl StreamHub {
    pub fn new(store: EventStore, settings: StreamSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            live: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            tap: OnceLock::new(),
            closing: CancellationToken::new(),
        })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// Sets the one tap every piece also goes to.
    pub fn set_tap(&self, tap: Arc<dyn TokenTap>) {
        let _ = self.tap.set(tap);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self, job_id: &str, producing: bool) -> broadcast::Sender<Chunk> {
        let mut live = self.lock();
        let entry = live.entry(job_id.to_string()).or_insert_with(|| Live {
            tx: broadcast::channel(self.settings.max_lag.max(1)).0,
            producing: false,
        });
        entry.producing |= producing;
        entry.tx.clone()
    }

    /// The live pieces of a job from now on. Subscribe before reading storage.
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<Chunk> {
        self.sender(job_id, false).subscribe()
    }

    /// A consumer went away: forget the job's channel when nobody uses it.
    pub fn unsubscribe(&self, job_id: &str) {
        let mut live = self.lock();
        if live
            .get(job_id)
            .is_some_and(|l| !l.producing && l.tx.receiver_count() == 0)
        {
            live.remove(job_id);
        }
    }

    /// A run of `job_id` starts: the pieces of an earlier attempt are dropped and live
    /// consumers are told, so they start over.
    pub fn begin(self: &Arc<Self>, job_id: &str, attempt: u32) -> TokenSink {
        if let Err(e) = self.store.side_delete_prefix(TOKENS, &prefix(job_id)) {
            tracing::warn!(job_id, error = %e, "dropping an earlier attempt's tokens failed");
        }
        let tx = self.sender(job_id, true);
        let _ = tx.send(Chunk::Started { attempt });
        TokenSink {
            hub: self.clone(),
            job_id: job_id.to_string(),
            tx,
            next: 0,
        }
    }

    /// The run ended (its last event is committed): live consumers see the channel close.
    pub fn finish(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    /// Stored pieces of a job from `from`, at most `limit`, in order.
    pub fn stored(
        &self,
        job_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, EventError> {
        let p = prefix(job_id);
        let rows = self
            .store
            .side_scan(TOKENS, &p, &key(job_id, from), limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let idx: [u8; 4] = k.get(p.len()..)?.try_into().ok()?;
                Some((
                    u32::from_be_bytes(idx) as u64,
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect())
    }

    /// How many pieces the job has stored (`None` when unreadable).
    pub fn pieces(&self, job_id: &str) -> Option<u64> {
        let p = prefix(job_id);
        match self.store.side_last(TOKENS, &p) {
            Ok(Some(k)) => {
                let idx: [u8; 4] = k.get(p.len()..)?.try_into().ok()?;
                Some(u32::from_be_bytes(idx) as u64 + 1)
            }
            Ok(None) => Some(0),
            Err(_) => None,
        }
    }

    /// Drops the stored pieces of a purged job.
    pub fn purge(&self, job_id: &str) -> Result<usize, EventError> {
        self.store.side_delete_prefix(TOKENS, &prefix(job_id))
    }

    /// A place for one more open stream, or `None` at `[stream] max_streams`.
    pub fn open_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let max = self.settings.max_streams;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(StreamSlot { hub: self.clone() })
    }

    /// The server is stopping: viewers' streams end.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves once [`StreamHub::close`] was called.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open stream; frees its place when dropped.
pub struct StreamSlot {
    hub: Arc<StreamHub>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a run's pieces go: storage, then live consumers, then the tap.
pub struct TokenSink {
    hub: Arc<StreamHub>,
    job_id: String,
    tx: broadcast::Sender<Chunk>,
    next: u64,
}

impl TokenSink {
    pub fn push(&mut self, text: &str) {
        let index = self.next;
        self.next += 1;
        if let Err(e) =
            self.hub
                .store
                .side_put_buffered(TOKENS, &key(&self.job_id, index), text.as_bytes())
        {
            tracing::warn!(job_id = self.job_id, error = %e, "storing a token failed");
        }
        let _ = self.tx.send(Chunk::Token {
            index,
            text: Arc::from(text),
        });
        if let Some(tap) = self.hub.tap.get() {
            tap.token(&self.job_id, index, text);
        }
    }

    /// Pieces pushed so far.
    pub fn count(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{default_projections, StoreOptions};

    fn hub(max_lag: usize) -> (tempfile::TempDir, Arc<StreamHub>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EventStore::open(dir.path(), default_projections(), StoreOptions::default()).unwrap();
        let settings = StreamSettings {
            max_lag,
            max_streams: 2,
        };
        (dir, StreamHub::new(store, settings))
    }

    #[tokio::test]
    async fn a_consumer_that_lags_finds_every_piece_in_storage() {
        let (_dir, hub) = hub(2);
        let mut rx = hub.subscribe("job-1");
        let mut sink = hub.begin("job-1", 1);
        for i in 0..10 {
            sink.push(&format!("p{i} "));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        let stored = hub.stored("job-1", 0, 100).unwrap();
        let indices: Vec<u64> = stored.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
        assert_eq!(stored[3].1, "p3 ");
        assert_eq!(hub.stored("job-1", 7, 2).unwrap().len(), 2);
        assert_eq!(hub.pieces("job-1"), Some(10));
        // Only the newest max_lag pieces are held for a consumer.
        let mut held = Vec::new();
        while let Ok(Chunk::Token { index, .. }) = rx.try_recv() {
            held.push(index);
        }
        assert_eq!(held, vec![8, 9]);
    }

    #[tokio::test]
    async fn a_new_attempt_drops_the_earlier_pieces_and_says_so() {
        let (_dir, hub) = hub(16);
        let mut sink = hub.begin("job-2", 1);
        sink.push("old");
        drop(sink);
        let mut rx = hub.subscribe("job-2");
        let mut sink = hub.begin("job-2", 2);
        assert!(matches!(rx.recv().await, Ok(Chunk::Started { attempt: 2 })));
        assert!(hub.stored("job-2", 0, 10).unwrap().is_empty());
        sink.push("new");
        assert_eq!(
            hub.stored("job-2", 0, 10).unwrap(),
            vec![(0, "new".to_string())]
        );
        assert_eq!(hub.purge("job-2").unwrap(), 1);
        assert_eq!(hub.pieces("job-2"), Some(0));
        // Other jobs' pieces are untouched by prefixes that look alike.
        hub.begin("job-20", 1).push("x");
        assert_eq!(hub.pieces("job-2"), Some(0));
        assert_eq!(hub.pieces("job-20"), Some(1));
    }

    #[test]
    fn open_streams_are_capped_and_freed() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let (_dir, hub) = hub(4);
        let a = hub.open_stream().unwrap();
        let _b = hub.open_stream().unwrap();
        assert!(hub.open_stream().is_none());
        drop(a);
        assert_eq!(hub.open_streams(), 1);
        assert!(hub.open_stream().is_some());
    }
}
