//! The Merkle tree over the log (RFC 6962 / RFC 9162), beside the hash chain.
//!
//! Leaf `i` is event `seq = i + 1`; its hash is `SHA-256(0x00 || canonical_bytes)`, where
//! `canonical_bytes` are exactly the bytes the chain hashes (`envelope.rs`), and an interior
//! node is `SHA-256(0x01 || left || right)`. The algorithms (stored-hash indexes, tree
//! hashes, inclusion and consistency proofs and their checks) are `tlog_tiles`'s, a port of
//! Go's `golang.org/x/mod/sumdb/tlog`.
//!
//! Storage is C2SP `tlog-tiles` style, in the keyspace `merkle`: a tile of height 8 at
//! level `L`, index `N` holds the (up to 256) hashes at tree level `8L` starting at
//! `N * 256`; the levels in between are recomputed from them. The writer keeps the last,
//! partial tile of each level in memory ([`TreeEdge`]) and writes the tiles a group
//! changed in the group's own batch, so the tree always has exactly as many leaves as the
//! log has events, and start-up reads one tile per level.

use std::cell::RefCell;
use std::collections::HashMap;

use fjall::Keyspace;
pub use tlog_tiles::Hash;
use tlog_tiles::{HashReader, Tile, HASH_SIZE};

use super::error::EventError;

/// Tile height: 256 hashes (8 KiB) per tile.
pub const TILE_HEIGHT: u8 = 8;
const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Keyspace of the tiles.
pub(crate) const KS_MERKLE: &str = "merkle";

/// `SHA-256(0x00 || canonical_bytes)`.
pub fn leaf_hash(canonical: &[u8]) -> Hash {
    tlog_tiles::record_hash(canonical)
}

pub(crate) fn tile_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The entry of leaf `index` while its level-0 tile is partial.
pub(crate) fn leaf_key(index: u64) -> [u8; 9] {
    tile_key(LEAF_ENTRY, index)
}

/// Key prefix of leaf entries (never a tile level: a tree has at most 8 tile levels).
const LEAF_ENTRY: u8 = 0xff;

fn tree_error(e: impl std::fmt::Display) -> EventError {
    EventError::Corrupt(format!("merkle tree: {e}"))
}

/// The right edge of the tree: the partial last tile of every level, and the tiles a group
/// of appends has changed since they were last written.
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeEdge {
    size: u64,
    /// `rows[l]`: the hashes of level `8l` in the last tile of that level (fewer than 256).
    rows: Vec<Vec<u8>>,
    /// Tiles that became complete since the last [`TreeEdge::take_writes`].
    completed: Vec<(u8, u64, Vec<u8>)>,
    /// Lowest size since the last [`TreeEdge::take_writes`]: the partial tiles of every
    /// level above it changed.
    written_size: u64,
}

