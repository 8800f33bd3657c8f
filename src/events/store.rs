//! The fjall-backed event store: one writer thread with group commit, reads, queries and
//! chain verification.
//!
//! Appends go over a channel to a single writer. It drains whatever is waiting (up to
//! [`MAX_GROUP_EVENTS`]), assigns `seq`/`id`/`ts`/`prev_hash`/`hash`, folds the events into
//! every projection, writes events, indexes, projection records and checkpoints in ONE
//! fjall batch, commits it with `SyncAll`, and only then answers the callers and
//! broadcasts. A failed commit answers the whole group with [`EventError::Unavailable`],
//! leaves the head where it was, and makes the writer reopen the database before the next
//! group (fjall refuses writes after a failed journal write), so the server recovers when
//! the disk does.

use super::envelope::{Envelope, EventContext, GENESIS_HASH};
use super::error::EventError;
use super::migrate::{self, META_GENERATION};
use super::projections::{Projection, ProjectionTx};
use super::raw::RawEnvelope;
use super::types::Event;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

/// Most events folded into one commit (one fsync).
pub const MAX_GROUP_EVENTS: usize = 4096;
/// How many trailing events `open` re-verifies.
pub const TAIL_VERIFY_EVENTS: u64 = 1000;
/// Most events one query page returns.
pub const MAX_QUERY_LIMIT: usize = 1000;

pub(crate) const LOG_DIR: &str = "log";
pub(crate) const LOCK_FILE: &str = "inferno.lock";
const KS_EVENTS: &str = "events";
const KS_BY_TYPE: &str = "events_by_type";
const KS_BY_ACTOR: &str = "events_by_actor";
const KS_META: &str = "meta";
const CATCH_UP_CHUNK: usize = 32768;

/// Options for [`EventStore::open`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Open even when the last events do not verify (for inspection and export only).
    pub allow_broken_tail: bool,
}

/// A filter over the log. Bounds are exclusive seqs; `limit` is clamped to 1..=1000.
///
/// Paging: with `newest_first == false` pass the returned `next_cursor` as `after`; with
/// `newest_first == true` pass it as `before`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    /// Event types (`user.created`, ...); empty = all.
    pub types: Vec<String>,
    /// Actor id.
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    pub newest_first: bool,
}

/// One page of query results.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<Envelope>,
    /// Set when more events match: the seq to continue from (see [`EventQuery`]).
    pub next_cursor: Option<u64>,
}

/// Result of a full chain verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked (up to and including the first bad one).
    pub events: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub first_bad_seq: Option<u64>,
}

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn key_seq(key: &[u8]) -> Result<u64, EventError> {
    let tail: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| EventError::Corrupt(format!("bad seq key {key:?}")))?;
    Ok(u64::from_be_bytes(tail))
}

pub(crate) fn index_key(prefix: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 9);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_key(seq));
    k
}

fn to_unavailable(e: impl std::fmt::Display) -> EventError {
    EventError::Unavailable(e.to_string())
}

/// Open fjall handles for one data directory (everything but the directory lock).
pub(crate) struct Handles {
    pub db: Database,
    pub events: Keyspace,
    pub meta: Keyspace,
    pub by_type: Keyspace,
    pub by_actor: Keyspace,
    pub generation: u64,
    /// Logical projection keyspace name → physical keyspace of the current generation.
    pub projection_ks: HashMap<String, Keyspace>,
    side: Mutex<HashMap<String, Keyspace>>,
}

