//! Projections: read models folded from the log in the same atomic batch as the events.
//!
//! Each projection owns a few *logical* keyspaces (`users`, `api_keys`, ...). Physically
//! they are `g<generation>.<logical>`, so `inferno audit replay` can build a fresh
//! generation and swap it in atomically. Each projection's checkpoint (last folded seq)
//! is written in the same batch as its records, so a projection is never ahead of or
//! behind the log after a crash; one added later, or left behind, is caught up at open.
//!
//! The read helpers in the submodules (`users::get`, `api_keys::list_for_user`, ...) are
//! what the rest of the server calls.

use super::envelope::Envelope;
use super::error::EventError;
use super::store::EventStore;
use super::types::Event;
use fjall::Keyspace;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A fold over the log into keyspaces it owns.
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the checkpoint key.
    fn name(&self) -> &'static str;
    /// Logical keyspaces this projection writes (and alone writes).
    fn keyspaces(&self) -> &'static [&'static str];
    /// Folds one event. Must be deterministic in (`env`, `event`, current records):
    /// replay relies on it. Use `env.ts` for times, never the clock.
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError>;
    /// Whether [`Projection::apply`] reads `env.payload` (the typed `event` carries the
    /// same data). When no projection of a replay or catch-up does, the log is folded
    /// without building each payload's `Value` and `env.payload` is `Null` there.
    fn reads_payload(&self) -> bool {
        true
    }
}

/// Key/value pairs of a prefix scan, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Staged writes per logical keyspace (`None` = delete).
type Staged = HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// Staged projection writes of one commit group. Reads see this request's writes, then
/// earlier requests' writes in the same group, then the keyspace.
pub struct ProjectionTx<'a> {
    keyspaces: &'a HashMap<String, Keyspace>,
    owner: &'static [&'static str],
    owner_name: &'static str,
    group: Staged,
    pending: Staged,
}

impl<'a> ProjectionTx<'a> {
    pub(crate) fn new(keyspaces: &'a HashMap<String, Keyspace>) -> Self {
        ProjectionTx {
            keyspaces,
            owner: &[],
            owner_name: "",
            group: Staged::new(),
            pending: Staged::new(),
        }
    }

    pub(crate) fn apply(
        &mut self,
        p: &dyn Projection,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        self.owner = p.keyspaces();
        self.owner_name = p.name();
        p.apply(self, env, event)
    }

    /// Keeps the current request's writes for the group.
    pub(crate) fn commit_request(&mut self) {
        for (ks, mut writes) in self.pending.drain() {
            let group = self.group.entry(ks).or_default();
            if group.is_empty() {
                std::mem::swap(group, &mut writes);
            } else {
                // Not `append`: it rebuilds the whole map, and groups grow large in replay.
                group.extend(writes);
            }
        }
    }

    /// Forgets the current request's writes (its append was refused).
    pub(crate) fn rollback_request(&mut self) {
        self.pending.clear();
    }

    /// Moves the group's writes into `batch`.
    pub(crate) fn drain_into(&mut self, batch: &mut fjall::OwnedWriteBatch) {
        for (ks, writes) in std::mem::take(&mut self.group) {
            // Keyspace names were checked when staged.
            let Some(ks) = self.keyspaces.get(ks) else {
                continue;
            };
            for (key, value) in writes {
                match value {
                    Some(v) => batch.insert(ks, key, v),
                    None => batch.remove(ks, key),
                }
            }
        }
    }

    /// The owning projection's name for `ks` and its open keyspace.
    fn keyspace(&self, ks: &str) -> Result<(&'static str, &'a Keyspace), EventError> {
        let Some(name) = self.owner.iter().copied().find(|o| *o == ks) else {
            return Err(EventError::Invalid(format!(
                "projection {} does not own keyspace {ks:?}",
                self.owner_name
            )));
        };
        let keyspace = self
            .keyspaces
            .get(ks)
            .ok_or_else(|| EventError::Invalid(format!("keyspace {ks:?} is not open")))?;
        Ok((name, keyspace))
    }

