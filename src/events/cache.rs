//! A read-through cache of decoded projection records, so that the hot lookups of every
//! authenticated request (its API key, its user, a JWT's revocation) cost a hash lookup
//! instead of a storage read and a JSON decode.
//!
//! Correctness rests on one rule: the writer invalidates every key a commit wrote right
//! after the commit and before it answers the appender, and bumps a generation counter. A
//! reader remembers the generation before it reads storage and may only insert what it read
//! when no invalidation happened since, so a value read before a commit can never be cached
//! after it. Absent records are cached too (a JWT that is not revoked is the common case).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Entries kept at most; past it the cache starts over (lookups of random ids, e.g. bad API
/// keys, cannot grow it without bound).
const MAX_ENTRIES: usize = 65_536;

/// Longer keys are not cached: ids are short, and 65,536 cached megabyte-long keys of
/// hostile lookups would be tens of gigabytes.
const MAX_CACHED_KEY: usize = 512;

type Entry = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
struct Inner {
    generation: u64,
    len: usize,
    /// Logical keyspace → key → the decoded `Option<T>`.
    map: HashMap<String, HashMap<Vec<u8>, Entry>>,
}

#[derive(Default)]
pub(crate) struct RecordCache {
    inner: RwLock<Inner>,
}

impl RecordCache {
    /// The cached record, `Some(None)` for one known to be absent, `None` when not cached.
    pub(crate) fn get<T: Clone + Send + Sync + 'static>(
        &self,
        ks: &str,
        key: &[u8],
    ) -> Option<Option<T>> {
        let inner = self.inner.read().ok()?;
        let entry = inner.map.get(ks)?.get(key)?;
        entry.downcast_ref::<Option<T>>().cloned()
    }

    /// The generation to pass to [`RecordCache::insert`], taken before reading storage.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.read().map(|i| i.generation).unwrap_or(u64::MAX)
    }

    /// Caches what was read from storage, unless a commit invalidated anything since
    /// `generation` was taken.
    pub(crate) fn insert<T: Send + Sync + 'static>(
        &self,
        ks: &str,
        key: &[u8],
        value: Option<T>,
        generation: u64,
    ) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner.generation != generation || key.len() > MAX_CACHED_KEY {
            return;
        }
        if inner.len >= MAX_ENTRIES {
            inner.map.clear();
            inner.len = 0;
        }
        let previous = inner
            .map
            .entry(ks.to_string())
            .or_default()
            .insert(key.to_vec(), Arc::new(value));
        if previous.is_none() {
            inner.len += 1;
        }
    }

    /// Forgets the records a commit just wrote.
    pub(crate) fn invalidate<'a>(&self, written: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        inner.generation += 1;
        let mut removed = 0;
        for (ks, key) in written {
            if let Some(m) = inner.map.get_mut(ks) {
                removed += usize::from(m.remove(key).is_some());
            }
        }
        inner.len -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_from_before_an_invalidation_is_never_cached() {
        let cache = RecordCache::default();
        let g = cache.generation();
        cache.insert("users", b"u1", Some(1u32), g);
        assert_eq!(cache.get::<u32>("users", b"u1"), Some(Some(1)));
        // A reader takes the generation, a commit invalidates, the reader inserts: refused.
        let stale = cache.generation();
        cache.invalidate([("users", &b"u1"[..])]);
        cache.insert("users", b"u1", Some(1u32), stale);
        assert_eq!(cache.get::<u32>("users", b"u1"), None);
        // Absent records are cached, and a later write invalidates them.
        let g = cache.generation();
        cache.insert::<u32>("users", b"u2", None, g);
        assert_eq!(cache.get::<u32>("users", b"u2"), Some(None));
        cache.invalidate([("users", &b"u2"[..])]);
        assert_eq!(cache.get::<u32>("users", b"u2"), None);
        // Long keys are read through, never kept.
        let g = cache.generation();
        cache.insert::<u32>("users", &[b'x'; MAX_CACHED_KEY + 1], None, g);
        assert_eq!(cache.get::<u32>("users", &[b'x'; MAX_CACHED_KEY + 1]), None);
        // A type mismatch is a miss, never a wrong value.
        let g = cache.generation();
        cache.insert("users", b"u3", Some(3u32), g);
        assert_eq!(cache.get::<String>("users", b"u3"), None);
    }
}
