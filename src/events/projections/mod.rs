//! Projections: read models folded from the log in the same atomic batch as the events.
//!
//! Each projection owns a few *logical* keyspaces (`users`, `api_keys`, ...). Physically
//! they are `g<generation>.<logical>`, so `inferno audit replay` can build a fresh
//! generation and swap it in atomically. Each projection's checkpoint (last folded seq)
//! is written in the same batch as its records, so a projection is never ahead of or
//! behind the log after a crash; one added later, or left behind, is caught up at open.
//!
//! The read helpers in the submodules (`users::get`, `api_keys::list_for_user`, ...) are
//! what the rest of the server calls. One file per read model: `users.rs`, `api_keys.rs`,
//! `revoked_tokens.rs`, `models.rs`, `config.rs`, `jobs.rs`.

pub mod api_keys;
pub mod config;
pub mod jobs;
pub mod models;
pub mod revoked_tokens;
pub mod users;

use super::envelope::Envelope;
use super::error::EventError;
use super::store::EventStore;
use super::types::Event;
use fjall::Keyspace;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A fold over the log into keyspaces it owns.
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the checkpoint key.
    fn name(&self) -> &'static str;
    /// Logical keyspaces this projection writes (and alone writes).
    fn keyspaces(&self) -> &'static [&'static str];
    /// Folds one event. Must be deterministic in (`env`, `event`, current records):
    /// replay relies on it. Use `env.ts` for times, never the clock.
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError>;
    /// Whether [`Projection::apply`] reads `env.payload` (the typed `event` carries the
    /// same data). When no projection of a replay or catch-up does, the log is folded
    /// without building each payload's `Value` and `env.payload` is `Null` there.
    fn reads_payload(&self) -> bool {
        true
    }
}

/// Key/value pairs of a prefix scan, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Staged writes per logical keyspace (`None` = delete).
pub(crate) type Staged = HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// Staged projection writes of one commit group. Reads see this request's writes, then
/// earlier requests' writes in the same group, then the writes of the group still being
/// committed (`in_flight`: the writer builds the next group while the last one syncs),
/// then the keyspace.
pub struct ProjectionTx<'a> {
    keyspaces: &'a HashMap<String, Keyspace>,
    owner: &'static [&'static str],
    owner_name: &'static str,
    group: Staged,
    pending: Staged,
    in_flight: Option<&'a Staged>,
}

impl<'a> ProjectionTx<'a> {
    pub(crate) fn new(keyspaces: &'a HashMap<String, Keyspace>) -> Self {
        ProjectionTx {
            keyspaces,
            owner: &[],
            owner_name: "",
            group: Staged::new(),
            pending: Staged::new(),
            in_flight: None,
        }
    }

    /// Reads see `staged` (the writes of a group not yet committed) before the keyspace.
    pub(crate) fn over(mut self, staged: Option<&'a Staged>) -> Self {
        self.in_flight = staged;
        self
    }

    pub(crate) fn apply(
        &mut self,
        p: &dyn Projection,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        self.owner = p.keyspaces();
        self.owner_name = p.name();
        p.apply(self, env, event)
    }

    /// Keeps the current request's writes for the group.
    pub(crate) fn commit_request(&mut self) {
        for (ks, mut writes) in self.pending.drain() {
            let group = self.group.entry(ks).or_default();
            if group.is_empty() {
                std::mem::swap(group, &mut writes);
            } else {
                // Not `append`: it rebuilds the whole map, and groups grow large in replay.
                group.extend(writes);
            }
        }
    }

    /// Forgets the current request's writes (its append was refused).
    pub(crate) fn rollback_request(&mut self) {
        self.pending.clear();
    }

    /// Copies the group's writes into `batch` and hands them back (the next group reads
    /// them while this one commits; the cache is invalidated by their keys).
    pub(crate) fn drain_into(&mut self, batch: &mut fjall::OwnedWriteBatch) -> Staged {
        let group = std::mem::take(&mut self.group);
        for (name, writes) in &group {
            // Keyspace names were checked when staged.
            let Some(ks) = self.keyspaces.get(*name) else {
                continue;
            };
            for (key, value) in writes {
                match value {
                    Some(v) => batch.insert(ks, key.as_slice(), v.as_slice()),
                    None => batch.remove(ks, key.as_slice()),
                }
            }
        }
        group
    }

