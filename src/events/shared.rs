//! Cluster mode's shared event log in PostgreSQL (`[storage] backend = "postgres"`).
//!
//! PostgreSQL holds the one log every node appends to: the stored bytes of each event
//! (`inferno.events`), the side writes committed with them (`inferno.side_writes`) and the
//! head (`inferno.log_head`), whose row the appending node locks `FOR UPDATE` so seq and
//! `prev_hash` are assigned by one node at a time. Each node keeps its fjall store as a
//! local copy: the writer catches up the events other nodes appended (under the lock
//! before its own group, and on every notification or backstop tick of [`tail`]), folds
//! them into the projections and the Merkle tree exactly as its own, and verifies each
//! one's hash and chain link before it does. Nothing is replicated by hand: PostgreSQL
//! orders, stores and notifies; each node derives the rest.
//!
//! The pool lives on a runtime of its own (one thread), so the single writer, a plain
//! thread, can wait for PostgreSQL from any context, and the pool's connections are always
//! driven by the runtime that opened them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::error::EventError;
use super::store::{EventStore, SideWrite};
use super::writer::WriterMsg;

/// The channel a commit notifies, with the new head seq as payload.
pub(crate) const CHANNEL: &str = "inferno_events";
/// How often a node asks PostgreSQL for new events when no notification came (a lost
/// notification, a reconnecting listener): bounds how stale a node's view can get.
pub const BACKSTOP: Duration = Duration::from_millis(250);
/// Most events fetched per catch-up query.
pub(crate) const FETCH_LIMIT: i64 = 4096;

/// An event another node appended, as PostgreSQL holds it.
pub(crate) struct Remote {
    pub seq: u64,
    pub stored: Vec<u8>,
    /// The side writes committed with it (on the first event of their append).
    pub side: Vec<SideWrite>,
}

/// One row of `inferno.side_writes`.
pub(crate) struct SideRow {
    pub seq: u64,
    pub write: SideWrite,
}

/// The connection to the shared log. Created once per process (`connect`).
pub struct SharedLog {
    pool: PgPool,
    node: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog")
            .field("node", &self.node)
            .finish()
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        // Never blocks, so the last handle may go in async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How every error of the shared log begins (the API names the store by it).
pub const UNAVAILABLE: &str = "the shared event log (PostgreSQL) is unavailable";

/// A PostgreSQL error, for the log: what failed, never the URL or credentials.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> EventError {
    EventError::Unavailable(format!("{UNAVAILABLE}: {what}: {e}"))
}

fn to_seq(v: i64) -> Result<u64, EventError> {
    u64::try_from(v).map_err(|_| EventError::Corrupt(format!("negative seq {v} in PostgreSQL")))
}

fn to_i64(v: u64) -> Result<i64, EventError> {
    i64::try_from(v)
        .map_err(|_| EventError::Invalid(format!("seq {v} exceeds PostgreSQL's bigint")))
}

impl SharedLog {
    /// Connects to `url`, applies `migrations/postgres/` and returns the handle; `node`
    /// is `[cluster] node_id`, recorded with every event this process appends.
    pub fn connect(url: &str, node: &str) -> Result<Arc<SharedLog>, EventError> {
        let options: PgConnectOptions = url.parse().map_err(|e| {
            EventError::Invalid(format!("[storage] url is not a PostgreSQL URL: {e}"))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("inferno-postgres")
            .enable_all()
            .build()?;
        let pool = futures::executor::block_on(rt.spawn(async move {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(|e| unavailable("connecting", e))?;
            migrator()
                .run(&pool)
                .await
                .map_err(|e| unavailable("applying migrations/postgres", e))?;
            Ok::<_, EventError>(pool)
        }))
        .map_err(|e| unavailable("connecting", e))??;
        Ok(Arc::new(SharedLog {
            pool,
            node: node.to_string(),
            rt: Some(rt),
        }))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `f` on the log's own runtime and waits for it (from any thread or context).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, EventError>> + Send + 'static,
    ) -> Result<T, EventError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| unavailable("closing", "the runtime stopped"))?;
        futures::executor::block_on(rt.spawn(f)).map_err(|e| unavailable("waiting", e))?
    }

    pub(crate) fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// The head `(seq, hash)` as committed now.
    pub(crate) fn head(&self) -> Result<(u64, String), EventError> {
        let pool = self.pool();
        self.run(async move {
            let row = sqlx::query("SELECT seq, hash FROM inferno.log_head WHERE id = 1")
                .fetch_one(&pool)
                .await
                .map_err(|e| unavailable("reading the head", e))?;
            Ok((to_seq(row.get(0))?, row.get(1)))
        })
    }