    fn staged(&self, ks: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        fn layer<'s>(l: &'s Staged, ks: &str, key: &[u8]) -> Option<&'s Option<Vec<u8>>> {
            l.get(ks).and_then(|m| m.get(key))
        }
        layer(&self.pending, ks, key).or_else(|| layer(&self.group, ks, key))
    }

    pub fn get(&self, ks: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EventError> {
        let (_, keyspace) = self.keyspace(ks)?;
        if let Some(v) = self.staged(ks, key) {
            return Ok(v.clone());
        }
        Ok(keyspace.get(key)?.map(|v| v.to_vec()))
    }

    pub fn put(
        &mut self,
        ks: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), EventError> {
        let (name, _) = self.keyspace(ks)?;
        self.pending
            .entry(name)
            .or_default()
            .insert(key.into(), Some(value.into()));
        Ok(())
    }

    pub fn delete(&mut self, ks: &str, key: impl Into<Vec<u8>>) -> Result<(), EventError> {
        let (name, _) = self.keyspace(ks)?;
        self.pending
            .entry(name)
            .or_default()
            .insert(key.into(), None);
        Ok(())
    }

    /// Records whose key starts with `prefix`, staged writes included, in key order.
    pub fn scan_prefix(&self, ks: &str, prefix: &[u8]) -> Result<KvPairs, EventError> {
        use std::ops::Bound;
        let (_, keyspace) = self.keyspace(ks)?;
        let mut out = BTreeMap::new();
        for g in keyspace.prefix(prefix) {
            let (k, v) = g.into_inner()?;
            out.insert(k.to_vec(), Some(v.to_vec()));
        }
        for layer in [&self.group, &self.pending] {
            let Some(writes) = layer.get(ks) else {
                continue;
            };
            let range = (Bound::Included(prefix), Bound::Unbounded);
            for (k, v) in writes.range::<[u8], _>(range) {
                if !k.starts_with(prefix) {
                    break;
                }
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    pub fn get_json<T: DeserializeOwned>(
        &self,
        ks: &str,
        key: &[u8],
    ) -> Result<Option<T>, EventError> {
        match self.get(ks, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| EventError::decode(format!("{ks} record"), e)),
        }
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        ks: &str,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Result<(), EventError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| EventError::decode(format!("{ks} record"), e))?;
        self.put(ks, key, bytes)
    }
}

/// Every projection the server runs.
pub fn default_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(users::UsersProjection),
        Arc::new(api_keys::ApiKeysProjection),
        Arc::new(revoked_tokens::RevokedTokensProjection),
        Arc::new(models::ModelsProjection),
        Arc::new(config::ConfigProjection),
        Arc::new(jobs::JobsProjection),
    ]
}

fn read_json<T: DeserializeOwned>(
    store: &EventStore,
    ks: &str,
    key: &[u8],
) -> Result<Option<T>, EventError> {
    match store.projection_get(ks, key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| EventError::decode(format!("{ks} record"), e)),
    }
}

fn scan_json<T: DeserializeOwned>(
    store: &EventStore,
    ks: &str,
    prefix: &[u8],
) -> Result<Vec<T>, EventError> {
    store
        .projection_scan(ks, prefix)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v).map_err(|e| EventError::decode(format!("{ks} record"), e))
        })
        .collect()
}

