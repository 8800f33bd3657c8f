//! Principals of credentials that authenticated recently, so that a client presenting the
//! same JWT or API key again costs a hash and a map lookup instead of a signature check,
//! three record lookups and building the principal anew.
//!
//! An entry answers only while nothing could have changed the answer:
//! - It is found by SHA-256 of the whole presented credential, so only the exact bytes
//!   that were checked hit, and no secret is ever compared byte by byte. JWTs and API
//!   keys have a map each: a credential is only taken for the kind it was checked as.
//! - It carries the record cache's generation from before its records were read. Every
//!   commit bumps that generation before it answers anyone (a revocation, a logout, a key
//!   rotation, a password change, disabling or deleting a user, a change of role or
//!   permissions), and an entry from an older generation is ignored: the credential is
//!   checked in full against the projections again.
//! - Expiry is checked against the clock on every hit.
//! - Only credentials that authenticated are inserted, so guessing cannot fill it; past
//!   [`MAX_ENTRIES`] it starts over.
//!
//! [`RenderedViews`] holds, by the same rule, the caller's identity view (`GET /auth/me`)
//! as the API rendered it, per user and permission set: everything in that view comes from
//! the user's record and its email (side data written in the commit's own batch), so it
//! too holds until the next commit.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{PermissionSet, Principal};

/// Entries kept at most (one per live credential in use).
const MAX_ENTRIES: usize = 4096;

/// SHA-256 of a presented credential.
pub(super) type CredentialHash = [u8; 32];

pub(super) fn credential_hash(credential: &str) -> CredentialHash {
    Sha256::digest(credential.as_bytes()).into()
}

struct Entry {
    principal: Principal,
    /// The record cache's generation before the records behind `principal` were read.
    generation: u64,
    /// When the credential stops authenticating (JWT `exp`, key `expires_at`).
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub(super) struct VerifiedCredentials {
    map: RwLock<HashMap<CredentialHash, Entry>>,
}

impl VerifiedCredentials {
    /// The principal of the credential hashed to `hash`, when it authenticated at
    /// `generation` (the current one) and has not expired since.
    pub(super) fn get(&self, hash: &CredentialHash, generation: u64) -> Option<Principal> {
        let map = self.map.read().ok()?;
        let entry = map.get(hash)?;
        if entry.generation != generation || entry.expires_at.is_some_and(|e| e <= Utc::now()) {
            return None;
        }
        Some(entry.principal.clone())
    }

    /// Remembers a principal built from records read at `generation` (taken before reading).
    pub(super) fn insert(
        &self,
        hash: CredentialHash,
        principal: Principal,
        generation: u64,
        expires_at: Option<DateTime<Utc>>,
    ) {
        // u64::MAX is what a poisoned record cache reports: nothing is cached then.
        if generation == u64::MAX {
            return;
        }
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.len() >= MAX_ENTRIES && !map.contains_key(&hash) {
            map.clear();
        }
        map.insert(
            hash,
            Entry {
                principal,
                generation,
                expires_at,
            },
        );
    }
}

/// A rendering of one user's view for one permission set.
struct View {
    permissions: PermissionSet,
    generation: u64,
    body: Bytes,
}

#[derive(Default)]
pub(super) struct RenderedViews {
    map: RwLock<HashMap<String, Vec<View>>>,
}

impl RenderedViews {
    pub(super) fn get(
        &self,
        user_id: &str,
        permissions: PermissionSet,
        generation: u64,
    ) -> Option<Bytes> {
        let map = self.map.read().ok()?;
        map.get(user_id)?
            .iter()
            .find(|v| v.permissions == permissions && v.generation == generation)
            .map(|v| v.body.clone())
    }

    /// Remembers a rendering of records read at `generation` (taken before reading).
    pub(super) fn insert(
        &self,
        user_id: &str,
        permissions: PermissionSet,
        generation: u64,
        body: Bytes,
    ) {
        if generation == u64::MAX {
            return;
        }
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.len() >= MAX_ENTRIES && !map.contains_key(user_id) {
            map.clear();
        }
        let views = map.entry(user_id.to_string()).or_default();
        views.retain(|v| v.generation == generation && v.permissions != permissions);
        views.push(View {
            permissions,
            generation,
            body,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PermissionSet, Via};

    fn principal() -> Principal {
        Principal::new(
            "u1".into(),
            "alice".into(),
            "user".into(),
            Via::ApiKey {
                key_id: "k1".into(),
                rotated_at: None,
            },
            PermissionSet::default(),
            None,
        )
    }

    #[test]
    fn an_entry_holds_only_in_its_generation_and_before_expiry() {
        let cache = VerifiedCredentials::default();
        let h = credential_hash("inf_secret");
        cache.insert(h, principal(), 7, None);
        assert!(cache.get(&h, 7).is_some());
        assert!(cache.get(&h, 8).is_none(), "a commit since: checked again");
        assert!(cache.get(&credential_hash("inf_secreT"), 7).is_none());
        let past = Utc::now() - chrono::Duration::seconds(1);
        cache.insert(h, principal(), 7, Some(past));
        assert!(cache.get(&h, 7).is_none(), "expired");
        cache.insert(h, principal(), u64::MAX, None);
        assert!(
            cache.get(&h, u64::MAX).is_none(),
            "never cached when poisoned"
        );
    }

    #[test]
    fn a_view_holds_only_in_its_generation_and_for_its_permissions() {
        let views = RenderedViews::default();
        let all = PermissionSet::all();
        let none = PermissionSet::default();
        views.insert("u1", all, 3, Bytes::from_static(b"all"));
        views.insert("u1", none, 3, Bytes::from_static(b"none"));
        assert_eq!(views.get("u1", all, 3).as_deref(), Some(&b"all"[..]));
        assert_eq!(views.get("u1", none, 3).as_deref(), Some(&b"none"[..]));
        assert!(views.get("u1", all, 4).is_none(), "a commit since");
        assert!(views.get("u2", all, 3).is_none());
        views.insert("u1", all, 4, Bytes::from_static(b"new"));
        assert!(
            views.get("u1", none, 3).is_none(),
            "older generations are dropped"
        );
    }
}
