//! Model files on disk: every `*.gguf` in the models directory, described by its GGUF
//! metadata and its sha256.
//!
//! Hashing a multi-GiB file takes seconds, so digests are cached in a JSON file keyed by
//! (path, size, mtime): a file is hashed again only when it changed.
//!
//! All functions here do blocking I/O: call them from `spawn_blocking` in async code.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gguf::{read_metadata, GgufMetadata};
use super::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The file stem: `models/gemma-3-270m-q4_k_m.gguf` → `gemma-3-270m-q4_k_m`.
    pub id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub modified: SystemTime,
    pub metadata: GgufMetadata,
    /// Lowercase hex.
    pub sha256: String,
}

/// All `*.gguf` files directly in `dir`, sorted by id. Files that are not valid GGUF are
/// skipped with a warning rather than failing the whole scan.
pub fn scan_dir(dir: &Path, hash_cache: &Path) -> Result<Vec<ModelFile>, EngineError> {
    let entries =
        fs::read_dir(dir).map_err(|e| io_error(&format!("read dir {}", dir.display()), e))?;
    let mut cache = HashCache::load(hash_cache);
    let mut models = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| io_error(&format!("read dir {}", dir.display()), e))?
            .path();
        if !path.is_file() || path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            continue;
        }
        match inspect(&path, &mut cache) {
            Ok(model) => models.push(model),
            Err(EngineError::InvalidModel(why)) => {
                tracing::warn!(path = %path.display(), %why, "skipping invalid model file");
            }
            Err(e) => return Err(e),
        }
    }
    cache.save(hash_cache);
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// Describes a file whose sha256 is already known (computed while it was written, as for
/// uploads): reads only its header, neither hashing it nor touching the digest cache.
pub fn inspect_with_digest(path: &Path, sha256: String) -> Result<ModelFile, EngineError> {
    describe(path, |_, _| Ok(sha256))
}

/// Records `sha256` as the digest of `path` as the file is now (size and mtime), so the next
/// start-up does not read it again to hash it.
pub fn remember_digest(hash_cache: &Path, path: &Path, sha256: &str) -> Result<(), EngineError> {
    let (size, modified) = size_and_mtime(path)?;
    let mut cache = HashCache::load(hash_cache);
    cache.insert(path, size, modified, sha256.to_string());
    cache.save(hash_cache);
    Ok(())
}

fn inspect(path: &Path, cache: &mut HashCache) -> Result<ModelFile, EngineError> {
    describe(path, |size, modified| cache.digest(path, size, modified))
}

/// The file's description, with its digest from `digest(size, mtime)`.
fn describe(
    path: &Path,
    digest: impl FnOnce(u64, SystemTime) -> Result<String, EngineError>,
) -> Result<ModelFile, EngineError> {
    let (size_bytes, modified) = size_and_mtime(path)?;
    let metadata = read_metadata(path)?;
    let sha256 = digest(size_bytes, modified)?;
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ModelFile {
        id,
        path: path.to_path_buf(),
        size_bytes,
        modified,
        metadata,
        sha256,
    })
}

fn size_and_mtime(path: &Path) -> Result<(u64, SystemTime), EngineError> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => EngineError::ModelNotFound(path.display().to_string()),
        _ => io_error(&format!("stat {}", path.display()), e),
    })?;
    let modified = meta
        .modified()
        .map_err(|e| io_error(&format!("mtime of {}", path.display()), e))?;
    Ok((meta.len(), modified))
}

fn io_error(what: &str, e: io::Error) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

/// sha256 of a file, streamed through a 1 MiB buffer.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn mtime_ns(modified: SystemTime) -> u128 {
    modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedDigest {
    size: u64,
    /// Nanoseconds since the Unix epoch.
    mtime_ns: u128,
    sha256: String,
}

/// The on-disk digest cache: `{ "<absolute path>": {size, mtime_ns, sha256} }`.
#[derive(Debug, Default)]
struct HashCache {
    entries: BTreeMap<String, CachedDigest>,
    dirty: bool,
}

impl HashCache {
    /// A missing or unreadable cache is an empty one: it only costs re-hashing.
    fn load(path: &Path) -> Self {
        let entries = fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            entries,
            dirty: false,
        }
    }

    fn key(path: &Path) -> String {
        fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .to_string_lossy()
            .into_owned()
    }

    fn digest(
        &mut self,
        path: &Path,
        size: u64,
        modified: SystemTime,
    ) -> Result<String, EngineError> {
        if let Some(hit) = self.entries.get(&Self::key(path)) {
            if hit.size == size && hit.mtime_ns == mtime_ns(modified) {
                return Ok(hit.sha256.clone());
            }
        }
        let sha256 =
            sha256_file(path).map_err(|e| io_error(&format!("hash {}", path.display()), e))?;
        self.insert(path, size, modified, sha256.clone());
        Ok(sha256)
    }

    fn insert(&mut self, path: &Path, size: u64, modified: SystemTime, sha256: String) {
        let entry = CachedDigest {
            size,
            mtime_ns: mtime_ns(modified),
            sha256,
        };
        self.entries.insert(Self::key(path), entry);
        self.dirty = true;
    }

    /// Best effort, atomic (write then rename): a lost cache only costs re-hashing.
    fn save(&self, path: &Path) {
        if !self.dirty {
            return;
        }
        let result = (|| -> io::Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
            fs::write(&tmp, serde_json::to_vec_pretty(&self.entries)?)?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not save the hash cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_non_gguf_and_caches_digests() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/hashes.json");
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        fs::write(dir.path().join("broken.gguf"), b"not a model").unwrap();
        assert!(scan_dir(dir.path(), &cache).unwrap().is_empty());

        // A header-only GGUF (v3, no tensors, no keys) is a valid, if useless, model file.
        let mut tiny = b"GGUF".to_vec();
        tiny.extend_from_slice(&3u32.to_le_bytes());
        tiny.extend_from_slice(&0u64.to_le_bytes());
        tiny.extend_from_slice(&0u64.to_le_bytes());
        let path = dir.path().join("tiny.gguf");
        fs::write(&path, &tiny).unwrap();
        let models = scan_dir(dir.path(), &cache).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].id, "tiny");
        assert_eq!(models[0].size_bytes, 24);
        assert_eq!(models[0].sha256, sha256_file(&path).unwrap());
        assert!(cache.exists());

        // A cached digest is trusted while size and mtime are unchanged.
        let mut entries: BTreeMap<String, CachedDigest> =
            serde_json::from_slice(&fs::read(&cache).unwrap()).unwrap();
        for e in entries.values_mut() {
            e.sha256 = "cached".into();
        }
        fs::write(&cache, serde_json::to_vec(&entries).unwrap()).unwrap();
        let mut loaded = HashCache::load(&cache);
        assert_eq!(inspect(&path, &mut loaded).unwrap().sha256, "cached");

        assert!(matches!(
            inspect(&dir.path().join("missing.gguf"), &mut loaded),
            Err(EngineError::ModelNotFound(_))
        ));
    }
}
