//! Audit transparency: the Merkle tree over the log against RFC 6962 computed here from
//! its definition, inclusion and consistency proofs checked with RFC 9162's algorithms
//! written here, the tree across restarts and over a log from before it.

mod common;

use common::rfc6962::*;
use inferno::events::{
    default_projections, Event, EventContext, EventStore, LoginFailed, StoreOptions,
};

fn open(dir: &std::path::Path, without_tree: bool) -> EventStore {
    EventStore::open(
        dir,
        default_projections(),
        StoreOptions {
            without_tree,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

/// Appends `n` events in groups of varying size, with text that exercises the escapes.
async fn append(store: &EventStore, n: usize, from: usize) {
    let ctx = EventContext::system();
    let mut i = 0;
    while i < n {
        let group = [1, 7, 64, 3, 200][i % 5].min(n - i);
        let events = (0..group)
            .map(|j| {
                Event::LoginFailed(LoginFailed {
                    username: format!("u{}\"\\\u{1}é/{}", from + i + j, "x".repeat((i + j) % 9)),
                    reason: "bad_password".into(),
                })
            })
            .collect();
        store.append(&ctx, events).await.expect("append");
        i += group;
    }
}

fn leaves_of(store: &EventStore) -> Vec<H> {
    store
        .export_after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| leaf(&e.line))
        .collect()
}

fn assert_roots(store: &EventStore, leaves: &[H]) {
    for n in 1..=leaves.len() {
        assert_eq!(
            store.tree_root(n as u64).unwrap().0,
            mth(&leaves[..n]),
            "root of size {n}"
        );
    }
}

#[tokio::test]
async fn roots_and_proofs_follow_rfc_6962_across_restarts_and_an_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false);
    append(&store, 600, 0).await;
    let leaves = leaves_of(&store);
    assert_eq!(leaves.len(), 600);
    assert_roots(&store, &leaves);
    assert!(store.verify().ok);

    // Inclusion: every seq of every size up to 40, and samples of larger trees.
    let mut sizes: Vec<u64> = (1..=40).collect();
    sizes.extend([255, 256, 257, 511, 512, 513, 600]);
    for &n in &sizes {
        let root = mth(&leaves[..n as usize]);
        let seqs: Vec<u64> = if n <= 40 {
            (1..=n).collect()
        } else {
            vec![1, 2, n / 2, n - 1, n]
        };
        for seq in seqs {
            let p = store.inclusion_proof(seq, n).unwrap();
            let path: Vec<H> = p.path.iter().map(|h| h.0).collect();
            assert_eq!(p.leaf_hash.0, leaves[seq as usize - 1]);
            assert_eq!(p.root.0, root);
            assert!(
                verify_inclusion(seq - 1, n, &leaves[seq as usize - 1], &path, &root),
                "inclusion of {seq} in {n}"
            );
            // A changed event has another leaf: the same path does not prove it.
            let changed = sha(&[&[0], b"{\"changed\":true}"]);
            assert!(!verify_inclusion(seq - 1, n, &changed, &path, &root));
        }
    }
    // Consistency: every pair of sizes up to 40, and pairs across tile boundaries.
    let mut pairs: Vec<(u64, u64)> = (1..=40)
        .flat_map(|m| (m..=40).map(move |n| (m, n)))
        .collect();
    pairs.extend([
        (1, 600),
        (255, 256),
        (256, 257),
        (100, 513),
        (511, 600),
        (600, 600),
    ]);
    for (m, n) in pairs {
        let p = store.consistency_proof(m, n).unwrap();
        let path: Vec<H> = p.path.iter().map(|h| h.0).collect();
        let (old, new) = (mth(&leaves[..m as usize]), mth(&leaves[..n as usize]));
        assert!(verify_consistency(m, n, &old, &new, &path), "{m} -> {n}");
        // A different old root (a rewritten history) is not proven consistent.
        if m < n {
            assert!(
                !verify_consistency(m, n, &[7; 32], &new, &path),
                "{m} -> {n} forged"
            );
        }
    }
    assert!(store.inclusion_proof(601, 600).is_err());
    assert!(store.consistency_proof(0, 5).is_err());

    // A restart reads the edge back and goes on.
    store.shutdown().await;
    let store = open(dir.path(), false);
    append(&store, 100, 600).await;
    let leaves = leaves_of(&store);
    assert_roots(&store, &leaves);
    store.shutdown().await;

    // A log appended without the tree (as by a build from before it) is caught up at open.
    let store = open(dir.path(), true);
    append(&store, 300, 700).await;
    store.shutdown().await;
    let store = open(dir.path(), false);
    let leaves = leaves_of(&store);
    assert_eq!(leaves.len(), 1000);
    assert_roots(&store, &leaves);
    assert!(store.verify().ok);
    store.shutdown().await;
}
