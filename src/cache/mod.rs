//! The response cache: answers of deterministic requests (temperature 0, or an explicit
//! `seed`), kept in the data dir (side keyspace `side.response_cache`) so they survive
//! restarts, bounded by `[cache] max_bytes` with least-recently-used eviction.
//!
//! The key is the SHA-256 of the model file's digest, the prompt as the job stores it (text,
//! or the chat messages the model's template renders: the template is part of the file, so
//! the digest covers it) and every sampling field. A hit answers without running the model;
//! the job still records its events. The prompt-prefix KV cache lives in the model threads
//! (`inference/llama/prefix.rs`); `GET /api/v1/cache` shows both.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::{EventError, EventStore};
use crate::inference::{FinishReason, SamplingParams};
use crate::metrics;
use crate::queue::StoredPrompt;

/// Side keyspace of the cached answers (`side.response_cache`), keyed by the hex key.
const KEYSPACE: &str = "response_cache";
/// Entries read per page when the index is rebuilt at start-up.
const SCAN_PAGE: usize = 1024;

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub model: String,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub stored_at: DateTime<Utc>,
}

/// A cache entry as `GET /api/v1/cache/responses` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryInfo {
    pub key: String,
    pub model: String,
    pub bytes: u64,
    pub stored_at: DateTime<Utc>,
}

/// The figures of `GET /api/v1/cache`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ResponseCacheStats {
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Default)]
struct Index {
    /// key → (stored bytes, last use)
    entries: HashMap<String, (u64, u64)>,
    /// last use → key: the least recently used first.
    lru: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
}

impl Index {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, used)) = self.entries.get_mut(key) {
            self.lru.remove(used);
            *used = tick;
            self.lru.insert(tick, key.to_string());
        }
    }

    fn insert(&mut self, key: String, bytes: u64) {
        self.remove(&key);
        self.tick += 1;
        self.bytes += bytes;
        self.lru.insert(self.tick, key.clone());
        self.entries.insert(key, (bytes, self.tick));
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some((bytes, used)) => {
                self.lru.remove(&used);
                self.bytes -= bytes;
                true
            }
            None => false,
        }
    }

    /// Keys to evict so that `bytes` fit in `max`, least recently used first.
    fn over(&mut self, max: u64) -> Vec<String> {
        let mut out = Vec::new();
        while self.bytes > max {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some((bytes, _)) = self.entries.remove(&key) {
                self.bytes -= bytes;
            }
            out.push(key);
        }
        out
    }
}

/// The response cache; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ResponseCache {
    store: EventStore,
    enabled: AtomicBool,
    max_bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    index: Mutex<Index>,
}

/// Whether sampling is reproducible, so that an answer can be served again.
pub fn deterministic(params: &SamplingParams) -> bool {
    params.temperature == 0.0 || params.seed.is_some()
}

