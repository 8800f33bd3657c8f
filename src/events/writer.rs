//! The single writer: group commit, sealing (hashing over the stored bytes), projection
//! updates in the same batch, one fsync per group.
//!
//! Two threads, pipelined: the writer seals group `n + 1` and folds it into the
//! projections while the committer writes group `n` to the journal, syncs it, applies it
//! to the memtables and answers its appenders. Group `n + 1` reads group `n`'s projection
//! writes from memory (they may not be in the keyspaces yet) and goes to the committer
//! only once group `n` has committed; if that commit fails, group `n + 1` is refused with
//! it (it was built on its state), the head goes back to before `n`, and the writer
//! reopens the database. At most one group is in flight, so a 2xx still means synced.
//!
//! In cluster mode (`shared.rs`) the writer first locks the shared log's head, catches up
//! what other nodes appended (`remote.rs`), builds its group on top and commits it to
//! PostgreSQL, the commit point, before fjall; groups are then not pipelined (the next one
//! must see this one's head in PostgreSQL).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fjall::PersistMode;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::cache::RecordCache;
use super::envelope::Envelope;
use super::error::EventError;
use super::merkle::TreeEdge;
use super::projections::{Projection, ProjectionTx, Staged};
use super::seal::{Place, Prepared, PreparedCtx};
use super::shared::{SharedLog, SideRow};
use super::store::{
    checkpoint_key, index_key, seq_key, to_unavailable, Handles, SharedHandles, SideWrite,
    MAX_GROUP_EVENTS,
};

pub(super) type Reply = oneshot::Sender<Result<Vec<Envelope>, EventError>>;

pub(super) struct AppendRequest {
    pub(super) ctx: PreparedCtx,
    /// Encoded by the appender (`seal.rs`); the writer only places them in the chain.
    pub(super) events: Vec<Prepared>,
    /// Side keyspace writes committed in the same batch as the events.
    pub(super) side: Vec<SideWrite>,
    pub(super) reply: Reply,
}

/// A group built by the writer, for the committer.
pub(super) struct Built {
    pub(super) batch: fjall::OwnedWriteBatch,
    pub(super) accepted: Vec<(Reply, Vec<Envelope>)>,
    /// Callers waiting for the node to catch up with the shared log (answered with `[]`).
    pub(super) waiters: Vec<Reply>,
    /// Events other nodes appended, caught up in this group (for the live tail).
    pub(super) remote: Vec<Envelope>,
    /// The group's projection writes (read by the next group; their keys leave the cache).
    pub(super) staged: Arc<Staged>,
    /// The head after the group.
    pub(super) head: (u64, String),
    pub(super) events: usize,
    pub(super) started: std::time::Instant,
}

/// The writer's state before a group, to go back to when its commit fails.
pub(super) struct Before {
    pub(super) seq: u64,
    hash: String,
    last_ts: Option<DateTime<Utc>>,
    /// The tree's edge, kept in cluster mode so a refused group needs no reopen.
    tree: Option<TreeEdge>,
}

/// The group being committed: its writes, and the state before it.
struct InFlight {
    staged: Arc<Staged>,
    before: Before,
}

pub(super) enum WriterMsg {
    Append(AppendRequest),
    /// Catch up with the shared log (cluster mode), answering when done.
    CatchUp(Option<Reply>),
    Shutdown(oneshot::Sender<()>),
}