/// Takes the directory lock, or says who holds it.
pub(crate) fn lock_dir(data_dir: &Path) -> Result<File, EventError> {
    std::fs::create_dir_all(data_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join(LOCK_FILE))?;
    // `File::try_lock` is stable since 1.89; the toolchain here is 1.95 (Cargo.toml's
    // rust-version belongs to the main crate and should be raised at merge).
    #[allow(clippy::incompatible_msrv)]
    let locked = file.try_lock();
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(EventError::Locked(data_dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

pub(crate) fn physical_name(generation: u64, logical: &str) -> String {
    format!("g{generation}.{logical}")
}

pub(crate) fn logical_keyspaces(projections: &[Arc<dyn Projection>]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = projections
        .iter()
        .flat_map(|p| p.keyspaces().iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Handles {
    /// Opens fjall under `data_dir/log`, applies migrations and opens every keyspace.
    /// The caller must hold the directory lock.
    pub(crate) fn open(
        data_dir: &Path,
        projections: &[Arc<dyn Projection>],
    ) -> Result<Handles, EventError> {
        let db = Database::builder(data_dir.join(LOG_DIR))
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => EventError::Locked(data_dir.display().to_string()),
                e => e.into(),
            })?;
        migrate::run(&db)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let meta = ks(KS_META)?;
        let generation = read_u64(&meta, META_GENERATION)?.unwrap_or(1);
        let mut projection_ks = HashMap::new();
        for logical in logical_keyspaces(projections) {
            projection_ks.insert(
                logical.to_string(),
                ks(&physical_name(generation, logical))?,
            );
        }
        Ok(Handles {
            events: ks(KS_EVENTS)?,
            by_type: ks(KS_BY_TYPE)?,
            by_actor: ks(KS_BY_ACTOR)?,
            meta,
            generation,
            projection_ks,
            side: Mutex::new(HashMap::new()),
            db,
        })
    }

    /// Writes every memtable to disk tables (clean shutdown: start-up then skips journal replay).
    pub(crate) fn flush_all(&self) -> Result<(), EventError> {
        let fixed = [&self.events, &self.by_type, &self.by_actor, &self.meta];
        for ks in fixed.into_iter().chain(self.projection_ks.values()) {
            ks.rotate_memtable_and_wait()?;
        }
        Ok(())
    }

    /// Drops projection keyspaces of other generations (left by a finished or crashed replay).
    pub(crate) fn drop_stale_generations(&self) -> Result<(), EventError> {
        let current = format!("g{}.", self.generation);
        for name in self.db.list_keyspace_names() {
            let name: &str = &name;
            if name.starts_with('g') && name.contains('.') && !name.starts_with(&current) {
                let ks = self.db.keyspace(name, KeyspaceCreateOptions::default)?;
                self.db.delete_keyspace(ks)?;
                tracing::info!(keyspace = name, "dropped stale projection keyspace");
            }
        }
        Ok(())
    }

    /// `(seq, hash)` of the last event, read from the last key (no scan).
    pub(crate) fn head(&self) -> Result<(u64, String, Option<DateTime<Utc>>), EventError> {
        match self.events.last_key_value() {
            None => Ok((0, GENESIS_HASH.to_string(), None)),
            Some(g) => {
                let (k, v) = g.into_inner()?;
                let seq = key_seq(&k)?;
                let env = Envelope::from_stored_bytes(seq, &v)?;
                Ok((seq, env.hash, Some(env.ts)))
            }
        }
    }

    /// The last stored seq, without decoding the event (which may be corrupt).
    pub(crate) fn head_seq(&self) -> Result<u64, EventError> {
        match self.events.last_key_value() {
            None => Ok(0),
            Some(g) => key_seq(&g.key()?),
        }
    }

    pub(crate) fn get(&self, seq: u64) -> Result<Option<Envelope>, EventError> {
        match self.events.get(seq_key(seq))? {
            None => Ok(None),
            Some(v) => Envelope::from_stored_bytes(seq, &v).map(Some),
        }
    }

    pub(crate) fn checkpoint(&self, projection: &str) -> Result<u64, EventError> {
        Ok(read_u64(&self.meta, checkpoint_key(projection).as_bytes())?.unwrap_or(0))
    }

    fn side(&self, name: &str) -> Result<Keyspace, EventError> {
        let mut side = self
            .side
            .lock()
            .map_err(|_| to_unavailable("side lock poisoned"))?;
        if let Some(ks) = side.get(name) {
            return Ok(ks.clone());
        }
        let ks = self
            .db
            .keyspace(&format!("side.{name}"), KeyspaceCreateOptions::default)?;
        side.insert(name.to_string(), ks.clone());
        Ok(ks)
    }

    pub(crate) fn projection_keyspace(&self, logical: &str) -> Result<&Keyspace, EventError> {
        self.projection_ks
            .get(logical)
            .ok_or_else(|| EventError::Invalid(format!("unknown projection keyspace {logical:?}")))
    }

    /// Verifies the chain from `from_seq` to the head. When `from_seq > 1` the first
    /// event's `prev_hash` is trusted (used for the start-up tail check). Large logs are
    /// checked in two halves on two threads; the link between the halves is checked too.
    pub(crate) fn verify_from(&self, from_seq: u64, mut progress: impl FnMut(u64)) -> VerifyReport {
        // A corrupt newest event must still be checked (and reported), so the range comes
        // from the last key, not from decoding the last event.
        let head_seq = self.head_seq().unwrap_or(0);
        let head_hash = self.head().map(|(_, h, _)| h).unwrap_or_default();
        let from_seq = from_seq.max(1);
        let mut report = VerifyReport {
            ok: true,
            events: 0,
            head_seq,
            head_hash,
            first_bad_seq: None,
        };
        if head_seq < from_seq {
            return report;
        }
        let prev = (from_seq == 1).then(|| GENESIS_HASH.to_string());
        let (a, b) = if head_seq - from_seq < 50_000 {
            (
                self.verify_range(from_seq, head_seq, prev, &mut progress),
                None,
            )
        } else {
            let mid = from_seq + (head_seq - from_seq) / 2;
            std::thread::scope(|s| {
                let second = s.spawn(|| self.verify_range(mid + 1, head_seq, None, &mut |_| {}));
                let first = self.verify_range(from_seq, mid, prev, &mut |n| progress(n * 2));
                let second = second.join().unwrap_or(RangeCheck {
                    checked: 0,
                    first_bad: Some(mid + 1),
                    first_prev: None,
                    last_hash: None,
                });
                (first, Some(second))
            })
        };
        report.events = a.checked;
        report.first_bad_seq = a.first_bad;
        if let (None, Some(b)) = (a.first_bad, b) {
            report.events += b.checked;
            let linked = a.last_hash.is_some() && a.last_hash == b.first_prev;
            report.first_bad_seq = if linked {
                b.first_bad
            } else {
                Some(from_seq + a.checked)
            };
        }
        progress(report.events);
        report.ok = report.first_bad_seq.is_none();
        report
    }

    /// Checks events `from..=to`: contiguous keys, `seq` fields, links (the first link only
    /// against `prev` when given) and hashes.
    fn verify_range(
        &self,
        from: u64,
        to: u64,
        prev: Option<String>,
        progress: &mut dyn FnMut(u64),
    ) -> RangeCheck {
        let mut out = RangeCheck {
            checked: 0,
            first_bad: None,
            first_prev: None,
            last_hash: None,
        };
        let mut prev: Option<Vec<u8>> = prev.map(String::into_bytes);
        let mut expected = from;
        let mut buf = Vec::with_capacity(1024);
        for item in self.events.range(seq_key(from)..=seq_key(to)) {
            let good = (|| -> Result<bool, EventError> {
                let (k, v) = item.into_inner()?;
                let seq = key_seq(&k)?;
                if seq != expected {
                    return Ok(false); // a gap: `expected` is missing
                }
                // Fast path: hash the stored bytes' own canonical pieces (see `raw.rs`).
                if let Some(raw) = RawEnvelope::parse(&v) {
                    if seq == from {
                        out.first_prev = Some(String::from_utf8_lossy(raw.prev_hash).into_owned());
                    }
                    let linked = prev.as_deref().is_none_or(|p| p == raw.prev_hash);
                    let ok = raw.seq == seq && linked && raw.hash_matches(&mut buf);
                    let p = prev.get_or_insert_with(Vec::new);
                    p.clear();
                    p.extend_from_slice(raw.hash);
                    return Ok(ok);
                }
                let env = Envelope::from_stored_bytes(seq, &v)?;
                if seq == from {
                    out.first_prev = Some(env.prev_hash.clone());
                }
                let linked = prev
                    .as_deref()
                    .is_none_or(|p| p == env.prev_hash.as_bytes());
                let ok = env.seq == seq && linked && env.compute_hash() == env.hash;
                prev = Some(env.hash.into_bytes());
                Ok(ok)
            })()
            .unwrap_or(false);
            out.checked += 1;
            if !good {
                out.first_bad = Some(expected);
                return out;
            }
            expected += 1;
            if expected.is_multiple_of(65536) {
                progress(expected - from);
            }
        }
        if expected != to + 1 {
            out.first_bad = Some(expected); // missing events at the end of the range
        }
        out.last_hash = prev.map(|p| String::from_utf8_lossy(&p).into_owned());
        out
    }
}

struct RangeCheck {
    checked: u64,
    first_bad: Option<u64>,
    /// `prev_hash` of the first event of the range.
    first_prev: Option<String>,
    last_hash: Option<String>,
}

pub(crate) fn checkpoint_key(projection: &str) -> String {
    format!("checkpoint/{projection}")
}

fn read_u64(ks: &Keyspace, key: &[u8]) -> Result<Option<u64>, EventError> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = (*v)
                .try_into()
                .map_err(|_| EventError::Corrupt(format!("{key:?} is not a u64")))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

/// Folds events `after+1..` into `projections`, committing every [`CATCH_UP_CHUNK`] events.
/// Each projection starts after its own checkpoint when `checkpoints` is given (start-up
/// catch-up) or at `after` (replay into a fresh generation, which writes no checkpoints).
///
/// Two threads: one reads and decodes envelopes (the JSON work), the caller's thread folds
/// them in seq order and writes the batches.
pub(crate) fn fold_log(
    h: &Handles,
    projection_ks: &HashMap<String, Keyspace>,
    projections: &[Arc<dyn Projection>],
    checkpoints: Option<&[u64]>,
    after: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, EventError> {
    let mut tx = ProjectionTx::new(projection_ks);
    let mut in_chunk = 0usize;
    let mut folded = 0u64;
    let mut last = after;
    let flush = |tx: &mut ProjectionTx<'_>, last: u64| -> Result<(), EventError> {
        let mut batch = h.db.batch();
        tx.drain_into(&mut batch);
        if let Some(cps) = checkpoints {
            for (p, cp) in projections.iter().zip(cps) {
                if last > *cp {
                    batch.insert(&h.meta, checkpoint_key(p.name()), seq_key(last).to_vec());
                }
            }
        }
        batch.commit()?;
        Ok(())
    };
    std::thread::scope(|s| -> Result<(), EventError> {
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<DecodedChunk>(4);
        // Folded chunks go back to the decoder to be freed there: memory freed by the
        // thread that allocated it avoids contention in the allocator.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<(Envelope, Event)>>();
        let payload = projections.iter().any(|p| p.reads_payload());
        s.spawn(move || decode_log(h, after, payload, &decoded_tx, &done_rx));
        for chunk in decoded_rx {
            let chunk = chunk?;
            for (env, event) in &chunk {
                let seq = env.seq;
                for (i, p) in projections.iter().enumerate() {
                    if checkpoints.is_some_and(|cps| cps[i] >= seq) {
                        continue;
                    }
                    tx.apply(p.as_ref(), env, event)?;
                }
                tx.commit_request();
                last = seq;
                folded += 1;
                in_chunk += 1;
                if in_chunk >= CATCH_UP_CHUNK {
                    flush(&mut tx, last)?;
                    in_chunk = 0;
                    progress(folded);
                }
            }
            let _ = done_tx.send(chunk);
        }
        // Returning early drops the receiver, which stops the decoder.
        Ok(())
    })?;
    flush(&mut tx, last)?;
    h.db.persist(PersistMode::SyncAll)?;
    progress(folded);
    Ok(folded)
}

/// Envelopes decoded ahead of the fold, in seq order; an error ends the stream.
type DecodedChunk = Result<Vec<(Envelope, Event)>, EventError>;
const DECODE_CHUNK: usize = 1024;

/// Reads events `after+1..` and sends them decoded, until the end or until the receiver
/// is gone. Without `payload`, envelopes in the usual layout carry a `Null` payload and
/// their event is decoded straight from the stored text (see [`Projection::reads_payload`]).
fn decode_log(
    h: &Handles,
    after: u64,
    payload: bool,
    out: &std::sync::mpsc::SyncSender<DecodedChunk>,
    done: &std::sync::mpsc::Receiver<Vec<(Envelope, Event)>>,
) {
    let mut chunk = Vec::with_capacity(DECODE_CHUNK);
    for item in h.events.range(seq_key(after + 1)..) {
        let decoded = (|| -> Result<(Envelope, Event), EventError> {
            let (k, v) = item.into_inner()?;
            let seq = key_seq(&k)?;
            if !payload {
                if let Some(raw) = RawEnvelope::parse(&v) {
                    if let Some(env) = raw.to_envelope_without_payload() {
                        let event = Event::decode_slice(&env.r#type, env.version, raw.payload)?;
                        return Ok((env, event));
                    }
                }
            }
            let env = Envelope::from_stored_bytes(seq, &v)?;
            let event = env.event()?;
            Ok((env, event))
        })();
        match decoded {
            Ok(d) => chunk.push(d),
            Err(e) => {
                if !chunk.is_empty() && out.send(Ok(chunk)).is_err() {
                    return;
                }
                let _ = out.send(Err(e));
                return;
            }
        }
        if chunk.len() >= DECODE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(DECODE_CHUNK));
            if out.send(Ok(full)).is_err() {
                return;
            }
            while let Ok(folded) = done.try_recv() {
                drop(folded);
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send(Ok(chunk));
    }
}

struct AppendRequest {
    ctx: EventContext,
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<Envelope>, EventError>>,
}

enum WriterMsg {
    Append(AppendRequest),
    Shutdown(oneshot::Sender<()>),
}

type SharedHandles = Arc<RwLock<Option<Arc<Handles>>>>;

struct Inner {
    data_dir: PathBuf,
    handles: SharedHandles,
    head: Arc<RwLock<(u64, String)>>,
    tx: mpsc::Sender<WriterMsg>,
    live: broadcast::Sender<Arc<Envelope>>,
    lock: Mutex<Option<File>>,
    projections: Vec<Arc<dyn Projection>>,
}

/// Handle to the event log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("data_dir", &self.inner.data_dir)
            .field("head", &self.head())
            .finish()
    }
}

impl EventStore {
    /// Opens (or creates) the log in `data_dir`: takes the directory lock, applies layout
    /// migrations, loads the head from the last key, re-verifies the last
    /// [`TAIL_VERIFY_EVENTS`] events, catches every projection up from its checkpoint and
    /// starts the writer thread.
    pub fn open(
        data_dir: &Path,
        projections: Vec<Arc<dyn Projection>>,
        opts: StoreOptions,
    ) -> Result<EventStore, EventError> {
        let lock = lock_dir(data_dir)?;
        let h = Handles::open(data_dir, &projections)?;
        h.drop_stale_generations()?;
        // Verify the tail before decoding the newest event, so a corrupt one is reported as
        // a broken chain at its seq.
        let last_seq = h.head_seq()?;
        let tail_from = last_seq.saturating_sub(TAIL_VERIFY_EVENTS - 1).max(1);
        let tail = h.verify_from(tail_from, |_| {});
        if let Some(seq) = tail.first_bad_seq {
            if !opts.allow_broken_tail {
                return Err(EventError::BrokenChain { seq });
            }
            tracing::error!(
                seq,
                "event log chain broken; opened anyway (allow_broken_tail)"
            );
        }
        let (head_seq, head_hash, head_ts) = h.head()?;

        let checkpoints = projections
            .iter()
            .map(|p| h.checkpoint(p.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let min_cp = checkpoints.iter().copied().min().unwrap_or(head_seq);
        if min_cp < head_seq {
            let n = fold_log(
                &h,
                &h.projection_ks,
                &projections,
                Some(&checkpoints),
                min_cp,
                |_| {},
            )?;
            tracing::info!(events = n, "caught projections up with the log");
        }

        let handles: SharedHandles = Arc::new(RwLock::new(Some(Arc::new(h))));
        let head = Arc::new(RwLock::new((head_seq, head_hash.clone())));
        let (tx, rx) = mpsc::channel(8192);
        let (live, _) = broadcast::channel(4096);
        let writer = Writer {
            data_dir: data_dir.to_path_buf(),
            handles: handles.clone(),
            head: head.clone(),
            live: live.clone(),
            projections: projections.clone(),
            seq: head_seq,
            hash: head_hash,
            last_ts: head_ts,
            needs_reopen: false,
        };
        std::thread::Builder::new()
            .name("inferno-event-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(EventStore {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                handles,
                head,
                tx,
                live,
                lock: Mutex::new(Some(lock)),
                projections,
            }),
        })
    }

    pub(crate) fn handles(&self) -> Result<Arc<Handles>, EventError> {
        self.inner
            .handles
            .read()
            .map_err(|_| to_unavailable("handles lock poisoned"))?
            .clone()
            .ok_or_else(|| to_unavailable("event store is closed or reopening"))
    }

    pub(crate) fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.inner.projections
    }

    /// Appends `events` atomically (all or none) and resolves after they are fsynced.
    pub async fn append(
        &self,
        ctx: &EventContext,
        events: Vec<Event>,
    ) -> Result<Vec<Envelope>, EventError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if events.len() > MAX_GROUP_EVENTS {
            return Err(EventError::Invalid(format!(
                "at most {MAX_GROUP_EVENTS} events per append"
            )));
        }
        let (reply, rx) = oneshot::channel();
        let msg = WriterMsg::Append(AppendRequest {
            ctx: ctx.clone(),
            events,
            reply,
        });
        self.inner
            .tx
            .send(msg)
            .await
            .map_err(|_| to_unavailable("event writer stopped"))?;
        rx.await
            .map_err(|_| to_unavailable("event writer stopped"))?
    }

    /// `(seq, hash)` of the last committed event; `(0, GENESIS_HASH)` when empty.
    pub fn head(&self) -> (u64, String) {
        self.inner
            .head
            .read()
            .map(|h| h.clone())
            .unwrap_or((0, GENESIS_HASH.to_string()))
    }

    pub fn get(&self, seq: u64) -> Result<Option<Envelope>, EventError> {
        self.handles()?.get(seq)
    }

    /// Filtered, paged read of the log (see [`EventQuery`]).
    pub fn query(&self, q: &EventQuery) -> Result<EventPage, EventError> {
        super::query::run(&*self.handles()?, q)
    }

    /// Events in ascending order from `after + 1` to the end as it is when iteration
    /// reaches it (for SSE catch-up and export).
    pub fn range(&self, after: u64) -> impl Iterator<Item = Result<Envelope, EventError>> + Send {
        let iter = self
            .handles()
            .map(|h| h.events.range(seq_key(after.saturating_add(1))..));
        let (ok, err) = match iter {
            Ok(it) => (Some(it), None),
            Err(e) => (None, Some(Err(e))),
        };
        err.into_iter().chain(ok.into_iter().flatten().map(|g| {
            let (k, v) = g.into_inner()?;
            let seq = key_seq(&k)?;
            Envelope::from_stored_bytes(seq, &v)
        }))
    }

    /// Live tail: every envelope after its commit. A slow receiver gets `Lagged` and
    /// should catch up with [`EventStore::range`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.inner.live.subscribe()
    }

    /// Recomputes the whole chain. Blocking: call from `spawn_blocking`.
    pub fn verify(&self) -> VerifyReport {
        match self.handles() {
            Ok(h) => h.verify_from(1, |_| {}),
            Err(_) => {
                let (head_seq, head_hash) = self.head();
                VerifyReport {
                    ok: false,
                    events: 0,
                    head_seq,
                    head_hash,
                    first_bad_seq: None,
                }
            }
        }
    }

    /// Reads one record of a projection keyspace (logical name, e.g. `users`).
    pub fn projection_get(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, EventError> {
        let h = self.handles()?;
        Ok(h.projection_keyspace(keyspace)?
            .get(key)?
            .map(|v| v.to_vec()))
    }

    /// All records of a projection keyspace whose key starts with `prefix`, in key order.
    pub fn projection_scan(
        &self,
        keyspace: &str,
        prefix: &[u8],
    ) -> Result<super::projections::KvPairs, EventError> {
        let h = self.handles()?;
        h.projection_keyspace(keyspace)?
            .prefix(prefix)
            .map(|g| {
                let (k, v) = g.into_inner()?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Durably stores a value outside the log (e.g. an email address, a last-used time).
    /// Not event-sourced: replay does not rebuild it and verify does not cover it.
    pub fn side_put(&self, keyspace: &str, key: &[u8], value: &[u8]) -> Result<(), EventError> {
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let mut b = h.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&ks, key, value);
        b.commit().map_err(to_unavailable)
    }

    pub fn side_get(&self, keyspace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EventError> {
        let h = self.handles()?;
        Ok(h.side(keyspace)?.get(key)?.map(|v| v.to_vec()))
    }

    pub fn side_delete(&self, keyspace: &str, key: &[u8]) -> Result<(), EventError> {
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let mut b = h.db.batch().durability(Some(PersistMode::SyncAll));
        b.remove(&ks, key);
        b.commit().map_err(to_unavailable)
    }

    /// Drains the writer (appends already queued are committed), closes the database and
    /// releases the directory lock. Later calls on any clone return `Unavailable`.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.inner.tx.send(WriterMsg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let handles = self.inner.handles.write().ok().and_then(|mut h| h.take());
        if let Some(h) = handles {
            // Flush memtables so the next start-up does not replay the journal.
            if let Err(e) = h.flush_all() {
                tracing::warn!(error = %e, "flushing memtables at shutdown failed");
            }
        }
        if let Ok(mut l) = self.inner.lock.lock() {
            l.take();
        }
    }
}

/// The single writer. Owns the head while running; publishes it after each commit.
struct Writer {
    data_dir: PathBuf,
    handles: SharedHandles,
    head: Arc<RwLock<(u64, String)>>,
    live: broadcast::Sender<Arc<Envelope>>,
    projections: Vec<Arc<dyn Projection>>,
    seq: u64,
    hash: String,
    last_ts: Option<DateTime<Utc>>,
    needs_reopen: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut shutdown = None;
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
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
                }
                if n < MAX_GROUP_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if shutdown.is_some() {
                break;
            }
        }
        drop(self);
        if let Some(ack) = shutdown {
            let _ = ack.send(());
        }
    }

    fn current_handles(&mut self) -> Result<Arc<Handles>, EventError> {
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

    fn commit_group(&mut self, group: Vec<AppendRequest>) {
        let h = match self.current_handles() {
            Ok(h) => h,
            Err(e) => {
                for req in group {
                    let _ = req.reply.send(Err(to_unavailable(&e)));
                }
                return;
            }
        };
        let (start_seq, start_hash, start_ts) = (self.seq, self.hash.clone(), self.last_ts);
        let mut tx = ProjectionTx::new(&h.projection_ks);
        let mut accepted: Vec<(oneshot::Sender<_>, Vec<Envelope>)> = Vec::new();
        let mut batch = h.db.batch().durability(Some(PersistMode::SyncAll));

        for req in group {
            let (seq0, hash0, ts0) = (self.seq, self.hash.clone(), self.last_ts);
            let mut envs = Vec::with_capacity(req.events.len());
            let mut result = Ok(());
            for event in &req.events {
                let mut env = Envelope {
                    seq: self.seq + 1,
                    id: Uuid::now_v7(),
                    ts: self.next_ts(),
                    r#type: event.event_type().to_string(),
                    version: event.event_version(),
                    actor: req.ctx.actor.clone(),
                    request_id: req.ctx.request_id.clone(),
                    client_ip: req.ctx.client_ip.clone(),
                    payload: event.payload_json(),
                    prev_hash: std::mem::take(&mut self.hash),
                    hash: String::new(),
                };
                env.hash = env.compute_hash();
                self.seq = env.seq;
                self.hash = env.hash.clone();
                for p in &self.projections {
                    if let Err(e) = tx.apply(p.as_ref(), &env, event) {
                        result = Err(e);
                        break;
                    }
                }
                envs.push(env);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Ok(()) => {
                    tx.commit_request();
                    for env in &envs {
                        batch.insert(&h.events, seq_key(env.seq), env.to_stored_bytes());
                        batch.insert(&h.by_type, index_key(&env.r#type, env.seq), b"".to_vec());
                        batch.insert(&h.by_actor, index_key(&env.actor.id, env.seq), b"".to_vec());
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
        if accepted.is_empty() {
            return;
        }
        tx.drain_into(&mut batch);
        for p in &self.projections {
            batch.insert(
                &h.meta,
                checkpoint_key(p.name()),
                seq_key(self.seq).to_vec(),
            );
        }
        match batch.commit() {
            Ok(()) => {
                if let Ok(mut head) = self.head.write() {
                    *head = (self.seq, self.hash.clone());
                }
                for (reply, envs) in accepted {
                    for env in &envs {
                        let _ = self.live.send(Arc::new(env.clone()));
                    }
                    let _ = reply.send(Ok(envs));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event log commit failed; answering 503 and reopening");
                self.seq = start_seq;
                self.hash = start_hash;
                self.last_ts = start_ts;
                self.needs_reopen = true;
                let msg = format!("event log commit failed: {e}");
                for (reply, _) in accepted {
                    let _ = reply.send(Err(EventError::Unavailable(msg.clone())));
                }
            }
        }
    }
}
