//! Side keyspaces (`side.<name>`): values kept beside the log but outside it (an email
//! address, a last-used time, a job's request, result and streamed tokens). Not
//! event-sourced: replay does not rebuild them and verify does not cover them.

use fjall::PersistMode;

use super::error::EventError;
use super::store::{to_unavailable, EventStore, MAX_KEY_BYTES};

impl EventStore {
    /// Durably stores a value (fsynced before it returns).
    pub fn side_put(&self, keyspace: &str, key: &[u8], value: &[u8]) -> Result<(), EventError> {
        self.writable()?;
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let mut b = h.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&ks, key, value);
        b.commit().map_err(to_unavailable)
    }

    /// Stores a value without waiting for the disk: it becomes durable with the next
    /// fsynced write (any append), since fjall has one journal for the whole database.
    pub fn side_put_buffered(
        &self,
        keyspace: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), EventError> {
        self.writable()?;
        let h = self.handles()?;
        h.side(keyspace)?.insert(key, value).map_err(to_unavailable)
    }

    pub fn side_get(&self, keyspace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EventError> {
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        if key.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        Ok(ks.get(key)?.map(|v| v.to_vec()))
    }

    /// Values whose key starts with `prefix`, from `from` (inclusive, itself starting with
    /// `prefix`) in key order, at most `limit` of them.
    pub fn side_scan(
        &self,
        keyspace: &str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<super::projections::KvPairs, EventError> {
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let mut out = Vec::new();
        if from.len() > MAX_KEY_BYTES || prefix.len() > MAX_KEY_BYTES {
            return Ok(out);
        }
        for g in ks.range(from.to_vec()..) {
            let (k, v) = g.into_inner()?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The last key starting with `prefix`.
    pub fn side_last(&self, keyspace: &str, prefix: &[u8]) -> Result<Option<Vec<u8>>, EventError> {
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        match ks.prefix(prefix).next_back() {
            Some(g) => Ok(Some(g.key()?.to_vec())),
            None => Ok(None),
        }
    }

    pub fn side_delete(&self, keyspace: &str, key: &[u8]) -> Result<(), EventError> {
        self.writable()?;
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let mut b = h.db.batch().durability(Some(PersistMode::SyncAll));
        b.remove(&ks, key);
        b.commit().map_err(to_unavailable)
    }

    /// Removes every value whose key starts with `prefix` (not fsynced); returns how many.
    pub fn side_delete_prefix(&self, keyspace: &str, prefix: &[u8]) -> Result<usize, EventError> {
        self.writable()?;
        let h = self.handles()?;
        let ks = h.side(keyspace)?;
        let keys = ks
            .prefix(prefix)
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut b = h.db.batch();
        for k in &keys {
            b.remove(&ks, k);
        }
        b.commit().map_err(to_unavailable)?;
        Ok(keys.len())
    }
}