/// Users (deleted users are removed) and a case-insensitive username index.
pub mod users {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    pub const KS: &str = "users";
    pub const KS_BY_NAME: &str = "users_by_name";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct UserRecord {
        pub id: String,
        pub username: String,
        pub role: String,
        pub extra_permissions: Vec<String>,
        /// argon2id PHC string.
        pub password_hash: String,
        pub disabled: bool,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub struct UsersProjection;

    fn name_key(username: &str) -> Vec<u8> {
        username.to_lowercase().into_bytes()
    }

    fn update(
        tx: &mut ProjectionTx<'_>,
        id: &str,
        env: &Envelope,
        f: impl FnOnce(&mut UserRecord),
    ) -> Result<(), EventError> {
        if let Some(mut u) = tx.get_json::<UserRecord>(KS, id.as_bytes())? {
            f(&mut u);
            u.updated_at = env.ts;
            tx.put_json(KS, id.as_bytes(), &u)?;
        }
        Ok(())
    }

    impl Projection for UsersProjection {
        fn name(&self) -> &'static str {
            "users"
        }
        fn reads_payload(&self) -> bool {
            false
        }
        fn keyspaces(&self) -> &'static [&'static str] {
            &[KS, KS_BY_NAME]
        }
        fn apply(
            &self,
            tx: &mut ProjectionTx<'_>,
            env: &Envelope,
            event: &Event,
        ) -> Result<(), EventError> {
            match event {
                Event::UserCreated(e) => {
                    let u = UserRecord {
                        id: e.user_id.clone(),
                        username: e.username.clone(),
                        role: e.role.clone(),
                        extra_permissions: e.extra_permissions.clone(),
                        password_hash: e.password_hash.clone(),
                        disabled: false,
                        created_at: env.ts,
                        updated_at: env.ts,
                    };
                    tx.put_json(KS, e.user_id.as_bytes(), &u)?;
                    tx.put(KS_BY_NAME, name_key(&e.username), e.user_id.as_bytes())?;
                }
                Event::UserUpdated(e) => update(tx, &e.user_id, env, |u| {
                    if let Some(r) = &e.role {
                        u.role = r.clone();
                    }
                    if let Some(p) = &e.extra_permissions {
                        u.extra_permissions = p.clone();
                    }
                })?,
                Event::UserDisabled(e) => update(tx, &e.user_id, env, |u| u.disabled = true)?,
                Event::UserEnabled(e) => update(tx, &e.user_id, env, |u| u.disabled = false)?,
                Event::PasswordChanged(e) => update(tx, &e.user_id, env, |u| {
                    u.password_hash = e.password_hash.clone()
                })?,
                Event::UserDeleted(e) => {
                    if let Some(u) = tx.get_json::<UserRecord>(KS, e.user_id.as_bytes())? {
                        tx.delete(KS_BY_NAME, name_key(&u.username))?;
                    }
                    tx.delete(KS, e.user_id.as_bytes())?;
                }
                _ => {}
            }
            Ok(())
        }
    }

    pub fn get(store: &EventStore, id: &str) -> Result<Option<UserRecord>, EventError> {
        read_json(store, KS, id.as_bytes())
    }

    /// Case-insensitive.
    pub fn by_username(
        store: &EventStore,
        username: &str,
    ) -> Result<Option<UserRecord>, EventError> {
        match store.projection_get(KS_BY_NAME, &name_key(username))? {
            None => Ok(None),
            Some(id) => read_json(store, KS, &id),
        }
    }

    /// All users, ordered by id.
    pub fn list(store: &EventStore) -> Result<Vec<UserRecord>, EventError> {
        scan_json(store, KS, b"")
    }
}

/// API keys (revoked and expired keys stay, for audit) and a per-user index.
pub mod api_keys {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    pub const KS: &str = "api_keys";
    pub const KS_BY_USER: &str = "api_keys_by_user";

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

    pub fn get(store: &EventStore, key_id: &str) -> Result<Option<ApiKeyRecord>, EventError> {
        read_json(store, KS, key_id.as_bytes())
    }

    /// The user's keys (revoked ones included), ordered by key id.
    pub fn list_for_user(
        store: &EventStore,
        user_id: &str,
    ) -> Result<Vec<ApiKeyRecord>, EventError> {
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
}

/// Revoked JWT ids, with the token's own expiry (after which the entry is moot).
pub mod revoked_tokens {
    use super::*;
    use chrono::{DateTime, Utc};

    pub const KS: &str = "revoked_tokens";

    pub struct RevokedTokensProjection;

    impl Projection for RevokedTokensProjection {
        fn name(&self) -> &'static str {
            "revoked_tokens"
        }
        fn reads_payload(&self) -> bool {
            false
        }
        fn keyspaces(&self) -> &'static [&'static str] {
            &[KS]
        }
        fn apply(
            &self,
            tx: &mut ProjectionTx<'_>,
            _env: &Envelope,
            event: &Event,
        ) -> Result<(), EventError> {
            if let Event::TokenRevoked(e) = event {
                tx.put_json(KS, e.jti.as_bytes(), &e.expires_at)?;
            }
            Ok(())
        }
    }

    pub fn is_revoked(store: &EventStore, jti: &str) -> Result<bool, EventError> {
        Ok(store.projection_get(KS, jti.as_bytes())?.is_some())
    }

    pub fn expires_at(store: &EventStore, jti: &str) -> Result<Option<DateTime<Utc>>, EventError> {
        read_json(store, KS, jti.as_bytes())
    }
}