    /// The stored bytes of event `seq`, if PostgreSQL has it.
    pub(crate) fn stored_at(&self, seq: u64) -> Result<Option<Vec<u8>>, EventError> {
        let pool = self.pool();
        let seq = to_i64(seq)?;
        self.run(async move {
            let row = sqlx::query("SELECT stored FROM inferno.events WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&pool)
                .await
                .map_err(|e| unavailable("reading an event", e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Begins a transaction holding the head row: no other node appends until it ends.
    pub(crate) fn lock_head(
        &self,
    ) -> Result<(Transaction<'static, Postgres>, u64, String), EventError> {
        let pool = self.pool();
        self.run(async move {
            let mut tx = pool
                .begin()
                .await
                .map_err(|e| unavailable("beginning", e))?;
            let row = sqlx::query("SELECT seq, hash FROM inferno.log_head WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| unavailable("locking the head", e))?;
            let (seq, hash) = (to_seq(row.get(0))?, row.get(1));
            Ok((tx, seq, hash))
        })
    }

    /// Events after `after` (at most [`FETCH_LIMIT`]), with their side writes, read in
    /// `tx` when given (under the head lock) or on a pooled connection.
    pub(crate) fn fetch(
        &self,
        tx: Option<Transaction<'static, Postgres>>,
        after: u64,
    ) -> Result<(Option<Transaction<'static, Postgres>>, Vec<Remote>), EventError> {
        let pool = self.pool();
        let after = to_i64(after)?;
        self.run(async move {
            match tx {
                Some(mut tx) => {
                    let events = fetch_after(&mut tx, after).await?;
                    Ok((Some(tx), events))
                }
                None => {
                    let mut conn = pool
                        .acquire()
                        .await
                        .map_err(|e| unavailable("connecting", e))?;
                    Ok((None, fetch_after(&mut conn, after).await?))
                }
            }
        })
    }

    /// Inserts a group's events and side writes, moves the head, notifies the other nodes
    /// and commits: the group's commit point.
    pub(crate) fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        events: Vec<(u64, Vec<u8>)>,
        side: Vec<SideRow>,
        head: (u64, String),
    ) -> Result<(), EventError> {
        let node = self.node.clone();
        self.run(async move { insert_and_commit(tx, node, events, side, head).await })
    }

    /// Ends a transaction without committing, on the runtime its connection belongs to.
    pub(crate) fn rollback(&self, tx: Transaction<'static, Postgres>) {
        let _ = self.run(async move {
            let _ = tx.rollback().await;
            Ok(())
        });
    }

    /// Copies an embedded log into an empty shared log (the first node of a cluster made
    /// from a single-machine data dir): `events` in order, then the current contents of
    /// the side keyspaces, recorded on the last event.
    pub(crate) fn seed(
        &self,
        events: Vec<(u64, Vec<u8>)>,
        side: Vec<SideRow>,
        head: (u64, String),
    ) -> Result<(), EventError> {
        let (tx, seq, _) = self.lock_head()?;
        if seq != 0 {
            return Err(EventError::Invalid(format!(
                "the shared log is no longer empty (head {seq}); start this node again"
            )));
        }
        self.commit(tx, events, side, head)
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("migrations/postgres");
    m.create_schema("inferno");
    m.dangerous_set_table_name("inferno._sqlx_migrations");
    m
}

async fn fetch_after(conn: &mut PgConnection, after: i64) -> Result<Vec<Remote>, EventError> {
    let rows =
        sqlx::query("SELECT seq, stored FROM inferno.events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(FETCH_LIMIT)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| unavailable("reading events", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Remote {
            seq: to_seq(r.get(0))?,
            stored: r.get(1),
            side: Vec::new(),
        });
    }
    let Some(last) = out.last().map(|r| r.seq) else {
        return Ok(out);
    };
    let rows = sqlx::query(
        "SELECT seq, keyspace, key, value FROM inferno.side_writes \
         WHERE seq > $1 AND seq <= $2 ORDER BY seq, ord",
    )
    .bind(after)
    .bind(to_i64(last)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| unavailable("reading side writes", e))?;
    let first = out[0].seq;
    for r in rows {
        let seq = to_seq(r.get(0))?;
        let write = SideWrite {
            keyspace: r.get(1),
            key: r.get(2),
            value: r.get(3),
        };
        match seq.checked_sub(first).and_then(|i| out.get_mut(i as usize)) {
            Some(ev) if ev.seq == seq => ev.side.push(write),
            _ => {
                return Err(EventError::Corrupt(format!(
                    "side writes of seq {seq} have no event in the shared log"
                )))
            }
        }
    }
    Ok(out)
}

async fn insert_and_commit(
    mut tx: Transaction<'static, Postgres>,
    node: String,
    events: Vec<(u64, Vec<u8>)>,
    side: Vec<SideRow>,
    head: (u64, String),
) -> Result<(), EventError> {
    let mut seqs = Vec::with_capacity(events.len());
    let mut stored = Vec::with_capacity(events.len());
    for (seq, bytes) in events {
        seqs.push(to_i64(seq)?);
        stored.push(bytes);
    }
    let (mut s, mut ord, mut ks, mut key, mut value) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, row) in side.into_iter().enumerate() {
        s.push(to_i64(row.seq)?);
        ord.push(i as i32);
        ks.push(row.write.keyspace);
        key.push(row.write.key);
        value.push(row.write.value);
    }
    let seq = to_i64(head.0)?;
    // One round trip for the group: events, side writes, head and notification in one
    // statement (data-modifying CTEs), then the commit.
    sqlx::query(
        "WITH e AS (INSERT INTO inferno.events (seq, stored, node) \
                    SELECT s, b, $3 FROM UNNEST($1::bigint[], $2::bytea[]) AS t(s, b)), \
              w AS (INSERT INTO inferno.side_writes (seq, ord, keyspace, key, value) \
                    SELECT * FROM UNNEST($4::bigint[], $5::int[], $6::text[], $7::bytea[], $8::bytea[])), \
              h AS (UPDATE inferno.log_head SET seq = $9, hash = $10 WHERE id = 1) \
         SELECT pg_notify($11, $9::text)",
    )
    .bind(&seqs)
    .bind(&stored)
    .bind(&node)
    .bind(&s)
    .bind(&ord)
    .bind(&ks)
    .bind(&key)
    .bind(&value)
    .bind(seq)
    .bind(&head.1)
    .bind(CHANNEL)
    .execute(&mut *tx)
    .await
    .map_err(|e| unavailable("appending", e))?;
    tx.commit().await.map_err(|e| unavailable("committing", e))
}

/// Listens for other nodes' commits and asks `nudge` to catch up on each (and every
/// [`BACKSTOP`], so a lost notification or a reconnect skips nothing). Runs on the log's
/// runtime until `stop` is cancelled.
pub(crate) fn tail(
    log: &Arc<SharedLog>,
    nudge: impl Fn(Option<u64>) + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(rt) = log.rt.as_ref() else { return };
    let pool = log.pool();
    rt.spawn(async move {
        let mut listener: Option<PgListener> = None;
        let (mut last_try, mut failing) = (None::<std::time::Instant>, false);
        let mut tick = tokio::time::interval(BACKSTOP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Reconnect at most once a second; say so once per outage, and when it ends.
            if listener.is_none() && last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_try = Some(std::time::Instant::now());
                let listening = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match listening.await {
                    Ok(l) => {
                        if failing {
                            tracing::info!("the shared log's listener is connected again");
                        }
                        failing = false;
                        listener = Some(l);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "the shared log's listener cannot connect; polling until it can");
                    }
                    Err(_) => {}
                }
            }
            enum Woke {
                Stop,
                Tick,
                Note(Result<Option<u64>, sqlx::Error>),
            }
            let woke = match listener.as_mut() {
                Some(l) => tokio::select! {
                    _ = stop.cancelled() => Woke::Stop,
                    _ = tick.tick() => Woke::Tick,
                    n = l.try_recv() => Woke::Note(n.map(|n| n.map(|n| n.payload().parse().unwrap_or(0)))),
                },
                None => tokio::select! {
                    _ = stop.cancelled() => Woke::Stop,
                    _ = tick.tick() => Woke::Tick,
                },
            };
            match woke {
                Woke::Stop => break,
                Woke::Tick => nudge(None),
                Woke::Note(Ok(Some(seq))) => nudge(Some(seq)),
                // The connection was lost and is back: anything may have been missed.
                Woke::Note(Ok(None)) => nudge(None),
                Woke::Note(Err(e)) => {
                    tracing::warn!(error = %e, "the shared log's listener failed; reconnecting");
                    failing = true;
                    listener = None;
                }
            }
        }
    });
}

/// What the tail calls: asks the writer to catch up, unless the notified seq is already
/// here or a request is already queued.
pub(super) fn nudger(
    writer: tokio::sync::mpsc::Sender<WriterMsg>,
    head: Arc<std::sync::RwLock<(u64, String)>>,
    nudged: Arc<AtomicBool>,
) -> impl Fn(Option<u64>) + Send + 'static {
    move |seen| {
        if let Some(seq) = seen {
            if head.read().map(|h| h.0 >= seq).unwrap_or(false) {
                return;
            }
        }
        if nudged.swap(true, Ordering::AcqRel) {
            return;
        }
        if writer.try_send(WriterMsg::CatchUp(None)).is_err() {
            nudged.store(false, Ordering::Release);
        }
    }
}

impl EventStore {
    /// Cluster mode: the node's id (`[cluster] node_id`); `None` on one machine.
    pub fn node_id(&self) -> Option<&str> {
        self.inner.shared.as_ref().map(|(log, _)| log.node())
    }

    /// A read barrier: returns once this node holds every event committed to the shared
    /// log before the call (at once on one machine). Call before a decision a missing
    /// record would change (a login, an unknown API key), so a write on another node is
    /// never answered as absent here.
    pub async fn sync(&self) -> Result<(), EventError> {
        if self.inner.shared.is_none() {
            return Ok(());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::CatchUp(Some(reply)))
            .await
            .map_err(|_| EventError::Unavailable("event writer stopped".into()))?;
        rx.await
            .map_err(|_| EventError::Unavailable("event writer stopped".into()))?
            .map(|_| ())
    }
}
