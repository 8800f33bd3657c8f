//! Numbered storage-layout migrations, applied at open against the stored layout version.
//!
//! Each migration has a description in `migrations/NNNN_name.md` (embedded below). Event
//! payload changes are NOT migrations: they are upcasters next to the event types, because
//! stored events are never rewritten.

use super::error::EventError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// The layout this build writes and understands.
pub const CURRENT_LAYOUT_VERSION: u32 = 1;

pub(crate) const META_LAYOUT_VERSION: &[u8] = b"layout_version";
pub(crate) const META_GENERATION: &[u8] = b"generation";

/// One numbered layout change.
pub struct Migration {
    pub number: u32,
    pub name: &'static str,
    /// The Markdown description from `migrations/`.
    pub description: &'static str,
    apply: fn(&Database, &Keyspace, &mut fjall::OwnedWriteBatch) -> Result<(), EventError>,
}

/// All migrations, in order. Append only.
pub static MIGRATIONS: &[Migration] = &[Migration {
    number: 1,
    name: "0001_initial_layout",
    description: include_str!("../../migrations/0001_initial_layout.md"),
    apply: m0001_initial_layout,
}];

fn m0001_initial_layout(
    db: &Database,
    meta: &Keyspace,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<(), EventError> {
    for ks in ["events", "events_by_type", "events_by_actor"] {
        db.keyspace(ks, KeyspaceCreateOptions::default)?;
    }
    if meta.get(META_GENERATION)?.is_none() {
        batch.insert(meta, META_GENERATION, 1u64.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Reads the stored layout version (0 for a fresh directory).
pub fn stored_version(meta: &Keyspace) -> Result<u32, EventError> {
    match meta.get(META_LAYOUT_VERSION)? {
        None => Ok(0),
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| EventError::Corrupt("meta layout_version is not a number".into())),
    }
}

/// Brings the layout up to [`CURRENT_LAYOUT_VERSION`], refusing a newer one. Returns the
/// version found before migrating.
pub(crate) fn run(db: &Database) -> Result<u32, EventError> {
    let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
    let found = stored_version(&meta)?;
    if found > CURRENT_LAYOUT_VERSION {
        return Err(EventError::UnknownLayoutVersion {
            found,
            supported: CURRENT_LAYOUT_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.number > found) {
        let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
        (m.apply)(db, &meta, &mut batch)?;
        batch.insert(
            &meta,
            META_LAYOUT_VERSION,
            m.number.to_string().into_bytes(),
        );
        batch.commit()?;
        tracing::info!(migration = m.name, "applied storage layout migration");
    }
    Ok(found)
}