/// Registered models (deleted ones removed) and an alias index.
pub mod models {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;
    use serde_json::Value;

    pub const KS: &str = "models";
    pub const KS_ALIASES: &str = "model_aliases";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ModelRecord {
        pub id: String,
        pub file_name: String,
        pub sha256: String,
        pub size_bytes: u64,
        pub aliases: Vec<String>,
        /// Default sampling parameters (a JSON object).
        pub defaults: Value,
        pub enabled: bool,
        pub registered_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub struct ModelsProjection;

    fn drop_aliases(tx: &mut ProjectionTx<'_>, m: &ModelRecord) -> Result<(), EventError> {
        for a in &m.aliases {
            // Only drop an alias that still points at this model.
            if tx.get(KS_ALIASES, a.as_bytes())?.as_deref() == Some(m.id.as_bytes()) {
                tx.delete(KS_ALIASES, a.as_bytes())?;
            }
        }
        Ok(())
    }

    impl Projection for ModelsProjection {
        fn name(&self) -> &'static str {
            "models"
        }
        fn reads_payload(&self) -> bool {
            false
        }
        fn keyspaces(&self) -> &'static [&'static str] {
            &[KS, KS_ALIASES]
        }
        fn apply(
            &self,
            tx: &mut ProjectionTx<'_>,
            env: &Envelope,
            event: &Event,
        ) -> Result<(), EventError> {
            match event {
                Event::ModelRegistered(e) => {
                    let m = ModelRecord {
                        id: e.model_id.clone(),
                        file_name: e.file_name.clone(),
                        sha256: e.sha256.clone(),
                        size_bytes: e.size_bytes,
                        aliases: Vec::new(),
                        defaults: Value::Object(Default::default()),
                        enabled: true,
                        registered_at: env.ts,
                        updated_at: env.ts,
                    };
                    tx.put_json(KS, e.model_id.as_bytes(), &m)?;
                }
                Event::ModelUpdated(e) => {
                    if let Some(mut m) = tx.get_json::<ModelRecord>(KS, e.model_id.as_bytes())? {
                        if let Some(aliases) = &e.aliases {
                            drop_aliases(tx, &m)?;
                            for a in aliases {
                                tx.put(KS_ALIASES, a.as_bytes(), m.id.as_bytes())?;
                            }
                            m.aliases = aliases.clone();
                        }
                        if let Some(d) = &e.defaults {
                            m.defaults = d.clone();
                        }
                        if let Some(en) = e.enabled {
                            m.enabled = en;
                        }
                        m.updated_at = env.ts;
                        tx.put_json(KS, e.model_id.as_bytes(), &m)?;
                    }
                }
                Event::ModelDeleted(e) => {
                    if let Some(m) = tx.get_json::<ModelRecord>(KS, e.model_id.as_bytes())? {
                        drop_aliases(tx, &m)?;
                    }
                    tx.delete(KS, e.model_id.as_bytes())?;
                }
                _ => {}
            }
            Ok(())
        }
    }

    pub fn get(store: &EventStore, model_id: &str) -> Result<Option<ModelRecord>, EventError> {
        read_json(store, KS, model_id.as_bytes())
    }

    pub fn by_alias(store: &EventStore, alias: &str) -> Result<Option<ModelRecord>, EventError> {
        match store.projection_get(KS_ALIASES, alias.as_bytes())? {
            None => Ok(None),
            Some(id) => read_json(store, KS, &id),
        }
    }

    pub fn list(store: &EventStore) -> Result<Vec<ModelRecord>, EventError> {
        scan_json(store, KS, b"")
    }
}

/// Runtime configuration set through the API: key → JSON value.
pub mod config {
    use super::*;
    use serde_json::Value;

    pub const KS: &str = "config";

    pub struct ConfigProjection;

