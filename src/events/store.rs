//! The fjall-backed event store: its keyspaces, reads and queries, and the handle through
//! which appends reach the single writer (`writer.rs`).
//!
//! Appends go over a channel to a single writer. It drains whatever is waiting (up to
//! [`MAX_GROUP_EVENTS`]), assigns `seq`/`id`/`ts`/`prev_hash`/`hash`, folds the events into
//! every projection, writes events, indexes, projection records and checkpoints in ONE
//! fjall batch; its committer thread commits the batch with `SyncAll` (while the writer
//! builds the next one) and only then answers the callers and broadcasts. A failed commit answers the whole group with [`EventError::Unavailable`],
//! leaves the head where it was, and makes the writer reopen the database before the next
//! group (fjall refuses writes after a failed journal write), so the server recovers when
//! the disk does. Verification is in `verify.rs`, catch-up and replay folds in `fold.rs`.

use super::cache::RecordCache;
use super::envelope::{redacted_fields, Envelope, EventContext, GENESIS_HASH};
use super::error::EventError;
use super::fold::fold_log;
use super::migrate::{self, META_GENERATION};
use super::projections::Projection;
use super::raw::RawEnvelope;
use super::types::Event;
use super::verify::VerifyReport;
use super::writer::{AppendRequest, Writer, WriterMsg};
use chrono::{DateTime, Utc};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most events folded into one commit (one fsync).
pub const MAX_GROUP_EVENTS: usize = 4096;

/// The journal kept before fjall flushes the memtables that pin its oldest file. Every
/// keyspace's memtable may otherwise grow to 64 MiB, and fjall's default of 512 MiB lets a
/// server that writes to many keyspaces (last-used times, job results, stream chunks)
/// hold hundreds of MiB of memtables; this bounds them to about as much as the journal
/// holds, and keeps start-up's journal replay short. fjall's minimum.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// fjall's longest key (its length is a u16). A longer key is in no keyspace: reads answer
/// "absent" for it instead of reaching fjall, which panics on one.
pub(crate) const MAX_KEY_BYTES: usize = u16::MAX as usize;
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

/// A write to a side keyspace (`side.<name>`), committed with an append's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideWrite {
    pub(super) keyspace: String,
    pub(super) key: Vec<u8>,
    /// `None` deletes.
    pub(super) value: Option<Vec<u8>>,
}

impl SideWrite {
    pub fn put(keyspace: &str, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            keyspace: keyspace.to_string(),
            key: key.as_ref().to_vec(),
            value: Some(value.into()),
        }
    }

    pub fn delete(keyspace: &str, key: impl AsRef<[u8]>) -> Self {
        Self {
            keyspace: keyspace.to_string(),
            key: key.as_ref().to_vec(),
            value: None,
        }
    }
}

/// Options for [`EventStore::open`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Open even when the last events do not verify, read-only: appends are refused, reads
    /// (inspection, export) work.
    pub allow_broken_tail: bool,
    /// Do not maintain the Merkle tree (for benchmarks that measure its cost; a store
    /// opened so leaves the tree behind, and the next normal open catches it up).
    #[doc(hidden)]
    pub without_tree: bool,
    /// Cluster mode: the shared log this store is a copy of (`shared.rs`). `open` joins
    /// it (seeding an empty one from this data dir) and catches up before it returns.
    pub shared: Option<Arc<super::shared::SharedLog>>,
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

/// One committed event in its export form (see [`EventStore::export_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    pub seq: u64,
    /// `user.created`, `job.completed`, ...
    pub event_type: String,
    /// The line `inferno audit export` writes for it, without the newline.
    pub line: Vec<u8>,
}

