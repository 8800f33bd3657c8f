//! `inferno audit verify-export`: checks an NDJSON export against a signed checkpoint with
//! nothing but the export, the checkpoint and the verifier key. Every line's hash and link
//! are recomputed (the chain rule in `events/envelope.rs`), every leaf and the root of the
//! checkpoint's size (RFC 6962), the checkpoint's signature, and on the way every
//! `audit.checkpoint` the export itself records (signature and root at its size).

use serde::Serialize;
use std::collections::BTreeMap;

use super::checkpoint::verify_checkpoint;
use crate::events::merkle::{leaf_hash, Hash, MemoryTree};
use crate::events::{AuditCheckpoint, Envelope, Event, RawEnvelope, GENESIS_HASH};

/// What a successful check covered.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub ok: bool,
    /// Lines (events) read.
    pub events: u64,
    /// The checkpoint's size and root (hex), which the export reproduces.
    pub tree_size: u64,
    pub root_hash: String,
    /// `audit.checkpoint` events of the export whose signature and root were checked.
    pub recorded_checkpoints: u64,
    /// Old events shown without a redacted field: their hash and leaf are taken from the
    /// line and checked as links only.
    pub redacted: u64,
}

/// Why an export does not verify; `seq` is the first bad event when one can be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "the export is bad at seq {seq}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

impl std::error::Error for ExportError {}

fn bad(seq: u64, reason: impl Into<String>) -> ExportError {
    ExportError {
        seq: Some(seq),
        reason: reason.into(),
    }
}

fn whole(reason: impl Into<String>) -> ExportError {
    ExportError {
        seq: None,
        reason: reason.into(),
    }
}

/// One line's seq, hash, prev_hash and leaf.
struct Line {
    seq: u64,
    prev_hash: [u8; 64],
    hash: [u8; 64],
    leaf: Hash,
    redacted: bool,
    /// An `audit.checkpoint` line (its note is checked against the root at its size).
    checkpoint: bool,
}

fn hex64(s: &str) -> Option<[u8; 64]> {
    let b: [u8; 64] = s.as_bytes().try_into().ok()?;
    b.iter()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(b)
}

