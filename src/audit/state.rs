//! Point-in-time state for auditors: users, API keys and models as the log says they were
//! after a given event or at a given time ("which permissions did key X hold when it ran
//! job Y"). A fold of its own over the events, independent of the live projections, so it
//! works the same over a data dir, an export file and the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::Serialize;

use crate::auth::{role_permissions, PermissionSet};
use crate::events::{format_ts, Envelope, Event};

/// Where to stop: after event `seq`, or after the last event at or before a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Seq(u64),
    Time(DateTime<Utc>),
}

impl std::str::FromStr for At {
    type Err = String;

    fn from_str(s: &str) -> Result<At, String> {
        if let Ok(seq) = s.parse::<u64>() {
            return Ok(At::Seq(seq));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| At::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("{s:?} is neither an event seq nor an RFC 3339 time"))
    }
}

impl At {
    /// Whether `env` is at or before the point.
    pub fn includes(&self, env: &Envelope) -> bool {
        match self {
            At::Seq(seq) => env.seq <= *seq,
            At::Time(t) => env.ts <= *t,
        }
    }
}

#[derive(Debug, Clone, Serialize, Object)]
pub struct UserAt {
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub extra_permissions: Vec<String>,
    /// The role's permissions and the extra ones.
    pub permissions: Vec<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Object)]
pub struct ApiKeyAt {
    pub key_id: String,
    /// The owner's user id.
    pub owner: String,
    pub name: String,
    /// The permissions the key was created with.
    pub permissions: Vec<String>,
    /// What a request with it could do then: its permissions within its owner's, none
    /// when the owner was disabled or deleted, or the key revoked or expired.
    pub effective_permissions: Vec<String>,
    #[oai(nullable)]
    pub expires_at: Option<String>,
    pub expired: bool,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Object)]
pub struct ModelAt {
    pub model_id: String,
    pub file_name: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub aliases: Vec<String>,
    pub enabled: bool,
}

/// The state after the last event folded.
#[derive(Debug, Clone, Serialize, Object)]
pub struct StateAt {
    /// The last event folded (0: none).
    pub seq: u64,
    /// Its time (RFC 3339), when there was one.
    #[oai(nullable)]
    pub ts: Option<String>,
    pub users: Vec<UserAt>,
    pub api_keys: Vec<ApiKeyAt>,
    pub models: Vec<ModelAt>,
}

/// The fold.
#[derive(Debug, Default)]
pub struct StateFold {
    seq: u64,
    ts: Option<DateTime<Utc>>,
    users: BTreeMap<String, UserAt>,
    keys: BTreeMap<String, ApiKeyAt>,
    key_expiry: BTreeMap<String, DateTime<Utc>>,
    models: BTreeMap<String, ModelAt>,
}

fn names(set: PermissionSet) -> Vec<String> {
    set.names()
}

fn user_permissions(role: &str, extra: &[String]) -> PermissionSet {
    role_permissions(role)
        .unwrap_or_default()
        .union(PermissionSet::parse_names(extra).unwrap_or_default())
}

impl StateFold {
    /// Folds one event (events must come in seq order). Events that do not decode are
    /// skipped: they cannot have changed what the server allowed.
    pub fn apply(&mut self, env: &Envelope) {
        self.seq = env.seq;
        self.ts = Some(env.ts);
        let Ok(event) = env.event() else { return };
        match event {
            Event::UserCreated(e) => {
                let permissions = names(user_permissions(&e.role, &e.extra_permissions));
                self.users.insert(
                    e.user_id.clone(),
                    UserAt {
                        user_id: e.user_id,
                        username: e.username,
                        role: e.role,
                        extra_permissions: e.extra_permissions,
                        permissions,
                        disabled: false,
                    },
                );
            }
            Event::UserUpdated(e) => {
                if let Some(u) = self.users.get_mut(&e.user_id) {
                    if let Some(role) = e.role {
                        u.role = role;
                    }
                    if let Some(extra) = e.extra_permissions {
                        u.extra_permissions = extra;
                    }
                    u.permissions = names(user_permissions(&u.role, &u.extra_permissions));
                }
            }
            Event::UserDisabled(e) => {
                if let Some(u) = self.users.get_mut(&e.user_id) {
                    u.disabled = true;
                }
            }
            Event::UserEnabled(e) => {
                if let Some(u) = self.users.get_mut(&e.user_id) {
                    u.disabled = false;
                }
            }
            Event::UserDeleted(e) => {
                self.users.remove(&e.user_id);
                for k in self.keys.values_mut().filter(|k| k.owner == e.user_id) {
                    k.revoked = true;
                }
            }
            Event::ApiKeyCreated(e) => {
                if let Some(t) = e.expires_at {
                    self.key_expiry.insert(e.key_id.clone(), t);
                }
                self.keys.insert(
                    e.key_id.clone(),
                    ApiKeyAt {
                        key_id: e.key_id,
                        owner: e.user_id,
                        name: e.name,
                        permissions: e.permissions,
                        effective_permissions: Vec::new(),
                        expires_at: e.expires_at.as_ref().map(format_ts),
                        expired: false,
                        revoked: false,
                    },
                );
            }
            Event::ApiKeyRevoked(e) => {
                if let Some(k) = self.keys.get_mut(&e.key_id) {
                    k.revoked = true;
                }
            }
            Event::ModelRegistered(e) => {
                self.models.insert(
                    e.model_id.clone(),
                    ModelAt {
                        model_id: e.model_id,
                        file_name: e.file_name,
                        sha256: e.sha256,
                        size_bytes: e.size_bytes,
                        aliases: Vec::new(),
                        enabled: true,
                    },
                );
            }
            Event::ModelUpdated(e) => {
                if let Some(m) = self.models.get_mut(&e.model_id) {
                    if let Some(aliases) = e.aliases {
                        m.aliases = aliases;
                    }
                    if let Some(enabled) = e.enabled {
                        m.enabled = enabled;
                    }
                }
            }
            Event::ModelDeleted(e) => {
                self.models.remove(&e.model_id);
            }
            _ => {}
        }
    }

    /// The state as of the last event folded.
    pub fn finish(self) -> StateAt {
        let now = self.ts;
        let users = &self.users;
        let api_keys = self
            .keys
            .values()
            .map(|k| {
                let mut k = k.clone();
                k.expired = match (self.key_expiry.get(&k.key_id), now) {
                    (Some(exp), Some(now)) => *exp <= now,
                    _ => false,
                };
                let owner = users.get(&k.owner).filter(|u| !u.disabled);
                k.effective_permissions = match owner {
                    Some(u) if !k.revoked && !k.expired => {
                        let granted =
                            PermissionSet::parse_names(&k.permissions).unwrap_or_default();
                        names(granted.intersect(user_permissions(&u.role, &u.extra_permissions)))
                    }
                    _ => Vec::new(),
                };
                k
            })
            .collect();
        StateAt {
            seq: self.seq,
            ts: self.ts.as_ref().map(format_ts),
            users: self.users.into_values().collect(),
            api_keys,
            models: self.models.into_values().collect(),
        }
    }
}

/// Folds `events` (in seq order) up to `at`.
pub fn state_at<E>(
    events: impl IntoIterator<Item = Result<Envelope, E>>,
    at: At,
    mut progress: impl FnMut(u64),
) -> Result<StateAt, E> {
    let mut fold = StateFold::default();
    for env in events {
        let env = env?;
        if !at.includes(&env) {
            break;
        }
        fold.apply(&env);
        if env.seq.is_multiple_of(4096) {
            progress(env.seq);
        }
    }
    Ok(fold.finish())
}