/// The type of a stored event and its export line: the stored bytes themselves, or for an
/// event with redacted fields its shown form ([`Envelope::export_line`]).
pub(crate) fn export_form(
    seq: u64,
    stored: &[u8],
) -> Result<(Cow<'_, str>, Cow<'_, [u8]>), EventError> {
    let raw = RawEnvelope::parse(stored);
    let (event_type, version) = match raw.and_then(|r| r.type_str().map(|t| (t, r.version))) {
        Some((t, version)) => (Cow::Borrowed(t), version),
        None => {
            let env = Envelope::from_stored_bytes(seq, stored)?;
            (Cow::Owned(env.r#type), env.version)
        }
    };
    if redacted_fields(&event_type, version).is_empty() {
        Ok((event_type, Cow::Borrowed(stored)))
    } else {
        let line = Envelope::from_stored_bytes(seq, stored)?.export_line();
        Ok((event_type, Cow::Owned(line)))
    }
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

pub(crate) fn to_unavailable(e: impl std::fmt::Display) -> EventError {
    EventError::Unavailable(e.to_string())
}

/// Open fjall handles for one data directory (everything but the directory lock).
pub(crate) struct Handles {
    pub db: Database,
    pub events: Keyspace,
    pub meta: Keyspace,
    pub by_type: Keyspace,
    pub by_actor: Keyspace,
    /// Merkle tree tiles (`merkle.rs`).
    pub merkle: Keyspace,
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
            .max_journaling_size(MAX_JOURNALING_BYTES)
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
            merkle: ks(super::merkle::KS_MERKLE)?,
            meta,
            generation,
            projection_ks,
            side: Mutex::new(HashMap::new()),
            db,
        })
    }

    /// Writes every memtable to disk tables (clean shutdown: start-up then skips journal replay).
    pub(crate) fn flush_all(&self) -> Result<(), EventError> {
        let fixed = [
            &self.events,
            &self.by_type,
            &self.by_actor,
            &self.merkle,
            &self.meta,
        ];
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

    pub(crate) fn side(&self, name: &str) -> Result<Keyspace, EventError> {
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
}

pub(crate) fn checkpoint_key(projection: &str) -> String {
    format!("checkpoint/{projection}")
}

pub(crate) fn read_u64(ks: &Keyspace, key: &[u8]) -> Result<Option<u64>, EventError> {
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

pub(crate) type SharedHandles = Arc<RwLock<Option<Arc<Handles>>>>;

pub(super) struct Inner {
    data_dir: PathBuf,
    handles: SharedHandles,
    head: Arc<RwLock<(u64, String)>>,
    pub(super) tx: mpsc::Sender<WriterMsg>,
    live: broadcast::Sender<Arc<Envelope>>,
    lock: Mutex<Option<File>>,
    projections: Vec<Arc<dyn Projection>>,
    /// Set when opened with `allow_broken_tail` on a chain broken at this seq: nothing is
    /// ever chained onto it.
    read_only: Option<u64>,
    /// Decoded projection records, invalidated by the writer after each commit.
    cache: Arc<RecordCache>,
    /// Cluster mode: the shared log, and the stop of its tail.
    pub(super) shared: Option<(
        Arc<super::shared::SharedLog>,
        tokio_util::sync::CancellationToken,
    )>,
}

/// Handle to the event log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct EventStore {
    pub(super) inner: Arc<Inner>,
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
        let tail = h.verify_from(tail_from, false, |_| {});
        if let Some(seq) = tail.first_bad_seq {
            if !opts.allow_broken_tail {
                return Err(EventError::BrokenChain {
                    seq,
                    reason: tail.first_bad_reason.unwrap_or_default(),
                });
            }
            tracing::error!(
                seq,
                "event log chain broken; opened read-only for inspection and export (allow_broken_tail)"
            );
        }
        let read_only = tail.first_bad_seq;
        let (head_seq, head_hash, head_ts) = match (h.head(), read_only) {
            (Ok(head), _) => head,
            // Read-only on a newest event that does not even decode: nothing is chained
            // onto it, so its hash is only shown.
            (Err(e), Some(_)) => {
                tracing::error!(error = %e, "the newest event does not decode");
                (h.head_seq()?, String::new(), None)
            }
            (Err(e), None) => return Err(e),
        };

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

        let tree = match (opts.without_tree, read_only) {
            (true, _) => None,
            // A broken chain is only inspected: the tree is read as it is.
            (false, Some(_)) => Some(super::merkle::TreeEdge::load(&h.merkle)?),
            (false, None) => Some(super::transparency::catch_up_tree(&h, head_seq)?),
        };
        let handles: SharedHandles = Arc::new(RwLock::new(Some(Arc::new(h))));
        let head = Arc::new(RwLock::new((head_seq, head_hash.clone())));
        let (tx, rx) = mpsc::channel(8192);
        let (live, _) = broadcast::channel(4096);
        let cache = Arc::new(RecordCache::default());
        let nudged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready, joined) = std::sync::mpsc::channel();
        let writer = Writer {
            cache: cache.clone(),
            data_dir: data_dir.to_path_buf(),
            handles: handles.clone(),
            head: head.clone(),
            live: live.clone(),
            projections: projections.clone(),
            seq: head_seq,
            hash: head_hash,
            last_ts: head_ts,
            needs_reopen: false,
            tree,
            shared: opts.shared.clone(),
            nudged: nudged.clone(),
            ready: opts.shared.is_some().then_some(ready),
            catch_up_failing: false,
        };
        std::thread::Builder::new()
            .name("inferno-event-writer".into())
            .spawn(move || writer.run(rx))?;
        let shared = match opts.shared {
            None => None,
            Some(log) => {
                joined.recv().map_err(|_| {
                    to_unavailable("the event writer stopped while joining the shared log")
                })??;
                let stop = tokio_util::sync::CancellationToken::new();
                super::shared::tail(
                    &log,
                    super::shared::nudger(tx.clone(), head.clone(), nudged),
                    stop.clone(),
                );
                Some((log, stop))
            }
        };
        Ok(EventStore {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                handles,
                head,
                tx,
                live,
                lock: Mutex::new(Some(lock)),
                projections,
                read_only,
                cache,
                shared,
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
        self.append_with(ctx, events, Vec::new()).await
    }

    /// [`EventStore::append`] with writes to side keyspaces in the same atomic batch: data
    /// that must never enter the log (password hashes, email addresses) changes exactly
    /// when its event commits, never before and never without it.
    pub async fn append_with(
        &self,
        ctx: &EventContext,
        events: Vec<Event>,
        side: Vec<SideWrite>,
    ) -> Result<Vec<Envelope>, EventError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.writable()?;
        if events.len() > MAX_GROUP_EVENTS {
            return Err(EventError::Invalid(format!(
                "at most {MAX_GROUP_EVENTS} events per append"
            )));
        }
        // Encoded here, in the appender's task, so the single writer does only what the
        // chain forces on it (`seal.rs`).
        let events = super::seal::prepare(events)?;
        let (reply, rx) = oneshot::channel();
        let msg = WriterMsg::Append(AppendRequest {
            ctx: super::seal::PreparedCtx::new(ctx),
            events,
            side,
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

    pub(crate) fn record_cache(&self) -> &RecordCache {
        &self.inner.cache
    }

    /// Refuses every write (appends and side keyspaces) of a store opened read-only.
    pub(super) fn writable(&self) -> Result<(), EventError> {
        match self.inner.read_only {
            None => Ok(()),
            Some(seq) => Err(EventError::Unavailable(format!(
                "the event log is open read-only for inspection: its chain is broken at seq {seq}"
            ))),
        }
    }

    /// Whether the store was opened read-only on a broken chain (`allow_broken_tail`).
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only.is_some()
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

    /// Up to `limit` events after `after`, in order, each as `inferno audit export` writes
    /// it (for followers that copy the log elsewhere byte for byte). Blocking fjall reads:
    /// call from `spawn_blocking`.
    pub fn export_after(&self, after: u64, limit: usize) -> Result<Vec<ExportedEvent>, EventError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        for g in h
            .events
            .range(seq_key(after.saturating_add(1))..)
            .take(limit)
        {
            let (k, v) = g.into_inner()?;
            let seq = key_seq(&k)?;
            let (event_type, line) = export_form(seq, &v)?;
            out.push(ExportedEvent {
                seq,
                event_type: event_type.into_owned(),
                line: line.into_owned(),
            });
        }
        Ok(out)
    }

    /// Live tail: every envelope after its commit. A slow receiver gets `Lagged` and
    /// should catch up with [`EventStore::range`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.inner.live.subscribe()
    }

    /// Recomputes the whole chain. Blocking: call from `spawn_blocking`.
    pub fn verify(&self) -> VerifyReport {
        match self.handles() {
            Ok(h) => h.verify_from(1, true, |_| {}),
            Err(_) => {
                let (head_seq, head_hash) = self.head();
                VerifyReport {
                    ok: false,
                    events: 0,
                    head_seq,
                    head_hash,
                    first_bad_seq: None,
                    first_bad_reason: None,
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
        let ks = h.projection_keyspace(keyspace)?;
        if key.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        Ok(ks.get(key)?.map(|v| v.to_vec()))
    }

    /// All records of a projection keyspace whose key starts with `prefix`, in key order.
    pub fn projection_scan(
        &self,
        keyspace: &str,
        prefix: &[u8],
    ) -> Result<super::projections::KvPairs, EventError> {
        let h = self.handles()?;
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(Vec::new());
        }
        h.projection_keyspace(keyspace)?
            .prefix(prefix)
            .map(|g| {
                let (k, v) = g.into_inner()?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Drains the writer (appends already queued are committed), closes the database and
    /// releases the directory lock. Later calls on any clone return `Unavailable`.
    pub async fn shutdown(&self) {
        if let Some((_, stop)) = &self.inner.shared {
            stop.cancel();
        }
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
