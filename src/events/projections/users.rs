//! Users (deleted users are removed) and a case-insensitive username index.

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
    pub disabled: bool,
    /// JWTs issued before this are refused: the time of the last password change or
    /// disabling.
    #[serde(default)]
    pub tokens_valid_after: Option<DateTime<Utc>>,
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
                    disabled: false,
                    tokens_valid_after: None,
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
            Event::UserDisabled(e) => update(tx, &e.user_id, env, |u| {
                u.disabled = true;
                u.tokens_valid_after = Some(env.ts);
            })?,
            Event::UserEnabled(e) => update(tx, &e.user_id, env, |u| u.disabled = false)?,
            Event::PasswordChanged(e) => update(tx, &e.user_id, env, |u| {
                u.tokens_valid_after = Some(env.ts);
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
pub fn by_username(store: &EventStore, username: &str) -> Result<Option<UserRecord>, EventError> {
    match store.projection_get(KS_BY_NAME, &name_key(username))? {
        None => Ok(None),
        Some(id) => read_json(store, KS, &id),
    }
}

/// All users, ordered by id.
pub fn list(store: &EventStore) -> Result<Vec<UserRecord>, EventError> {
    scan_json(store, KS, b"")
}
