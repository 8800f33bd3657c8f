//! API keys (revoked and expired keys stay, for audit), a per-user index, and the index of
//! each user's unrevoked keys with their expiry ([`ApiKeysLiveProjection`]), which the
//! per-user key limit counts without reading the records of every key the user ever had.

use super::*;
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub const KS: &str = "api_keys";
pub const KS_BY_USER: &str = "api_keys_by_user";
pub const KS_LIVE: &str = "api_keys_live";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub rate_limit_per_minute: Option<u32>,
}

pub struct ApiKeysProjection;

fn user_key(user_id: &str, key_id: &str) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(key_id.as_bytes());
    k
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut k = user_id.as_bytes().to_vec();
    k.push(0);
    k
}

fn revoke(tx: &mut ProjectionTx<'_>, key_id: &str, env: &Envelope) -> Result<(), EventError> {
    if let Some(mut k) = tx.get_json::<ApiKeyRecord>(KS, key_id.as_bytes())? {
        if k.revoked_at.is_none() {
            k.revoked_at = Some(env.ts);
            tx.put_json(KS, key_id.as_bytes(), &k)?;
        }
    }
    Ok(())
}

impl Projection for ApiKeysProjection {
    fn name(&self) -> &'static str {
        "api_keys"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS, KS_BY_USER]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        match event {
            Event::ApiKeyCreated(e) => {
                let k = ApiKeyRecord {
                    id: e.key_id.clone(),
                    user_id: e.user_id.clone(),
                    name: e.name.clone(),
                    permissions: e.permissions.clone(),
                    secret_sha256: e.secret_sha256.clone(),
                    created_at: env.ts,
                    expires_at: e.expires_at,
                    revoked_at: None,
                    rotated_at: None,
                    rate_limit_per_minute: e.rate_limit_per_minute,
                };
                tx.put_json(KS, e.key_id.as_bytes(), &k)?;
                tx.put(KS_BY_USER, user_key(&e.user_id, &e.key_id), Vec::new())?;
            }
            Event::ApiKeyRevoked(e) => revoke(tx, &e.key_id, env)?,
            Event::ApiKeyRotated(e) => {
                if let Some(mut k) = tx.get_json::<ApiKeyRecord>(KS, e.key_id.as_bytes())? {
                    k.secret_sha256 = e.secret_sha256.clone();
                    k.rotated_at = Some(env.ts);
                    tx.put_json(KS, e.key_id.as_bytes(), &k)?;
                }
            }
            Event::UserDeleted(e) => {
                let prefix = user_prefix(&e.user_id);
                for (k, _) in tx.scan_prefix(KS_BY_USER, &prefix)? {
                    let key_id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                    revoke(tx, &key_id, env)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Each user's unrevoked, unexpired keys in ONE record, `u<user>` -> `{key id: expiry in
/// microseconds since the epoch, or null}` (entries past their expiry are dropped whenever
/// the record is written, by the event's time), and `k<key>` -> owner, to find the record
/// from a revocation. One record read per count: a prefix index would make every count
/// walk the tombstones of all the keys the user ever revoked. A projection of its own, so
/// a data dir from before it is caught up at open.
pub struct ApiKeysLiveProjection;

type LiveKeys = std::collections::BTreeMap<String, Option<i64>>;

/// Whether a key with `expiry` (microseconds) is unexpired at `now` (microseconds).
fn unexpired(expiry: &Option<i64>, now: i64) -> bool {
    expiry.is_none_or(|e| e > now)
}

fn live_user_key(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + 1);
    k.push(b'u');
    k.extend_from_slice(user_id.as_bytes());
    k
}

fn live_owner_key(key_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + 1);
    k.push(b'k');
    k.extend_from_slice(key_id.as_bytes());
    k
}

/// Rewrites the user's record with `change` applied and expired entries dropped.
fn update_live(
    tx: &mut ProjectionTx<'_>,
    user_id: &str,
    env: &Envelope,
    change: impl FnOnce(&mut LiveKeys),
) -> Result<(), EventError> {
    let key = live_user_key(user_id);
    let mut live: LiveKeys = tx.get_json(KS_LIVE, &key)?.unwrap_or_default();
    change(&mut live);
    let now = env.ts.timestamp_micros();
    live.retain(|_, expiry| unexpired(expiry, now));
    if live.is_empty() {
        tx.delete(KS_LIVE, key)
    } else {
        tx.put_json(KS_LIVE, key, &live)
    }
}

impl Projection for ApiKeysLiveProjection {
    fn name(&self) -> &'static str {
        // v2: one record per user (v1, a prefix index, was on main briefly); the new name
        // folds it again from the start.
        "api_keys_live.v2"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS_LIVE]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        match event {
            Event::ApiKeyCreated(e) => {
                let expiry = e.expires_at.map(|t| t.timestamp_micros());
                update_live(tx, &e.user_id, env, |live| {
                    live.insert(e.key_id.clone(), expiry);
                })?;
                tx.put(KS_LIVE, live_owner_key(&e.key_id), e.user_id.as_bytes())?;
            }
            Event::ApiKeyRevoked(e) => {
                let owner = live_owner_key(&e.key_id);
                if let Some(user) = tx.get(KS_LIVE, &owner)? {
                    let user = String::from_utf8_lossy(&user).into_owned();
                    update_live(tx, &user, env, |live| {
                        live.remove(&e.key_id);
                    })?;
                    tx.delete(KS_LIVE, owner)?;
                }
            }
            Event::UserDeleted(e) => {
                let key = live_user_key(&e.user_id);
                let live: LiveKeys = tx.get_json(KS_LIVE, &key)?.unwrap_or_default();
                for key_id in live.keys() {
                    tx.delete(KS_LIVE, live_owner_key(key_id))?;
                }
                tx.delete(KS_LIVE, key)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// How many of the user's keys are neither revoked nor expired at `now`.
pub fn live_count_for_user(
    store: &EventStore,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<usize, EventError> {
    let now = now.timestamp_micros();
    let live: Option<LiveKeys> = read_json(store, KS_LIVE, &live_user_key(user_id))?;
    Ok(live.map_or(0, |l| l.values().filter(|e| unexpired(e, now)).count()))
}

pub fn get(store: &EventStore, key_id: &str) -> Result<Option<ApiKeyRecord>, EventError> {
    read_json(store, KS, key_id.as_bytes())
}

/// The user's keys (revoked ones included), ordered by key id.
pub fn list_for_user(store: &EventStore, user_id: &str) -> Result<Vec<ApiKeyRecord>, EventError> {
    let prefix = user_prefix(user_id);
    let mut out = Vec::new();
    for (k, _) in store.projection_scan(KS_BY_USER, &prefix)? {
        let key_id = &k[prefix.len()..];
        if let Some(rec) = read_json(store, KS, key_id)? {
            out.push(rec);
        }
    }
    Ok(out)
}

pub fn list(store: &EventStore) -> Result<Vec<ApiKeyRecord>, EventError> {
    scan_json(store, KS, b"")
}
