//! Roots and proofs of the stored Merkle tree (`merkle.rs`), and building the tree over a
//! log written before it existed.

use super::error::EventError;
use super::merkle::{leaf_hash, Hash, Tree, TreeEdge};
use super::raw::RawEnvelope;
use super::store::{key_seq, seq_key, EventStore, Handles};
use super::Envelope;

/// Leaves built per batch when the tree is caught up with an older log.
const BUILD_BATCH: u64 = 65_536;

/// An inclusion proof: event `seq`'s leaf hash and its audit path in the tree of
/// `tree_size` leaves, whose root is `root`.
#[derive(Debug, Clone, PartialEq)]
pub struct InclusionProof {
    pub seq: u64,
    pub tree_size: u64,
    pub leaf_hash: Hash,
    pub root: Hash,
    pub path: Vec<Hash>,
}

/// A consistency proof between the trees of `from` and `to` leaves, with both roots.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub from_root: Hash,
    pub to_root: Hash,
    pub path: Vec<Hash>,
}

impl EventStore {
    /// Leaves of the tree: one per committed event.
    pub fn tree_size(&self) -> u64 {
        self.head().0
    }

    fn with_tree<T>(
        &self,
        f: impl FnOnce(&Tree<'_>) -> Result<T, EventError>,
    ) -> Result<T, EventError> {
        let h = self.handles()?;
        let tree = Tree::new(&h.merkle, self.tree_size());
        f(&tree)
    }

    /// The root hash of the tree over the first `size` events.
    pub fn tree_root(&self, size: u64) -> Result<Hash, EventError> {
        self.with_tree(|t| t.root(size))
    }

    /// Proof that event `seq` is in the tree of `tree_size` leaves.
    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<InclusionProof, EventError> {
        if seq == 0 {
            return Err(EventError::Invalid("seq starts at 1".into()));
        }
        self.with_tree(|t| {
            Ok(InclusionProof {
                seq,
                tree_size,
                path: t.inclusion(seq - 1, tree_size)?,
                leaf_hash: t.leaf(seq - 1)?,
                root: t.root(tree_size)?,
            })
        })
    }

    /// Proof that the tree of `to` leaves extends the tree of `from` leaves.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<ConsistencyProof, EventError> {
        self.with_tree(|t| {
            Ok(ConsistencyProof {
                from,
                to,
                path: t.consistency(from, to)?,
                from_root: t.root(from)?,
                to_root: t.root(to)?,
            })
        })
    }
}

/// Loads the stored tree and adds the leaves of every event it does not cover yet (a log
/// from before the tree, or appended by a store opened without it), in batches.
pub(crate) fn catch_up_tree(h: &Handles, head_seq: u64) -> Result<TreeEdge, EventError> {
    let mut edge = TreeEdge::load(&h.merkle)?;
    if edge.size() > head_seq {
        return Err(EventError::Corrupt(format!(
            "the Merkle tree has {} leaves but the log only {head_seq} events",
            edge.size()
        )));
    }
    if edge.size() == head_seq {
        return Ok(edge);
    }
    let from = edge.size() + 1;
    tracing::info!(from, to = head_seq, "building the Merkle tree over the log");
    let mut buf = Vec::with_capacity(1024);
    let flush = |edge: &mut TreeEdge| -> Result<(), EventError> {
        let mut batch = h.db.batch();
        for (key, tile) in edge.take_writes() {
            match tile {
                Some(t) => batch.insert(&h.merkle, key, t),
                None => batch.remove(&h.merkle, key),
            }
        }
        Ok(batch.commit()?)
    };
    for g in h.events.range(seq_key(from)..=seq_key(head_seq)) {
        let (k, v) = g.into_inner()?;
        let seq = key_seq(&k)?;
        if seq != edge.size() + 1 {
            return Err(EventError::Corrupt(format!(
                "event {} is missing from the log",
                edge.size() + 1
            )));
        }
        match RawEnvelope::parse(&v) {
            Some(raw) => raw.write_canonical(&mut buf),
            // Not in canonical form (verification reports it): its canonical encoding.
            None => buf = Envelope::from_stored_bytes(seq, &v)?.canonical_bytes(),
        }
        edge.push(leaf_hash(&buf));
        if edge.size().is_multiple_of(BUILD_BATCH) {
            flush(&mut edge)?;
        }
    }
    flush(&mut edge)?;
    tracing::info!(leaves = edge.size(), "Merkle tree built");
    Ok(edge)
}
