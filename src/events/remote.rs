//! The writer's side of cluster mode: folding the events other nodes appended to the
//! shared log (`shared.rs`) into this node's copy, exactly as its own.
//!
//! Each remote event is checked before it is taken: its seq follows the local head, its
//! `prev_hash` is the local head's hash, and its hash is recomputed from its stored bytes
//! (which must be canonical, as every writer stores them). A shared log rewritten under
//! a node therefore stops that node's appends with a broken-chain error instead of being
//! folded in.

use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};

use super::envelope::Envelope;
use super::error::EventError;
use super::merkle::leaf_hash;
use super::projections::ProjectionTx;
use super::raw::RawEnvelope;
use super::shared::{Remote, SharedLog, SideRow, FETCH_LIMIT};
use super::store::{index_key, seq_key, Handles, SideWrite};
use super::writer::{refuse_waiters, Before, Built, Reply, Writer};
use std::sync::Arc;

/// Most fetches one catch-up group folds (the rest waits for the next tick).
const MAX_FETCHES: usize = 4;

fn diverged(seq: u64, why: &str) -> EventError {
    EventError::BrokenChain {
        seq,
        reason: format!("the shared log {why}"),
    }
}

impl Writer {
    /// Folds `remote` into the group being built: projections, tree, events, indexes and
    /// side writes, after checking each event's place and hash.
    pub(super) fn apply_remote(
        &mut self,
        h: &Handles,
        tx: &mut ProjectionTx<'_>,
        batch: &mut fjall::OwnedWriteBatch,
        remote: Vec<Remote>,
        out: &mut Vec<Envelope>,
    ) -> Result<(), EventError> {
        let mut canon = Vec::with_capacity(1024);
        for r in remote {
            if r.seq != self.seq + 1 {
                return Err(diverged(self.seq + 1, &format!("skips to seq {}", r.seq)));
            }
            let raw = RawEnvelope::parse(&r.stored)
                .ok_or_else(|| diverged(r.seq, "holds an event not in canonical form"))?;
            raw.write_canonical(&mut canon);
            if raw.prev_hash != self.hash.as_bytes() {
                return Err(diverged(r.seq, "does not chain onto this node's head"));
            }
            let mut hasher = Sha256::new();
            hasher.update(raw.prev_hash);
            hasher.update(&canon);
            if hex::encode(hasher.finalize()).as_bytes() != raw.hash {
                return Err(diverged(r.seq, "holds an event whose hash does not match"));
            }
            let leaf = leaf_hash(&canon);
            let env = Envelope::from_stored_bytes(r.seq, &r.stored)?;
            let event = env.event()?;
            for proj in &self.projections {
                tx.apply(proj.as_ref(), &env, &event)?;
            }
            tx.commit_request();
            if let Some(tree) = &mut self.tree {
                tree.push(leaf);
            }
            batch.insert(&h.events, seq_key(env.seq), r.stored);
            batch.insert(&h.by_type, index_key(&env.r#type, env.seq), b"".to_vec());
            batch.insert(&h.by_actor, index_key(&env.actor.id, env.seq), b"".to_vec());
            for w in r.side {
                let ks = h.side(&w.keyspace)?;
                match w.value {
                    Some(v) => batch.insert(&ks, w.key, v),
                    None => batch.remove(&ks, w.key),
                }
            }
            self.seq = env.seq;
            self.hash.clone_from(&env.hash);
            self.last_ts = Some(self.last_ts.map_or(env.ts, |t| t.max(env.ts)));
            out.push(env);
        }
        Ok(())
    }

    /// Locks the shared head and folds in everything other nodes appended before it; the
    /// transaction that holds the lock is returned for the group's commit.
    pub(super) fn lock_and_catch_up(
        &mut self,
        shared: &Arc<SharedLog>,
        h: &Handles,
        tx: &mut ProjectionTx<'_>,
        batch: &mut fjall::OwnedWriteBatch,
        out: &mut Vec<Envelope>,
    ) -> Result<Transaction<'static, Postgres>, EventError> {
        let (mut pg, head, head_hash) = shared.lock_head()?;
        loop {
            let step = if head < self.seq {
                Err(diverged(
                    head + 1,
                    &format!("ends at seq {head}, before this node's head {}", self.seq),
                ))
            } else if head == self.seq {
                if head_hash != self.hash {
                    Err(diverged(head, "head differs from this node's"))
                } else {
                    return Ok(pg);
                }
            } else {
                match shared.fetch(Some(pg), self.seq)? {
                    (Some(t), remote) if !remote.is_empty() => {
                        pg = t;
                        self.apply_remote(h, tx, batch, remote, out)
                    }
                    (t, _) => {
                        pg = match t {
                            Some(t) => t,
                            None => return Err(diverged(self.seq + 1, "lost its transaction")),
                        };
                        Err(diverged(
                            self.seq + 1,
                            "has no event after this node's head",
                        ))
                    }
                }
            };
            if let Err(e) = step {
                shared.rollback(pg);
                return Err(e);
            }
        }
    }

    /// A group that only folds in what other nodes appended (the tail's nudge, a caller's
    /// read barrier); `None` when there was nothing new. The waiters are answered on
    /// every path but the group's commit.
    pub(super) fn build_catch_up(
        &mut self,
        waiters: Vec<Reply>,
    ) -> Result<Option<(Built, Before)>, EventError> {
        let Some(shared) = self.shared.clone() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let h = match self.current_handles() {
            Ok(h) => h,
            Err(e) => {
                refuse_waiters(waiters, &e);
                return Err(e);
            }
        };
        let before = self.before();
        let mut tx = ProjectionTx::new(&h.projection_ks);
        // Not synced: PostgreSQL holds these events, and a copy lost in a crash is fetched
        // again (the batch is atomic, its checkpoints with it); the next append syncs it.
        let mut batch = fjall::OwnedWriteBatch::with_capacity(h.db.clone(), 1024);
        let mut out = Vec::new();
        let folded = (|| {
            for _ in 0..MAX_FETCHES {
                let (_, remote) = shared.fetch(None, self.seq)?;
                let n = remote.len();
                self.apply_remote(&h, &mut tx, &mut batch, remote, &mut out)?;
                if n < FETCH_LIMIT as usize {
                    break;
                }
            }
            Ok::<_, EventError>(())
        })();
        if folded.is_ok() && std::mem::take(&mut self.catch_up_failing) {
            tracing::info!("caught up with the shared event log again");
        }
        if folded.is_ok() && out.is_empty() {
            for w in waiters {
                let _ = w.send(Ok(Vec::new()));
            }
            return Ok(None);
        }
        if let Err(e) = &folded {
            // Once per outage: the tail asks again every backstop tick.
            if !self.catch_up_failing {
                tracing::error!(error = %e, "cannot catch up with the shared event log");
            }
            self.catch_up_failing = true;
            refuse_waiters(waiters, e);
            self.undo(before);
            return folded.map(|_| None);
        }

        let staged = self.finish_batch(&h, tx, &mut batch);
        let built = Built {
            batch,
            accepted: Vec::new(),
            waiters,
            remote: out,
            staged,
            head: (self.seq, self.hash.clone()),
            events: (self.seq - before.seq) as usize,
            started,
        };
        Ok(Some((built, before)))
    }

    /// Joins the shared log at start-up: seeds it from this data dir when it is empty,
    /// refuses a data dir whose log is not a prefix of it, and catches up fully.
    pub(super) fn join_shared(
        &mut self,
        to_commit: &std::sync::mpsc::SyncSender<Built>,
        done: &std::sync::mpsc::Receiver<bool>,
    ) -> Result<(), EventError> {
        let Some(shared) = self.shared.clone() else {
            return Ok(());
        };
        let (head, _) = shared.head()?;
        if self.seq > head {
            if head == 0 {
                return self.seed(&shared);
            }
            return Err(diverged(
                head + 1,
                &format!(
                    "has {head} events and this data dir {}: it is not a copy of it \
                     (start this node with an empty data dir)",
                    self.seq
                ),
            ));
        }
        if self.seq > 0 {
            let stored = shared
                .stored_at(self.seq)?
                .ok_or_else(|| diverged(self.seq, "lacks an event this data dir has"))?;
            let theirs = Envelope::from_stored_bytes(self.seq, &stored)?;
            if theirs.hash != self.hash {
                return Err(diverged(
                    self.seq,
                    "differs from this data dir's log (start this node with an empty data dir)",
                ));
            }
        }
        loop {
            let Some((built, before)) = self.build_catch_up(Vec::new())? else {
                return Ok(());
            };
            if to_commit.send(built).is_err() || !done.recv().unwrap_or(false) {
                self.restore(before);
                return Err(EventError::Unavailable(
                    "cannot store the shared log's events in the data dir".into(),
                ));
            }
            if self.seq >= shared.head()?.0 {
                return Ok(());
            }
        }
    }

    /// Copies this data dir's log, and the current contents of its side keyspaces, into
    /// the empty shared log.
    fn seed(&mut self, shared: &SharedLog) -> Result<(), EventError> {
        let h = self.current_handles()?;
        let mut events = Vec::new();
        for g in h.events.iter() {
            let (k, v) = g.into_inner()?;
            events.push((super::store::key_seq(&k)?, v.to_vec()));
        }
        let mut side = Vec::new();
        for name in h.db.list_keyspace_names() {
            let Some(logical) = name.strip_prefix("side.") else {
                continue;
            };
            for g in h.side(logical)?.iter() {
                let (k, v) = g.into_inner()?;
                side.push(SideRow {
                    seq: self.seq,
                    write: SideWrite::put(logical, &k, v.to_vec()),
                });
            }
        }
        tracing::info!(
            events = events.len(),
            side_values = side.len(),
            "seeding the empty shared event log from this data dir"
        );
        shared.seed(events, side, (self.seq, self.hash.clone()))
    }
}