    impl Projection for ConfigProjection {
        fn name(&self) -> &'static str {
            "config"
        }
        fn reads_payload(&self) -> bool {
            false
        }
        fn keyspaces(&self) -> &'static [&'static str] {
            &[KS]
        }
        fn apply(
            &self,
            tx: &mut ProjectionTx<'_>,
            _env: &Envelope,
            event: &Event,
        ) -> Result<(), EventError> {
            if let Event::ConfigChanged(e) = event {
                tx.put_json(KS, e.key.as_bytes(), &e.value)?;
            }
            Ok(())
        }
    }

    pub fn get(store: &EventStore, key: &str) -> Result<Option<Value>, EventError> {
        read_json(store, KS, key.as_bytes())
    }

    pub fn get_all(store: &EventStore) -> Result<BTreeMap<String, Value>, EventError> {
        store
            .projection_scan(KS, b"")?
            .into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_slice(&v)
                    .map_err(|e| EventError::decode("config record", e))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), value))
            })
            .collect()
    }
}

/// Inference jobs and their lifecycle.
pub mod jobs {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    pub const KS: &str = "jobs";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct JobRecord {
        pub job_id: String,
        pub model: String,
        /// `queued` | `running` | `completed` | `failed` | `cancelled` | `dead`.
        pub status: String,
        /// Times the job has started running.
        pub attempts: u32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
        pub finish_reason: Option<String>,
        /// Failure, death or cancellation reason.
        pub error: Option<String>,
        pub prompt_tokens: Option<u64>,
        pub completion_tokens: Option<u64>,
    }

    pub struct JobsProjection;

    fn update(
        tx: &mut ProjectionTx<'_>,
        job_id: &str,
        env: &Envelope,
        f: impl FnOnce(&mut JobRecord),
    ) -> Result<(), EventError> {
        if let Some(mut j) = tx.get_json::<JobRecord>(KS, job_id.as_bytes())? {
            f(&mut j);
            j.updated_at = env.ts;
            tx.put_json(KS, job_id.as_bytes(), &j)?;
        }
        Ok(())
    }

    impl Projection for JobsProjection {
        fn name(&self) -> &'static str {
            "jobs"
        }
        fn reads_payload(&self) -> bool {
            false
        }
        fn keyspaces(&self) -> &'static [&'static str] {
            &[KS]
        }
        fn apply(
            &self,
            tx: &mut ProjectionTx<'_>,
            env: &Envelope,
            event: &Event,
        ) -> Result<(), EventError> {
            let set = |s: &str| s.to_string();
            match event {
                Event::InferenceQueued(e) => {
                    let j = JobRecord {
                        job_id: e.job_id.clone(),
                        model: e.model.clone(),
                        status: set("queued"),
                        attempts: 0,
                        created_at: env.ts,
                        updated_at: env.ts,
                        finish_reason: None,
                        error: None,
                        prompt_tokens: None,
                        completion_tokens: None,
                    };
                    tx.put_json(KS, e.job_id.as_bytes(), &j)?;
                }
                Event::InferenceStarted(e) => update(tx, &e.job_id, env, |j| {
                    j.status = set("running");
                    j.attempts += 1;
                })?,
                Event::InferenceCompleted(e) => update(tx, &e.job_id, env, |j| {
                    j.status = set("completed");
                    j.finish_reason = Some(e.finish_reason.clone());
                    j.prompt_tokens = Some(e.prompt_tokens);
                    j.completion_tokens = Some(e.completion_tokens);
                    j.error = None;
                })?,
                Event::InferenceFailed(e) => update(tx, &e.job_id, env, |j| {
                    j.status = set("failed");
                    j.error = Some(e.error.clone());
                })?,
                Event::InferenceCancelled(e) => update(tx, &e.job_id, env, |j| {
                    j.status = set("cancelled");
                    j.error = Some(e.reason.clone());
                })?,
                Event::JobRetried(e) => update(tx, &e.job_id, env, |j| j.status = set("queued"))?,
                Event::JobDead(e) => update(tx, &e.job_id, env, |j| {
                    j.status = set("dead");
                    j.error = Some(e.error.clone());
                })?,
                _ => {}
            }
            Ok(())
        }
    }

    pub fn get(store: &EventStore, job_id: &str) -> Result<Option<JobRecord>, EventError> {
        read_json(store, KS, job_id.as_bytes())
    }

    /// All jobs, ordered by job id (UUID v7 ids sort by creation time).
    pub fn list(store: &EventStore) -> Result<Vec<JobRecord>, EventError> {
        scan_json(store, KS, b"")
    }
}
