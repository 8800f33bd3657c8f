//! Numbered storage-layout migrations, applied at open against the stored layout version.
//!
//! Each migration has a description in `migrations/NNNN_name.md` (embedded below). Event
//! payload changes are NOT migrations: they are upcasters next to the event types, because
//! stored events are never rewritten.

use super::envelope::Envelope;
use super::error::EventError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::HashMap;

/// The layout this build writes and understands.
pub const CURRENT_LAYOUT_VERSION: u32 = 2;

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
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        number: 1,
        name: "0001_initial_layout",
        description: include_str!("../../migrations/0001_initial_layout.md"),
        apply: m0001_initial_layout,
    },
    Migration {
        number: 2,
        name: "0002_credentials_out_of_events",
        description: include_str!("../../migrations/0002_credentials_out_of_events.md"),
        apply: m0002_credentials_out_of_events,
    },
];

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

/// Copies each user's newest argon2 hash out of the old `user.created` v1 and
/// `user.password_changed` v1 events into `side.user_credentials` (the events stay as they
/// are), and makes the projections rebuild from the log into a fresh generation at open, so
/// no projection record keeps a hash.
fn m0002_credentials_out_of_events(
    db: &Database,
    meta: &Keyspace,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<(), EventError> {
    let events = db.keyspace("events", KeyspaceCreateOptions::default)?;
    let credentials = db.keyspace("side.user_credentials", KeyspaceCreateOptions::default)?;
    let mut newest: HashMap<String, Option<String>> = HashMap::new();
    for item in events.iter() {
        let (k, v) = item.into_inner()?;
        let interesting = [
            &b"\"type\":\"user.created\""[..],
            b"\"type\":\"user.password_changed\"",
            b"\"type\":\"user.deleted\"",
        ]
        .iter()
        .any(|t| v.windows(t.len()).any(|w| w == *t));
        if !interesting {
            continue;
        }
        let env = Envelope::from_stored_bytes(super::store::key_seq(&k)?, &v)?;
        let Some(user) = env.payload.get("user_id").and_then(|u| u.as_str()) else {
            continue;
        };
        match (env.r#type.as_str(), env.version) {
            ("user.created" | "user.password_changed", 1) => {
                if let Some(hash) = env.payload.get("password_hash").and_then(|h| h.as_str()) {
                    newest.insert(user.to_string(), Some(hash.to_string()));
                }
            }
            ("user.deleted", _) => {
                newest.insert(user.to_string(), None);
            }
            _ => {}
        }
    }
    for (user, hash) in newest {
        match hash {
            Some(hash) => batch.insert(&credentials, user.into_bytes(), hash.into_bytes()),
            None => batch.remove(&credentials, user.into_bytes()),
        }
    }
    if events.is_empty()? {
        return Ok(()); // a new data dir: nothing to move, nothing to rebuild
    }
    let generation = match meta.get(META_GENERATION)? {
        Some(v) => u64::from_be_bytes(
            (*v).try_into()
                .map_err(|_| EventError::Corrupt("meta generation is not a u64".into()))?,
        ),
        None => 1,
    };
    batch.insert(
        meta,
        META_GENERATION,
        (generation + 1).to_be_bytes().to_vec(),
    );
    for item in meta.prefix("checkpoint/") {
        batch.remove(meta, item.key()?.to_vec());
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