/// Reads one export line: the stored form, recomputed; or a redacted line, taken as shown.
fn read_line(bytes: &[u8], expected: u64, buf: &mut Vec<u8>) -> Result<Line, ExportError> {
    if let Some(raw) = RawEnvelope::parse(bytes) {
        let hash = raw.hash(buf);
        // `hash` left the canonical bytes in `buf`.
        let leaf = leaf_hash(buf);
        if raw.hash != &hash[..] {
            return Err(bad(
                raw.seq,
                "hash mismatch: the event's hash is not SHA-256(prev_hash || canonical bytes)",
            ));
        }
        return Ok(Line {
            seq: raw.seq,
            prev_hash: raw
                .prev_hash
                .try_into()
                .map_err(|_| bad(raw.seq, "bad prev_hash"))?,
            hash,
            leaf,
            redacted: false,
            checkpoint: raw.type_str() == Some("audit.checkpoint"),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(expected, format!("line is not JSON ({e})")))?;
    let seq = v["seq"]
        .as_u64()
        .ok_or_else(|| bad(expected, "line has no integer seq"))?;
    if v.get("redacted").is_none() {
        return Err(bad(
            seq,
            "not in canonical form: the bytes are not what the server stores and hashes",
        ));
    }
    let field = |name: &str| {
        v[name]
            .as_str()
            .and_then(hex64)
            .ok_or_else(|| bad(seq, format!("redacted line without a valid {name}")))
    };
    let leaf: [u8; 32] = hex::decode(field("leaf_hash")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(seq, "bad leaf_hash"))?;
    Ok(Line {
        seq,
        prev_hash: field("prev_hash")?,
        hash: field("hash")?,
        leaf: Hash(leaf),
        redacted: true,
        checkpoint: false,
    })
}

/// The checkpoints these lines record, by the size they cover.
fn recorded(lines: &[&[u8]]) -> BTreeMap<u64, Vec<AuditCheckpoint>> {
    let mut out: BTreeMap<u64, Vec<AuditCheckpoint>> = BTreeMap::new();
    for line in lines {
        if let Ok(Event::AuditCheckpoint(cp)) =
            Envelope::from_stored_bytes(0, line).and_then(|e| e.event())
        {
            out.entry(cp.tree_size).or_default().push(cp);
        }
    }
    out
}

/// What one thread found in its run of lines: their leaves, the run's first `prev_hash`
/// and last `hash` (linked to the neighbours afterwards), and its first error.
struct Chunk<'a> {
    leaves: Vec<Hash>,
    first_prev: Option<[u8; 64]>,
    last_hash: Option<[u8; 64]>,
    error: Option<ExportError>,
    redacted: u64,
    checkpoints: Vec<&'a [u8]>,
}

/// Checks lines `first_seq..` in order: each line's hash, its seq, and its link to the line
/// before it within the run.
fn check_run<'a>(lines: &[&'a [u8]], first_seq: u64) -> Chunk<'a> {
    let mut c = Chunk {
        leaves: Vec::with_capacity(lines.len()),
        first_prev: None,
        last_hash: None,
        error: None,
        redacted: 0,
        checkpoints: Vec::new(),
    };
    let mut buf = Vec::with_capacity(1024);
    for (i, bytes) in lines.iter().enumerate() {
        let expected = first_seq + i as u64;
        let line = match read_line(bytes, expected, &mut buf) {
            Ok(l) => l,
            Err(e) => {
                c.error = Some(e);
                return c;
            }
        };
        if line.seq != expected {
            let reason = if line.seq < expected {
                format!("found seq {} where {expected} belongs (an event repeated, reordered or inserted)", line.seq)
            } else {
                format!(
                    "event {expected} is missing (the next line is seq {})",
                    line.seq
                )
            };
            c.error = Some(bad(expected, reason));
            return c;
        }
        match c.last_hash {
            None => c.first_prev = Some(line.prev_hash),
            Some(prev) if prev != line.prev_hash => {
                c.error = Some(bad(
                    expected,
                    "broken link: its prev_hash is not the previous event's hash",
                ));
                return c;
            }
            Some(_) => {}
        }
        c.last_hash = Some(line.hash);
        c.redacted += u64::from(line.redacted);
        if line.checkpoint {
            c.checkpoints.push(bytes);
        }
        c.leaves.push(line.leaf);
    }
    c
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// Checks `data` (NDJSON, from seq 1) against the signed checkpoint `note` and the
/// verifier key. `progress` is called with the events read so far.
pub fn verify_export(
    data: &[u8],
    note: &str,
    verifier_key: &str,
    mut progress: impl FnMut(u64),
) -> Result<ExportReport, ExportError> {
    let cp = verify_checkpoint(note, verifier_key).map_err(whole)?;
    // Hashes are recomputed on every core (each line carries its own prev_hash); the runs
    // are then linked and the tree built in one pass.
    let all: Vec<&[u8]> = lines(data).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let size = all.len().div_ceil(workers).max(1);
    let chunks: Vec<Chunk<'_>> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(size)
            .enumerate()
            .map(|(c, run)| s.spawn(move || check_run(run, (c * size) as u64 + 1)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    if chunks.len() != all.len().div_ceil(size) {
        return Err(whole("a verification thread failed"));
    }
    let mut prev: [u8; 64] = GENESIS_HASH.as_bytes().try_into().unwrap_or([b'0'; 64]);
    let mut redacted = 0;
    let mut recorded_lines = Vec::new();
    for (c, chunk) in chunks.iter().enumerate() {
        if chunk.first_prev.is_some_and(|p| p != prev) {
            return Err(bad(
                (c * size) as u64 + 1,
                "broken link: its prev_hash is not the previous event's hash",
            ));
        }
        if let Some(e) = &chunk.error {
            return Err(e.clone());
        }
        prev = chunk.last_hash.unwrap_or(prev);
        redacted += chunk.redacted;
        recorded_lines.extend_from_slice(&chunk.checkpoints);
    }
    let mut wanted = recorded(&recorded_lines);
    wanted.entry(cp.size).or_default();
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    if wanted.contains_key(&0) {
        roots.insert(0, tlog_tiles::EMPTY_HASH);
    }
    let mut tree = MemoryTree::default();
    for leaf in chunks.iter().flat_map(|c| c.leaves.iter()) {
        tree.push(*leaf);
        if wanted.contains_key(&tree.size()) {
            roots.insert(tree.size(), tree.root());
        }
        if tree.size().is_multiple_of(65_536) {
            progress(tree.size());
        }
    }
    progress(tree.size());

    let mut recorded = 0;
    for (size, cps) in &wanted {
        for c in cps {
            let at = format!("the checkpoint of size {size} recorded in the export");
            let checked = verify_checkpoint(&c.note, verifier_key)
                .map_err(|e| whole(format!("{at}: {e}")))?;
            let root = roots
                .get(size)
                .ok_or_else(|| whole(format!("{at} is beyond it")))?;
            if checked.size != *size || checked.root != *root || c.root_hash != hex::encode(root.0)
            {
                return Err(whole(format!(
                    "{at} does not match the root the export's first {size} events give"
                )));
            }
            recorded += 1;
        }
    }
    let root = roots.get(&cp.size).ok_or_else(|| {
        whole(format!(
            "the export has {} events; the checkpoint covers {}",
            tree.size(),
            cp.size
        ))
    })?;
    if *root != cp.root {
        return Err(whole(format!(
            "the root of the export's first {} events is not the checkpoint's: the export \
             differs from what was signed (an event was changed and the chain recomputed)",
            cp.size
        )));
    }
    Ok(ExportReport {
        ok: true,
        events: tree.size(),
        tree_size: cp.size,
        root_hash: hex::encode(cp.root.0),
        recorded_checkpoints: recorded,
        redacted,
    })
}