impl TreeEdge {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Adds the next leaf.
    pub(crate) fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut hash = leaf;
        let mut level = 0usize;
        loop {
            if self.rows.len() <= level {
                self.rows
                    .push(Vec::with_capacity(HASH_SIZE * TILE_WIDTH as usize));
            }
            let row = &mut self.rows[level];
            row.extend_from_slice(&hash.0);
            if row.len() < HASH_SIZE * TILE_WIDTH as usize {
                break;
            }
            // The tile is complete: its root is the next entry one tile level up.
            let data = std::mem::take(row);
            let index = (self.size >> (u32::from(TILE_HEIGHT) * level as u32)) / TILE_WIDTH - 1;
            hash = Tile::subtree_hash(&data);
            self.completed.push((level as u8, index, data));
            level += 1;
        }
    }

    /// The writes that make the stored tree match this edge (`None` deletes): every tile
    /// completed since the last call, the partial tile of every level above 0, and for
    /// level 0 one entry per new leaf of its partial tile, so a group never rewrites a
    /// whole tile; the entries of a tile that became complete are deleted.
    pub(crate) fn take_writes(&mut self) -> Vec<([u8; 9], Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for (l, n, data) in self.completed.drain(..) {
            if l == 0 {
                let first = n * TILE_WIDTH;
                for i in first..self.written_size.min(first + TILE_WIDTH) {
                    out.push((leaf_key(i), None));
                }
            }
            out.push((tile_key(l, n), Some(data)));
        }
        let base = self.size / TILE_WIDTH * TILE_WIDTH;
        if let Some(row) = self.rows.first() {
            for i in self.written_size.max(base)..self.size {
                let at = (i - base) as usize * HASH_SIZE;
                out.push((leaf_key(i), Some(row[at..at + HASH_SIZE].to_vec())));
            }
        }
        for (level, row) in self.rows.iter().enumerate().skip(1) {
            let width = self.size >> (u32::from(TILE_HEIGHT) * level as u32);
            let old = self.written_size >> (u32::from(TILE_HEIGHT) * level as u32);
            if !row.is_empty() && width != old {
                out.push((tile_key(level as u8, width / TILE_WIDTH), Some(row.clone())));
            }
        }
        self.written_size = self.size;
        out
    }

    /// Loads the edge of the stored tree; its size is what the tiles hold.
    pub(crate) fn load(ks: &Keyspace) -> Result<TreeEdge, EventError> {
        let last = |level: u8| -> Result<Option<(u64, Vec<u8>)>, EventError> {
            match ks.prefix([level]).next_back() {
                None => Ok(None),
                Some(g) => {
                    let (k, v) = g.into_inner()?;
                    let index = u64::from_be_bytes(
                        k.get(1..9)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| tree_error("bad tile key"))?,
                    );
                    Ok(Some((index, v.to_vec())))
                }
            }
        };
        // Complete level-0 tiles, then the leaf entries of the partial one.
        let full = match last(0)? {
            None => 0,
            Some((index, _)) => (index + 1) * TILE_WIDTH,
        };
        let mut partial = Vec::with_capacity(HASH_SIZE * TILE_WIDTH as usize);
        for g in ks.range(leaf_key(full)..=leaf_key(full + TILE_WIDTH - 1)) {
            let (k, v) = g.into_inner()?;
            let next = full + (partial.len() / HASH_SIZE) as u64;
            if k.as_ref() != leaf_key(next) || v.len() != HASH_SIZE {
                return Err(tree_error("leaf entries are not contiguous"));
            }
            partial.extend_from_slice(&v);
        }
        let size = full + (partial.len() / HASH_SIZE) as u64;
        let mut edge = TreeEdge {
            size,
            written_size: size,
            ..TreeEdge::default()
        };
        let mut level = 0u8;
        while size >> (u32::from(TILE_HEIGHT) * u32::from(level)) > 0 {
            let width = size >> (u32::from(TILE_HEIGHT) * u32::from(level));
            let want = (width % TILE_WIDTH) as usize * HASH_SIZE;
            let mut row = Vec::with_capacity(HASH_SIZE * TILE_WIDTH as usize);
            if level == 0 {
                row.extend_from_slice(&partial);
            } else if want > 0 {
                let data = ks
                    .get(tile_key(level, width / TILE_WIDTH))?
                    .ok_or_else(|| {
                        tree_error(format!("tile {level}/{} missing", width / TILE_WIDTH))
                    })?;
                let data = data.get(..want).ok_or_else(|| {
                    tree_error(format!("tile {level}/{} too short", width / TILE_WIDTH))
                })?;
                row.extend_from_slice(data);
            }
            edge.rows.push(row);
            level += 1;
        }
        Ok(edge)
    }
}

/// Tile `(level, index)`: stored whole, or for the partial level-0 tile assembled from
/// every leaf entry it has.
pub(crate) fn read_tile(
    ks: &Keyspace,
    level: u8,
    index: u64,
) -> Result<Vec<u8>, tlog_tiles::Error> {
    let stored = ks
        .get(tile_key(level, index))
        .map_err(|_| tlog_tiles::Error::InvalidTile)?;
    if let Some(t) = stored {
        return Ok(t.to_vec());
    }
    if level != 0 {
        return Err(tlog_tiles::Error::IndexesNotInTree);
    }
    let first = index * TILE_WIDTH;
    let mut data = Vec::with_capacity(TILE_WIDTH as usize * HASH_SIZE);
    for g in ks.range(leaf_key(first)..=leaf_key(first + TILE_WIDTH - 1)) {
        let v = g.value().map_err(|_| tlog_tiles::Error::InvalidTile)?;
        data.extend_from_slice(&v);
    }
    Ok(data)
}