/// The single writer. Owns the head while running; publishes it after each commit.
pub(super) struct Writer {
    /// Invalidated after each commit.
    pub(super) cache: Arc<RecordCache>,
    pub(super) data_dir: PathBuf,
    pub(super) handles: SharedHandles,
    pub(super) head: Arc<RwLock<(u64, String)>>,
    pub(super) live: broadcast::Sender<Arc<Envelope>>,
    pub(super) projections: Vec<Arc<dyn Projection>>,
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) last_ts: Option<DateTime<Utc>>,
    pub(super) needs_reopen: bool,
    /// The Merkle tree's right edge; `None` when the store was opened without the tree
    /// (benchmarks only).
    pub(super) tree: Option<TreeEdge>,
    /// The shared log, in cluster mode.
    pub(super) shared: Option<Arc<SharedLog>>,
    /// Set while a catch-up request from the tail is queued (so it queues one at most).
    pub(super) nudged: Arc<std::sync::atomic::AtomicBool>,
    /// Told once the node has joined the shared log (cluster mode).
    pub(super) ready: Option<std::sync::mpsc::Sender<Result<(), EventError>>>,
    /// The last catch-up failed (logged once until one succeeds).
    pub(super) catch_up_failing: bool,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let (to_commit, commits) = std::sync::mpsc::sync_channel::<Built>(1);
        let (done_tx, done) = std::sync::mpsc::channel::<bool>();
        let committer = Committer {
            cache: self.cache.clone(),
            head: self.head.clone(),
            live: self.live.clone(),
            shared: self.shared.is_some(),
        };
        let committer = std::thread::Builder::new()
            .name("inferno-event-commit".into())
            .spawn(move || committer.run(commits, done_tx));
        let committer = match committer {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the event committer thread");
                return;
            }
        };
        let mut in_flight: Option<InFlight> = None;
        let mut shutdown = None;
        if let Some(ready) = self.ready.take() {
            let joined = self.join_shared(&to_commit, &done);
            let failed = joined.is_err();
            let _ = ready.send(joined);
            if failed {
                drop(to_commit);
                let _ = committer.join();
                return;
            }
        }
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut waiters = Vec::new();
            let mut catch_up = false;
            let mut n = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Shutdown(ack) => {
                        shutdown = Some(ack);
                        break;
                    }
                    WriterMsg::Append(req) => {
                        n += req.events.len();
                        group.push(req);
                    }
                    WriterMsg::CatchUp(waiter) => {
                        catch_up = true;
                        waiters.extend(waiter);
                    }
                }
                if n < MAX_GROUP_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            if catch_up {
                self.nudged
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            if self.shared.is_none() {
                // One log, one node: always caught up.
                waiters.drain(..).for_each(|w| {
                    let _ = w.send(Ok(Vec::new()));
                });
            }
            if !group.is_empty() || !waiters.is_empty() || (catch_up && self.shared.is_some()) {
                let built = if group.is_empty() {
                    self.build_catch_up(waiters).ok().flatten()
                } else {
                    self.build_group(group, waiters, in_flight.as_ref().map(|f| &*f.staged))
                };
                if let Some(prev) = in_flight.take() {
                    if !done.recv().unwrap_or(false) {
                        self.restore(prev.before);
                        if let Some((b, _)) = built {
                            let msg = "event log commit failed (the group before this one)";
                            refuse(b.accepted, msg);
                        }
                        if shutdown.is_some() {
                            break;
                        }
                        continue;
                    }
                }
                if let Some((b, before)) = built {
                    in_flight = Some(InFlight {
                        staged: b.staged.clone(),
                        before,
                    });
                    if to_commit.send(b).is_err() {
                        tracing::error!("the event committer stopped");
                        break;
                    }
                    // Cluster mode: the next group must start from this one's head.
                    if self.shared.is_some() {
                        if let Some(prev) = in_flight.take() {
                            if !done.recv().unwrap_or(false) {
                                self.restore(prev.before);
                            }
                        }
                    }
                }
            }
            if shutdown.is_some() {
                break;
            }
        }
        if let Some(prev) = in_flight.take() {
            if !done.recv().unwrap_or(false) {
                self.restore(prev.before);
            }
        }
        drop(to_commit);
        let _ = committer.join();
        drop(self);
        if let Some(ack) = shutdown {
            let _ = ack.send(());
        }
    }

    /// Back to before a group whose commit failed; the database is reopened (and the
    /// tree's edge read back from it) before the next group.
    pub(super) fn restore(&mut self, before: Before) {
        self.seq = before.seq;
        self.hash = before.hash;
        self.last_ts = before.last_ts;
        self.needs_reopen = true;
    }

    /// Back to before a group that never reached the disk (PostgreSQL refused it): the
    /// local state is unchanged, so no reopen.
    pub(super) fn undo(&mut self, before: Before) {
        self.seq = before.seq;
        self.hash = before.hash;
        self.last_ts = before.last_ts;
        match before.tree {
            Some(t) => self.tree = Some(t),
            None => self.needs_reopen = true,
        }
    }

    pub(super) fn before(&self) -> Before {
        Before {
            seq: self.seq,
            hash: self.hash.clone(),
            last_ts: self.last_ts,
            tree: self.shared.as_ref().and_then(|_| self.tree.clone()),
        }
    }

    pub(super) fn current_handles(&mut self) -> Result<Arc<Handles>, EventError> {
        if self.needs_reopen {
            self.reopen()?;
        }
        self.handles
            .read()
            .map_err(|_| to_unavailable("handles lock poisoned"))?
            .clone()
            .ok_or_else(|| to_unavailable("event store is closed"))
    }

    /// After a failed commit fjall is poisoned: close it and open it again, then reload
    /// the head (a batch whose fsync failed may still have reached the journal).
    fn reopen(&mut self) -> Result<(), EventError> {
        let mut slot = self
            .handles
            .write()
            .map_err(|_| to_unavailable("handles lock poisoned"))?;
        slot.take();
        let h = Handles::open(&self.data_dir, &self.projections).map_err(to_unavailable)?;
        let (seq, hash, ts) = h.head().map_err(to_unavailable)?;
        self.seq = seq;
        self.hash = hash.clone();
        self.last_ts = ts;
        if self.tree.is_some() {
            self.tree = Some(TreeEdge::load(&h.merkle)?);
        }
        if let Ok(mut head) = self.head.write() {
            *head = (seq, hash);
        }
        *slot = Some(Arc::new(h));
        self.needs_reopen = false;
        tracing::warn!(head = seq, "event store reopened after a failed commit");
        Ok(())
    }

    fn next_ts(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let now = now
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(now);
        // Keep ts non-decreasing in seq order so time filters can stop early.
        let ts = self.last_ts.map_or(now, |last| last.max(now));
        self.last_ts = Some(ts);
        ts
    }

    /// Seals the group, folds it and fills its batch; `None` when no request of it was
    /// accepted (each refused one has its answer).
    fn build_group(
        &mut self,
        group: Vec<AppendRequest>,
        waiters: Vec<Reply>,
        in_flight: Option<&Staged>,
    ) -> Option<(Built, Before)> {
        let h = match self.current_handles() {
            Ok(h) => h,
            Err(e) => {
                for req in group {
                    let _ = req.reply.send(Err(to_unavailable(&e)));
                }
                refuse_waiters(waiters, &e);
                return None;
            }
        };
        let started = std::time::Instant::now();
        let before = self.before();
        let mut tx = ProjectionTx::new(&h.projection_ks).over(in_flight);
        let mut accepted: Vec<(Reply, Vec<Envelope>)> = Vec::new();
        // Sized for the group (events, their two index entries, projection records,
        // tree entries), so the batch does not grow by reallocation.
        let items = group
            .iter()
            .map(|r| r.events.len() * 8 + r.side.len())
            .sum::<usize>();
        let mut batch = fjall::OwnedWriteBatch::with_capacity(h.db.clone(), items + 64)
            .durability(Some(PersistMode::SyncAll));
        let mut buf = Vec::with_capacity(1024);
        // Cluster mode: the head locked in PostgreSQL and everything before it folded in.
        let mut remote = Vec::new();
        let mut pg = None;
        if let Some(shared) = self.shared.clone() {
            match self.lock_and_catch_up(&shared, &h, &mut tx, &mut batch, &mut remote) {
                Ok(t) => pg = Some((shared, t)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot append to the shared event log");
                    for req in group {
                        let _ = req.reply.send(Err(to_unavailable(&e)));
                    }
                    refuse_waiters(waiters, &e);
                    self.undo(before);
                    return None;
                }
            }
        }
        let mut pg_events = Vec::new();
        let mut pg_side = Vec::new();

        for req in group {
            let (seq0, hash0, ts0) = (self.seq, self.hash.clone(), self.last_ts);
            let mut envs = Vec::with_capacity(req.events.len());
            let mut side = Vec::with_capacity(req.side.len());
            let mut result = req
                .side
                .iter()
                .try_for_each(|w| h.side(&w.keyspace).map(|ks| side.push(ks)));
            let mut stored = Vec::with_capacity(req.events.len());
            let mut leaves = Vec::with_capacity(req.events.len());
            for p in req.events {
                if result.is_err() {
                    break;
                }
                let (seq, id, ts) = (self.seq + 1, Uuid::now_v7(), self.next_ts());
                let sealed = p.seal(&req.ctx, seq, id, &ts, self.hash.as_bytes(), &mut buf);
                let place = Place {
                    seq,
                    id,
                    ts,
                    prev_hash: std::mem::take(&mut self.hash),
                };
                let env = Prepared::envelope(p.payload, &p.event, &req.ctx, place, &sealed.hash);
                self.seq = seq;
                self.hash.clone_from(&env.hash);
                for proj in &self.projections {
                    if let Err(e) = tx.apply(proj.as_ref(), &env, &p.event) {
                        result = Err(e);
                        break;
                    }
                }
                envs.push(env);
                stored.push(sealed.stored);
                leaves.push(sealed.leaf);
            }
            match result {
                Ok(()) => {
                    tx.commit_request();
                    if let Some(tree) = &mut self.tree {
                        leaves.into_iter().for_each(|leaf| tree.push(leaf));
                    }
                    if pg.is_some() {
                        let first = envs.first().map_or(0, |e| e.seq);
                        pg_events.extend(envs.iter().zip(&stored).map(|(e, b)| (e.seq, b.clone())));
                        pg_side.extend(req.side.iter().map(|w| SideRow {
                            seq: first,
                            write: w.clone(),
                        }));
                    }
                    for (env, bytes) in envs.iter().zip(stored) {
                        batch.insert(&h.events, seq_key(env.seq), bytes);
                        batch.insert(&h.by_type, index_key(&env.r#type, env.seq), b"".to_vec());
                        batch.insert(&h.by_actor, index_key(&env.actor.id, env.seq), b"".to_vec());
                    }
                    for (ks, w) in side.iter().zip(req.side) {
                        match w.value {
                            Some(v) => batch.insert(ks, w.key, v),
                            None => batch.remove(ks, w.key),
                        }
                    }
                    accepted.push((req.reply, envs));
                }
                Err(e) => {
                    // This request is refused alone; the rest of the group goes on.
                    tx.rollback_request();
                    self.seq = seq0;
                    self.hash = hash0;
                    self.last_ts = ts0;
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if let Some((shared, t)) = pg {
            let committed = if accepted.is_empty() {
                shared.rollback(t);
                Ok(())
            } else {
                shared.commit(t, pg_events, pg_side, (self.seq, self.hash.clone()))
            };
            if let Err(e) = committed {
                tracing::warn!(error = %e, "the shared event log refused a group");
                for (reply, _) in accepted {
                    let _ = reply.send(Err(to_unavailable(&e)));
                }
                refuse_waiters(waiters, &e);
                self.undo(before);
                return None;
            }
        }
        if accepted.is_empty() && remote.is_empty() {
            waiters.into_iter().for_each(|w| {
                let _ = w.send(Ok(Vec::new()));
            });
            return None;
        }
        let staged = self.finish_batch(&h, tx, &mut batch);
        let built = Built {
            batch,
            accepted,
            waiters,
            remote,
            staged,
            head: (self.seq, self.hash.clone()),
            events: (self.seq - before.seq) as usize,
            started,
        };
        Some((built, before))
    }

    /// Adds the group's projection writes, tree tiles and checkpoints to its batch.
    pub(super) fn finish_batch(
        &mut self,
        h: &super::store::Handles,
        mut tx: ProjectionTx<'_>,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Arc<Staged> {
        let staged = Arc::new(tx.drain_into(batch));
        if let Some(tree) = &mut self.tree {
            for (key, tile) in tree.take_writes() {
                match tile {
                    Some(t) => batch.insert(&h.merkle, key, t),
                    None => batch.remove(&h.merkle, key),
                }
            }
        }
        for p in &self.projections {
            batch.insert(
                &h.meta,
                checkpoint_key(p.name()),
                seq_key(self.seq).to_vec(),
            );
        }
        staged
    }
}

/// Answers callers waiting for a catch-up with the error that stopped it.
pub(super) fn refuse_waiters(waiters: Vec<Reply>, e: &EventError) {
    for w in waiters {
        let _ = w.send(Err(to_unavailable(e)));
    }
}

/// Answers every appender of a group with 503.
fn refuse(accepted: Vec<(Reply, Vec<Envelope>)>, msg: &str) {
    for (reply, _) in accepted {
        let _ = reply.send(Err(EventError::Unavailable(msg.to_string())));
    }
}

/// Commits the groups the writer built, in order, and answers their appenders.
struct Committer {
    cache: Arc<RecordCache>,
    head: Arc<RwLock<(u64, String)>>,
    live: broadcast::Sender<Arc<Envelope>>,
    /// Cluster mode: a group is committed once PostgreSQL has it.
    shared: bool,
}

impl Committer {
    fn run(self, groups: std::sync::mpsc::Receiver<Built>, done: std::sync::mpsc::Sender<bool>) {
        while let Ok(b) = groups.recv() {
            let Built {
                batch,
                accepted,
                waiters,
                remote,
                staged,
                head,
                events,
                started,
            } = b;
            match batch.commit() {
                Ok(()) => {
                    // Before anyone is answered, so a request that depends on this commit
                    // never reads a cached record from before it.
                    self.cache.invalidate(
                        staged
                            .iter()
                            .flat_map(|(ks, w)| w.keys().map(move |k| (*ks, k.as_slice()))),
                    );
                    if let Ok(mut h) = self.head.write() {
                        *h = head;
                    }
                    let _ = done.send(true);
                    crate::metrics::events_appended(events, started.elapsed());
                    // Envelopes are cloned for the live tail only while someone tails it.
                    let tailed = self.live.receiver_count() > 0;
                    if tailed {
                        for env in remote {
                            let _ = self.live.send(Arc::new(env));
                        }
                    }
                    for w in waiters {
                        let _ = w.send(Ok(Vec::new()));
                    }
                    for (reply, envs) in accepted {
                        if tailed {
                            for env in &envs {
                                let _ = self.live.send(Arc::new(env.clone()));
                            }
                        }
                        let _ = reply.send(Ok(envs));
                    }
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "event log commit failed; answering 503 and reopening"
                    );
                    let _ = done.send(false);
                    let msg = format!("event log commit failed: {e}");
                    refuse_waiters(waiters, &EventError::Unavailable(msg.clone()));
                    if self.shared {
                        // Committed in the shared log, which this node catches up from
                        // once it has reopened its copy.
                        for (reply, envs) in accepted {
                            let _ = reply.send(Ok(envs));
                        }
                    } else {
                        refuse(accepted, &msg);
                    }
                }
            }
        }
    }
}