    /// The owning projection's name for `ks` and its open keyspace.
    fn keyspace(&self, ks: &str) -> Result<(&'static str, &'a Keyspace), EventError> {
        let Some(name) = self.owner.iter().copied().find(|o| *o == ks) else {
            return Err(EventError::Invalid(format!(
                "projection {} does not own keyspace {ks:?}",
                self.owner_name
            )));
        };
        let keyspace = self
            .keyspaces
            .get(ks)
            .ok_or_else(|| EventError::Invalid(format!("keyspace {ks:?} is not open")))?;
        Ok((name, keyspace))
    }

    fn staged(&self, ks: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        fn layer<'s>(l: &'s Staged, ks: &str, key: &[u8]) -> Option<&'s Option<Vec<u8>>> {
            l.get(ks).and_then(|m| m.get(key))
        }
        layer(&self.pending, ks, key)
            .or_else(|| layer(&self.group, ks, key))
            .or_else(|| self.in_flight.and_then(|l| layer(l, ks, key)))
    }

    pub fn get(&self, ks: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EventError> {
        let (_, keyspace) = self.keyspace(ks)?;
        if let Some(v) = self.staged(ks, key) {
            return Ok(v.clone());
        }
        if key.len() > crate::events::store::MAX_KEY_BYTES {
            return Ok(None);
        }
        Ok(keyspace.get(key)?.map(|v| v.to_vec()))
    }

    pub fn put(
        &mut self,
        ks: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), EventError> {
        let (name, _) = self.keyspace(ks)?;
        self.pending
            .entry(name)
            .or_default()
            .insert(key.into(), Some(value.into()));
        Ok(())
    }

    pub fn delete(&mut self, ks: &str, key: impl Into<Vec<u8>>) -> Result<(), EventError> {
        let (name, _) = self.keyspace(ks)?;
        self.pending
            .entry(name)
            .or_default()
            .insert(key.into(), None);
        Ok(())
    }

    /// Records whose key starts with `prefix`, staged writes included, in key order.
    pub fn scan_prefix(&self, ks: &str, prefix: &[u8]) -> Result<KvPairs, EventError> {
        use std::ops::Bound;
        let (_, keyspace) = self.keyspace(ks)?;
        let mut out = BTreeMap::new();
        for g in keyspace.prefix(prefix) {
            let (k, v) = g.into_inner()?;
            out.insert(k.to_vec(), Some(v.to_vec()));
        }
        let layers = self
            .in_flight
            .into_iter()
            .chain([&self.group, &self.pending]);
        for layer in layers {
            let Some(writes) = layer.get(ks) else {
                continue;
            };
            let range = (Bound::Included(prefix), Bound::Unbounded);
            for (k, v) in writes.range::<[u8], _>(range) {
                if !k.starts_with(prefix) {
                    break;
                }
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    pub fn get_json<T: DeserializeOwned>(
        &self,
        ks: &str,
        key: &[u8],
    ) -> Result<Option<T>, EventError> {
        match self.get(ks, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| EventError::decode(format!("{ks} record"), e)),
        }
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        ks: &str,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Result<(), EventError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| EventError::decode(format!("{ks} record"), e))?;
        self.put(ks, key, bytes)
    }
}

/// Every projection the server runs.
pub fn default_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(users::UsersProjection),
        Arc::new(api_keys::ApiKeysProjection),
        Arc::new(api_keys::ApiKeysLiveProjection),
        Arc::new(revoked_tokens::RevokedTokensProjection),
        Arc::new(models::ModelsProjection),
        Arc::new(config::ConfigProjection),
        Arc::new(jobs::JobsProjection),
    ]
}

/// One record, decoded, through the store's [`RecordCache`](super::cache::RecordCache).
fn read_json<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    store: &EventStore,
    ks: &str,
    key: &[u8],
) -> Result<Option<T>, EventError> {
    let cache = store.record_cache();
    if let Some(hit) = cache.get::<T>(ks, key) {
        return Ok(hit);
    }
    let generation = cache.generation();
    let record: Option<T> = match store.projection_get(ks, key)? {
        None => None,
        Some(v) => Some(
            serde_json::from_slice(&v)
                .map_err(|e| EventError::decode(format!("{ks} record"), e))?,
        ),
    };
    cache.insert(ks, key, record.clone(), generation);
    Ok(record)
}

fn scan_json<T: DeserializeOwned>(
    store: &EventStore,
    ks: &str,
    prefix: &[u8],
) -> Result<Vec<T>, EventError> {
    store
        .projection_scan(ks, prefix)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v).map_err(|e| EventError::decode(format!("{ks} record"), e))
        })
        .collect()
}
