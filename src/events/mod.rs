//! # The event log
//!
//! The append-only, hash-chained event log is Inferno's source of truth and its audit
//! trail. Every state change is a typed, versioned [`Event`] wrapped in an [`Envelope`]
//! that carries a gap-free `seq` and a SHA-256 chain (`prev_hash`, `hash`). Read models
//! (users, API keys, models, jobs, ...) are [`Projection`]s: folds over the log written in
//! the same atomic fjall batch as the events they fold, and rebuildable at any time.
//!
//! ## Layout
//!
//! | file | role |
//! |---|---|
//! | `types.rs` | the [`Event`] enum, one payload struct per variant, upcasters for old versions |
//! | `envelope.rs` | [`Envelope`], the canonical encoding and the hash rule an auditor re-implements |
//! | `raw.rs` | zero-copy view of stored envelopes for verify, replay and reads (same results as the full decode) |
//! | `query.rs` | filtered, paged reads over the log and its type/actor indexes |
//! | `store.rs` | [`EventStore`]: fjall keyspaces, reads, queries, the handle appends go through |
//! | `seal.rs` | encoding events: the payload off the writer, seq/id/ts/hashes on it |
//! | `writer.rs` | the single writer: group commit + fsync, hashing over the stored bytes |
//! | `shared.rs` | cluster mode: the shared log in PostgreSQL (head lock, fetch, commit, LISTEN tail) |
//! | `remote.rs` | cluster mode: the writer folding other nodes' events into this node's copy |
//! | `merkle.rs` | the RFC 6962 Merkle tree beside the chain: tiles in fjall, the writer's right edge, proofs |
//! | `transparency.rs` | roots and proofs of the stored tree, building it for an old log |
//! | `verify.rs` | chain verification over the stored bytes, [`VerifyReport`] |
//! | `fold.rs` | folding the log into projections (start-up catch-up, replay) |
//! | `cache.rs` | decoded projection records, invalidated by the writer after each commit |
//! | `projections.rs` | the [`Projection`] trait, [`ProjectionTx`], the concrete read models and their read helpers |
//! | `admin.rs` | offline `verify_dir`, `export`, `replay` for the CLI (server stopped) |
//! | `migrate.rs` | numbered storage-layout migrations (described in `migrations/`) |
//! | `error.rs` | [`EventError`], and how each variant reaches a client |

pub mod admin;
mod cache;
mod envelope;
mod error;
mod fold;
pub mod merkle;
pub mod migrate;
pub mod projections;
mod query;
mod raw;
mod remote;
mod seal;
pub mod shared;
mod side;
mod store;
mod transparency;
mod types;
mod verify;
mod writer;

pub(crate) use envelope::write_canonical_value;
pub use envelope::{
    format_ts, Actor, ActorKind, ContentRecord, Envelope, EventContext, GENESIS_HASH,
};
pub use error::EventError;
pub use projections::{default_projections, Projection, ProjectionTx};
pub(crate) use raw::{is_canonical_value, RawEnvelope, MAX_DEPTH};
pub use store::{EventPage, EventQuery, EventStore, ExportedEvent, SideWrite, StoreOptions};
pub use types::*;
pub use verify::VerifyReport;