/// Reads stored hashes out of the tiles (the `tlog_tiles` [`HashReader`] for proofs and
/// roots). Tiles read once are kept for the reader's lifetime.
pub(crate) struct TileHashes<'a> {
    ks: &'a Keyspace,
    tiles: RefCell<HashMap<(u8, u64), Vec<u8>>>,
}

impl<'a> TileHashes<'a> {
    pub(crate) fn new(ks: &'a Keyspace) -> Self {
        Self {
            ks,
            tiles: RefCell::new(HashMap::new()),
        }
    }
}

impl HashReader for TileHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let mut tiles = self.tiles.borrow_mut();
        indexes
            .iter()
            .map(|&index| {
                let tile = Tile::from_index(TILE_HEIGHT, index);
                let key = (tile.level(), tile.level_index());
                let data = match tiles.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(read_tile(self.ks, key.0, key.1)?)
                    }
                };
                tile.hash_at_index(data, index)
            })
            .collect()
    }
}

/// Proof computations over the stored tiles, for trees no larger than what is stored.
pub(crate) struct Tree<'a> {
    hashes: TileHashes<'a>,
    /// Leaves stored.
    size: u64,
}

impl<'a> Tree<'a> {
    pub(crate) fn new(ks: &'a Keyspace, size: u64) -> Self {
        Self {
            hashes: TileHashes::new(ks),
            size,
        }
    }

    fn check_size(&self, n: u64) -> Result<(), EventError> {
        if n > self.size {
            return Err(EventError::Invalid(format!(
                "the tree has {} leaves, not {n}",
                self.size
            )));
        }
        Ok(())
    }

    /// The root hash of the tree of the first `n` leaves.
    pub(crate) fn root(&self, n: u64) -> Result<Hash, EventError> {
        self.check_size(n)?;
        tlog_tiles::tree_hash(n, &self.hashes).map_err(tree_error)
    }

    /// The audit path of leaf `index` (seq - 1) in the tree of size `n` (RFC 9162 2.1.3).
    pub(crate) fn inclusion(&self, index: u64, n: u64) -> Result<Vec<Hash>, EventError> {
        self.check_size(n)?;
        if index >= n {
            return Err(EventError::Invalid(format!(
                "leaf {index} is not in a tree of size {n}"
            )));
        }
        tlog_tiles::prove_record(n, index, &self.hashes).map_err(tree_error)
    }

    /// The proof that the tree of size `n` extends the one of size `m` (RFC 9162 2.1.4).
    pub(crate) fn consistency(&self, m: u64, n: u64) -> Result<Vec<Hash>, EventError> {
        self.check_size(n)?;
        if m == 0 || m > n {
            return Err(EventError::Invalid(format!(
                "no consistency proof from size {m} to size {n} (need 1 <= from <= to)"
            )));
        }
        tlog_tiles::prove_tree(n, m, &self.hashes).map_err(tree_error)
    }

    /// The leaf hash stored for leaf `index`.
    pub(crate) fn leaf(&self, index: u64) -> Result<Hash, EventError> {
        self.check_size(index + 1)?;
        let idx = tlog_tiles::stored_hash_index(0, index);
        self.hashes
            .read_hashes(&[idx])
            .map_err(tree_error)?
            .pop()
            .ok_or_else(|| tree_error("no leaf"))
    }
}

/// Checks an inclusion proof (RFC 9162 2.1.3.2).
pub fn check_inclusion(proof: &[Hash], tree_size: u64, root: Hash, index: u64, leaf: Hash) -> bool {
    tlog_tiles::check_record(&proof.to_vec(), tree_size, root, index, leaf).is_ok()
}

