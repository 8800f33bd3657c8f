//! Signs checkpoints of the running log: every `[audit] checkpoint_every` events, or
//! `[audit] checkpoint_secs` after the last one when events came since, and on demand
//! (`GET /api/v1/audit/checkpoint` of a head that moved). Each is recorded in the log as
//! an `audit.checkpoint` event, after the events it covers, and handed to the optional
//! publisher (JetStream `INFERNO_CHECKPOINTS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::checkpoint::CheckpointSigner;
use crate::events::merkle::Hash;
use crate::events::{AuditCheckpoint, Event, EventContext, EventQuery, EventStore};

/// A signed checkpoint as the log records it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    pub tree_size: u64,
    pub root: Hash,
    /// The `audit.checkpoint` event that recorded it.
    pub event_seq: u64,
    pub ts: chrono::DateTime<chrono::Utc>,
    pub note: String,
}

impl SignedCheckpoint {
    /// From a stored `audit.checkpoint` event.
    pub fn from_envelope(env: &crate::events::Envelope) -> Option<SignedCheckpoint> {
        let Ok(Event::AuditCheckpoint(cp)) = env.event() else {
            return None;
        };
        let root: [u8; 32] = hex::decode(&cp.root_hash).ok()?.try_into().ok()?;
        Some(SignedCheckpoint {
            tree_size: cp.tree_size,
            root: Hash(root),
            event_seq: env.seq,
            ts: env.ts,
            note: cp.note,
        })
    }
}

/// Something that keeps a copy of every checkpoint elsewhere (NATS JetStream).
pub trait CheckpointSink: Send + Sync {
    fn publish(&self, checkpoint: &SignedCheckpoint);
}

pub struct Checkpointer {
    store: EventStore,
    signer: Arc<CheckpointSigner>,
    every: u64,
    period: Duration,
    latest: Mutex<(Option<SignedCheckpoint>, Instant)>,
    sink: std::sync::RwLock<Option<Arc<dyn CheckpointSink>>>,
}

impl Checkpointer {
    /// Starts from the last `audit.checkpoint` in the log.
    pub fn open(
        store: EventStore,
        signer: Arc<CheckpointSigner>,
        every: u64,
        period: Duration,
    ) -> anyhow::Result<Checkpointer> {
        let last = store.query(&EventQuery {
            types: vec!["audit.checkpoint".into()],
            limit: 1,
            newest_first: true,
            ..EventQuery::default()
        });
        let last = match last {
            Ok(page) => page
                .events
                .first()
                .and_then(SignedCheckpoint::from_envelope),
            // A log opened read-only on a broken chain may not even decode its last
            // checkpoint; nothing is signed for it anyway.
            Err(e) if store.is_read_only() => {
                tracing::warn!(error = %e, "reading the last checkpoint");
                None
            }
            Err(e) => return Err(anyhow::Error::new(e).context("reading the last checkpoint")),
        };
        Ok(Checkpointer {
            store,
            signer,
            every,
            period,
            latest: Mutex::new((last, Instant::now())),
            sink: std::sync::RwLock::new(None),
        })
    }

    pub fn signer(&self) -> &CheckpointSigner {
        &self.signer
    }

    pub fn set_sink(&self, sink: Arc<dyn CheckpointSink>) {
        if let Ok(mut s) = self.sink.write() {
            *s = Some(sink);
        }
    }

    /// The latest checkpoint signed, as it is.
    pub async fn latest(&self) -> Option<SignedCheckpoint> {
        self.latest.lock().await.0.clone()
    }

    /// The latest checkpoint, signing one of the current head first when events were
    /// committed after it (other than its own record).
    pub async fn current(&self) -> anyhow::Result<SignedCheckpoint> {
        let mut latest = self.latest.lock().await;
        let head = self.store.tree_size();
        if let Some(cp) = &latest.0 {
            if head == cp.tree_size || head == cp.event_seq {
                return Ok(cp.clone());
            }
        }
        let cp = self.sign(head).await?;
        *latest = (Some(cp.clone()), Instant::now());
        Ok(cp)
    }

    async fn sign(&self, size: u64) -> anyhow::Result<SignedCheckpoint> {
        let store = self.store.clone();
        let root = tokio::task::spawn_blocking(move || store.tree_root(size))
            .await
            .context("tree root task")??;
        let note = self.signer.sign(size, root)?;
        let envs = self
            .store
            .append(
                &EventContext::system(),
                vec![Event::AuditCheckpoint(AuditCheckpoint {
                    tree_size: size,
                    root_hash: hex::encode(root.0),
                    key_id: self.signer.key_id(),
                    note: note.clone(),
                })],
            )
            .await?;
        let env = envs.first().context("no checkpoint event")?;
        let cp = SignedCheckpoint {
            tree_size: size,
            root,
            event_seq: env.seq,
            ts: env.ts,
            note,
        };
        tracing::debug!(tree_size = size, "signed a checkpoint");
        let sink = self.sink.read().ok().and_then(|s| s.clone());
        if let Some(sink) = sink {
            sink.publish(&cp);
        }
        Ok(cp)
    }

    /// One scheduling decision: sign when `every` events came since the last checkpoint,
    /// or `period` passed and any event did.
    async fn tick(&self) -> anyhow::Result<()> {
        let mut latest = self.latest.lock().await;
        let head = self.store.tree_size();
        let (covered, recorded) = latest
            .0
            .as_ref()
            .map_or((0, 0), |cp| (cp.tree_size, cp.event_seq));
        let due = head >= covered + self.every
            || (latest.1.elapsed() >= self.period && head > recorded && head > covered);
        if due {
            let cp = self.sign(head).await?;
            *latest = (Some(cp), Instant::now());
        }
        Ok(())
    }

    /// Runs the schedule until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // Checked every second (or sooner for short periods in tests).
            let step = this.period.min(Duration::from_secs(1));
            let mut tick = tokio::time::interval(step);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if this.store.is_read_only() {
                    continue;
                }
                if let Err(e) = this.tick().await {
                    tracing::warn!(error = %e, "signing a checkpoint");
                }
            }
        })
    }
}