/// The cache key: hex SHA-256 over the model digest, the prompt and every sampling field.
pub fn key(model_sha256: &str, prompt: &StoredPrompt, params: &SamplingParams) -> String {
    let material = serde_json::json!({
        "model_sha256": model_sha256,
        "prompt": prompt,
        "params": params,
    });
    let bytes = serde_json::to_vec(&material).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl ResponseCache {
    /// Opens the cache over `store`'s side keyspace and rebuilds its index (oldest entries
    /// count as least recently used).
    pub fn open(store: EventStore, enabled: bool, max_bytes: u64) -> Result<Self, EventError> {
        let mut found: Vec<(DateTime<Utc>, String, u64)> = Vec::new();
        let mut from = Vec::new();
        loop {
            let page = store.side_scan(KEYSPACE, b"", &from, SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            let full = page.len() == SCAN_PAGE;
            for (k, v) in page {
                let key = String::from_utf8_lossy(&k).into_owned();
                match serde_json::from_slice::<CachedAnswer>(&v) {
                    Ok(a) => found.push((a.stored_at, key, v.len() as u64)),
                    Err(_) => store.side_delete(KEYSPACE, &k)?,
                }
            }
            if !full {
                break;
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, key, bytes) in found {
            index.insert(key, bytes);
        }
        let cache = Self {
            store,
            enabled: AtomicBool::new(enabled),
            max_bytes: AtomicU64::new(max_bytes),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            index: Mutex::new(index),
        };
        cache.evict()?;
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// `[cache] responses` and `[cache] max_bytes`, live; a lower bound evicts at once.
    pub fn set_limits(&self, enabled: bool, max_bytes: u64) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        if let Err(e) = self.evict() {
            tracing::warn!(error = %e, "evicting from the response cache failed");
        }
    }

    /// The cached answer under `key`, counted as a hit or a miss.
    pub fn get(&self, key: &str) -> Option<CachedAnswer> {
        let found = self
            .store
            .side_get(KEYSPACE, key.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice::<CachedAnswer>(&v).ok());
        match &found {
            Some(_) => {
                self.lock().touch(key);
                self.hits.fetch_add(1, Ordering::Relaxed);
                metrics::response_cache(true);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                metrics::response_cache(false);
            }
        }
        found
    }

    /// Stores an answer (durable with the job's next event), evicting the least recently
    /// used entries beyond `max_bytes`. An answer larger than the whole bound is not kept.
    pub fn put(&self, key: &str, answer: &CachedAnswer) -> Result<(), EventError> {
        let value = serde_json::to_vec(answer).map_err(|e| EventError::Invalid(e.to_string()))?;
        if value.len() as u64 > self.max_bytes.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.store
            .side_put_buffered(KEYSPACE, key.as_bytes(), &value)?;
        self.lock().insert(key.to_string(), value.len() as u64);
        self.evict()
    }

    fn evict(&self) -> Result<(), EventError> {
        let max = self.max_bytes.load(Ordering::Relaxed);
        let gone = self.lock().over(max);
        for key in gone {
            self.store.side_delete(KEYSPACE, key.as_bytes())?;
        }
        Ok(())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// Removes one entry; false when there was none.
    pub fn remove(&self, key: &str) -> Result<bool, EventError> {
        if !self.lock().remove(key) {
            return Ok(false);
        }
        self.store.side_delete(KEYSPACE, key.as_bytes())?;
        Ok(true)
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> Result<u64, EventError> {
        let n = {
            let mut index = self.lock();
            let n = index.entries.len() as u64;
            *index = Index {
                tick: index.tick,
                ..Index::default()
            };
            n
        };
        self.store.side_delete_prefix(KEYSPACE, b"")?;
        Ok(n)
    }

    /// Entries in key order after `cursor` (exclusive), at most `limit`.
    pub fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<EntryInfo>, EventError> {
        let mut from = cursor.map(|c| c.as_bytes().to_vec()).unwrap_or_default();
        if cursor.is_some() {
            from.push(0);
        }
        let page = self.store.side_scan(KEYSPACE, b"", &from, limit)?;
        Ok(page
            .into_iter()
            .filter_map(|(k, v)| {
                let a: CachedAnswer = serde_json::from_slice(&v).ok()?;
                Some(EntryInfo {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    model: a.model,
                    bytes: v.len() as u64,
                    stored_at: a.stored_at,
                })
            })
            .collect())
    }

    pub fn stats(&self) -> ResponseCacheStats {
        let index = self.lock();
        ResponseCacheStats {
            enabled: self.enabled(),
            entries: index.entries.len() as u64,
            bytes: index.bytes,
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_evicts_the_least_recently_used_first() {
        let mut index = Index::default();
        index.insert("a".into(), 10);
        index.insert("b".into(), 10);
        index.insert("c".into(), 10);
        index.touch("a");
        assert_eq!(index.over(20), vec!["b".to_string()]);
        assert_eq!(index.bytes, 20);
        index.insert("d".into(), 15);
        assert_eq!(index.over(20), vec!["c".to_string(), "a".to_string()]);
        assert!(index.entries.contains_key("d"));
        assert!(index.remove("d"));
        assert_eq!(index.bytes, 0);
    }

    #[test]
    fn keys_differ_by_model_prompt_and_every_sampling_field() {
        let p = StoredPrompt::Text("hello".into());
        let base = SamplingParams::default();
        let k = key("m1", &p, &base);
        assert_eq!(k, key("m1", &p, &base));
        assert_ne!(k, key("m2", &p, &base));
        assert_ne!(k, key("m1", &StoredPrompt::Text("hello!".into()), &base));
        let changed = [
            SamplingParams {
                max_tokens: 7,
                ..base.clone()
            },
            SamplingParams {
                top_k: Some(3),
                ..base.clone()
            },
            SamplingParams {
                seed: Some(1),
                ..base.clone()
            },
            SamplingParams {
                stop: vec!["x".into()],
                ..base.clone()
            },
        ];
        for c in changed {
            assert_ne!(k, key("m1", &p, &c), "{c:?}");
        }
    }

    #[test]
    fn only_greedy_or_seeded_sampling_is_cached() {
        let greedy = SamplingParams::default();
        assert!(deterministic(&greedy));
        let random = SamplingParams {
            temperature: 0.8,
            ..greedy.clone()
        };
        assert!(!deterministic(&random));
        assert!(deterministic(&SamplingParams {
            seed: Some(42),
            ..random
        }));
    }
}