/// Checks a consistency proof (RFC 9162 2.1.4.2).
pub fn check_consistency(
    proof: &[Hash],
    new_size: u64,
    new_root: Hash,
    old_size: u64,
    old_root: Hash,
) -> bool {
    tlog_tiles::check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root).is_ok()
}

/// A whole tree in memory, for offline checks of an export (`verify-export`): the same
/// edge, with the root computed from it.
#[derive(Debug, Default)]
pub struct MemoryTree {
    edge: TreeEdge,
}

impl MemoryTree {
    pub fn push(&mut self, leaf: Hash) {
        self.edge.push(leaf);
        self.edge.completed.clear();
    }

    pub fn size(&self) -> u64 {
        self.edge.size
    }

    /// The root of everything pushed so far.
    pub fn root(&self) -> Hash {
        edge_root(&self.edge)
    }
}

/// The root from an edge alone: every partial row is a run of complete subtrees, folded
/// right to left as RFC 6962's MTH splits the tree.
pub(crate) fn edge_root(edge: &TreeEdge) -> Hash {
    if edge.size == 0 {
        return tlog_tiles::EMPTY_HASH;
    }
    // Complete subtrees from the right edge, smallest (rightmost) first.
    let mut acc: Option<Hash> = None;
    for (level, row) in edge.rows.iter().enumerate() {
        let width = (edge.size >> (u32::from(TILE_HEIGHT) * level as u32)) % TILE_WIDTH;
        // The row's entries decompose into complete subtrees by the bits of `width`,
        // largest first from the left.
        let mut start = 0u64;
        let mut parts = Vec::new();
        for bit in (0..TILE_HEIGHT).rev() {
            if width & (1 << bit) != 0 {
                let a = (start as usize) * HASH_SIZE;
                let b = ((start + (1 << bit)) as usize) * HASH_SIZE;
                parts.push(Tile::subtree_hash(&row[a..b]));
                start += 1 << bit;
            }
        }
        for h in parts.into_iter().rev() {
            acc = Some(match acc {
                None => h,
                Some(right) => tlog_tiles::node_hash(h, right),
            });
        }
    }
    acc.unwrap_or(tlog_tiles::EMPTY_HASH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 section 2.1, written from its definition: MTH over a list of leaf hashes.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => tlog_tiles::EMPTY_HASH,
            1 => leaves[0],
            n => {
                // The largest power of two smaller than n.
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                tlog_tiles::node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn edge_root_matches_the_definition() {
        let mut t = MemoryTree::default();
        let mut leaves = Vec::new();
        for i in 0..1100u32 {
            let h = leaf_hash(&i.to_be_bytes());
            leaves.push(h);
            t.push(h);
            if i < 300 || i % 97 == 0 || i > 1020 {
                assert_eq!(t.root(), mth(&leaves), "size {}", i + 1);
            }
        }
    }

    #[test]
    fn tile_writes_track_the_edge() {
        let mut e = TreeEdge::default();
        for i in 0..600u32 {
            e.push(leaf_hash(&i.to_be_bytes()));
        }
        let writes = e.take_writes();
        let tiles: Vec<_> = writes
            .iter()
            .filter(|(k, _)| k[0] != LEAF_ENTRY)
            .map(|(k, v)| (k[0], k[8], v.as_ref().map_or(0, |v| v.len() / 32)))
            .collect();
        // Two complete level-0 tiles and level 1's partial tile of 2...
        assert_eq!(tiles, vec![(0, 0, 256), (0, 1, 256), (1, 0, 2)]);
        // ...and the 88 leaves of the partial third as entries.
        assert_eq!(
            writes.iter().filter(|(k, _)| k[0] == LEAF_ENTRY).count(),
            88
        );
        e.push(leaf_hash(b"x"));
        let writes = e.take_writes();
        assert_eq!(writes.len(), 1, "one new leaf entry");
        for _ in 0..(768 - 601) {
            e.push(leaf_hash(b"y"));
        }
        let writes = e.take_writes();
        let deletes = writes.iter().filter(|(_, v)| v.is_none()).count();
        assert_eq!(
            deletes, 89,
            "the entries written before the third tile completed"
        );
    }
}
