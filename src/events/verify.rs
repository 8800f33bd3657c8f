//! Chain verification over the stored bytes themselves (see `raw.rs`): contiguous seqs,
//! `seq` fields, links and hashes, never re-encoding a parsed value.

use super::envelope::GENESIS_HASH;
use super::error::EventError;
use super::merkle::{leaf_hash, read_tile, Hash, MemoryTree, Tree, TreeEdge};
use super::raw::RawEnvelope;
use super::store::{key_seq, seq_key, Handles};

/// Result of a full chain verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked (up to and including the first bad one).
    pub events: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub first_bad_seq: Option<u64>,
    /// Why `first_bad_seq` failed: `missing`, `unreadable`, `not canonical` (the stored
    /// bytes are not in the layout and canonical form the writer produces, so they are
    /// not re-encoded to be hashed), `seq mismatch`, `broken link` (its `prev_hash` is not
    /// the previous event's `hash`) or `hash mismatch`.
    pub first_bad_reason: Option<String>,
}

impl Handles {
    /// Verifies the chain from `from_seq` to the head. When `from_seq > 1` the first
    /// event's `prev_hash` is trusted (used for the start-up tail check). Large logs are
    /// checked in two halves on two threads; the link between the halves is checked too.
    /// With `tree` (and `from_seq == 1`) the Merkle tree is checked against the events'
    /// leaves too.
    pub(crate) fn verify_from(
        &self,
        from_seq: u64,
        tree: bool,
        mut progress: impl FnMut(u64),
    ) -> VerifyReport {
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
            first_bad_reason: None,
        };
        if head_seq < from_seq {
            return report;
        }
        let prev = (from_seq == 1).then(|| GENESIS_HASH.to_string());
        // A full verification also checks the Merkle tree against the events' leaves.
        let full = tree && from_seq == 1;
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        let (a, b) = if head_seq - from_seq < 50_000 {
            (
                self.verify_range(
                    from_seq,
                    head_seq,
                    prev,
                    &mut progress,
                    full.then_some(&mut la),
                ),
                None,
            )
        } else {
            let mid = from_seq + (head_seq - from_seq) / 2;
            std::thread::scope(|s| {
                let second = s.spawn(|| {
                    self.verify_range(
                        mid + 1,
                        head_seq,
                        None,
                        &mut |_| {},
                        full.then_some(&mut lb),
                    )
                });
                let first = self.verify_range(
                    from_seq,
                    mid,
                    prev,
                    &mut |n| progress(n * 2),
                    full.then_some(&mut la),
                );
                let second = second.join().unwrap_or(RangeCheck {
                    checked: 0,
                    first_bad: Some((mid + 1, "unreadable")),
                    first_prev: None,
                    last_hash: None,
                });
                (first, Some(second))
            })
        };
        report.events = a.checked;
        let mut first_bad = a.first_bad;
        if let (None, Some(b)) = (a.first_bad, b) {
            report.events += b.checked;
            let linked = a.last_hash.is_some() && a.last_hash == b.first_prev;
            first_bad = if linked {
                b.first_bad
            } else {
                Some((from_seq + a.checked, "broken link"))
            };
        }
        if full && first_bad.is_none() {
            la.append(&mut lb);
            first_bad = self.check_tree(&la);
        }
        report.first_bad_seq = first_bad.map(|(seq, _)| seq);
        report.first_bad_reason = first_bad.map(|(_, why)| why.to_string());
        progress(report.events);
        report.ok = report.first_bad_seq.is_none();
        report
    }

    /// Checks events `from..=to`: contiguous keys, `seq` fields, links (the first link only
    /// against `prev` when given) and hashes, each over the stored bytes themselves.
    fn verify_range(
        &self,
        from: u64,
        to: u64,
        prev: Option<String>,
        progress: &mut dyn FnMut(u64),
        mut leaves: Option<&mut Vec<Hash>>,
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
            let checked = (|| -> Result<Result<(), &'static str>, EventError> {
                let (k, v) = item.into_inner()?;
                if key_seq(&k)? != expected {
                    return Ok(Err("missing"));
                }
                // Never re-encoded: bytes that are not canonical are reported as such.
                let Some(raw) = RawEnvelope::parse(&v) else {
                    return Ok(Err("not canonical"));
                };
                if expected == from {
                    out.first_prev = Some(String::from_utf8_lossy(raw.prev_hash).into_owned());
                }
                let linked = prev.as_deref().is_none_or(|p| p == raw.prev_hash);
                let verdict = if raw.seq != expected {
                    Err("seq mismatch")
                } else if !linked {
                    Err("broken link")
                } else if !raw.hash_matches(&mut buf) {
                    Err("hash mismatch")
                } else {
                    // `hash_matches` left the canonical bytes in `buf`.
                    if let Some(l) = leaves.as_deref_mut() {
                        l.push(leaf_hash(&buf));
                    }
                    Ok(())
                };
                let p = prev.get_or_insert_with(Vec::new);
                p.clear();
                p.extend_from_slice(raw.hash);
                Ok(verdict)
            })()
            .unwrap_or(Err("unreadable"));
            out.checked += 1;
            if let Err(why) = checked {
                out.first_bad = Some((expected, why));
                return out;
            }
            expected += 1;
            if expected.is_multiple_of(65536) {
                progress(expected - from);
            }
        }
        if expected != to + 1 {
            out.first_bad = Some((expected, "missing")); // missing events at the end of the range
        }
        out.last_hash = prev.map(|p| String::from_utf8_lossy(&p).into_owned());
        out
    }
}

impl Handles {
    /// Compares the stored tree with the events' leaves (in seq order, from 1): every
    /// level-0 tile entry, then the root its upper levels give.
    ///
    /// A tree that covers fewer events (a log from before the tree, not opened by a server
    /// since) is checked as far as it goes; the server builds the rest at its next start.
    fn check_tree(&self, leaves: &[Hash]) -> Option<(u64, &'static str)> {
        let stored = match TreeEdge::load(&self.merkle) {
            Ok(edge) => edge.size(),
            Err(_) => return Some((1, "tree leaf mismatch")),
        };
        if stored > leaves.len() as u64 {
            return Some((leaves.len() as u64 + 1, "tree leaf mismatch"));
        }
        let leaves = &leaves[..stored as usize];
        for (i, chunk) in leaves.chunks(256).enumerate() {
            let first = i as u64 * 256 + 1;
            let Ok(tile) = read_tile(&self.merkle, 0, i as u64) else {
                return Some((first, "tree leaf mismatch"));
            };
            for (j, leaf) in chunk.iter().enumerate() {
                if tile.get(j * 32..(j + 1) * 32) != Some(&leaf.0[..]) {
                    return Some((first + j as u64, "tree leaf mismatch"));
                }
            }
        }
        let n = leaves.len() as u64;
        let mut tree = MemoryTree::default();
        leaves.iter().for_each(|l| tree.push(*l));
        match Tree::new(&self.merkle, n).root(n) {
            Ok(root) if root == tree.root() => None,
            _ => Some((n, "tree root mismatch")),
        }
    }
}

struct RangeCheck {
    checked: u64,
    /// The first bad seq and why.
    first_bad: Option<(u64, &'static str)>,
    /// `prev_hash` of the first event of the range.
    first_prev: Option<String>,
    last_hash: Option<String>,
}
