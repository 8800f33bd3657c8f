//! Users, passwords, JWTs, API keys, permissions and roles, and the [`Principal`] a request
//! acts as. Every action is recorded as an event; users and keys are projections of the log.
//!
//! # Layout
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`Principal`] (constructed only here: by authentication, or as the system actor), [`AuthError`] |
//! | `permissions.rs` | the eleven permissions, roles, and the [`Granted`] capability |
//! | `credentials.rs` | argon2id passwords, HS256 JWTs, `inf_` API keys |
//! | `service.rs` | [`AuthService`]: its state, start-up (first admin), shared validation |
//! | `session.rs` | login, logout, authenticating credentials, failed-authentication records |
//! | `keys.rs` | API keys: create, list, show, revoke, rotate, and who may do which |
//! | `users.rs` | users: create, update, delete, passwords, and who may grant what |
//! | `verified.rs` | principals of recently verified credentials, valid until the next commit |

pub mod credentials;
mod keys;
pub mod permissions;
mod service;
mod session;
mod users;
mod verified;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use permissions::{perm, role_permissions, Denied, Granted, Perm, Permission, PermissionSet};
pub use service::{AuthService, KeyView, NewApiKey, NewUser, UserPatch, UserView};

use crate::events::{Actor, EventError};

/// How the principal proved itself.
#[derive(Debug, Clone)]
pub enum Via {
    Jwt {
        jti: String,
        /// When the token was issued (microsecond precision).
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    ApiKey {
        key_id: String,
        /// The key's last rotation when it authenticated: a later rotation ends what the
        /// old secret opened.
        rotated_at: Option<DateTime<Utc>>,
    },
    /// The command line on a stopped server's data dir.
    System,
}

/// Who a request acts as, with its effective permissions.
///
/// Its fields are private and it is built only in this module (by authentication, or as
/// the system actor of start-up and the offline CLI), so a [`Granted`] capability, which
/// only [`Principal::grant`] makes, always stems from a real check. Neither of these
/// compiles outside `auth`:
///
/// ```compile_fail
/// let everything = inferno::auth::Principal::system();
/// ```
///
/// ```compile_fail
/// let forged = inferno::auth::Principal {
///     user_id: "u".into(),
///     username: "u".into(),
///     role: "admin".into(),
///     via: inferno::auth::Via::System,
///     permissions: inferno::auth::PermissionSet::all(),
///     rate_limit_per_minute: None,
/// };
/// ```
///
/// while reading one is fine:
///
/// ```
/// fn who(p: &inferno::auth::Principal) -> (&str, bool) {
///     (p.user_id(), p.permissions().contains(inferno::auth::Permission::ManageUsers))
/// }
/// ```
///
/// It is immutable and shared: a request's principal is handed to the access log, the
/// extractors and every capability made from it, so cloning costs a reference count.
#[derive(Debug, Clone)]
pub struct Principal(Arc<PrincipalData>);

#[derive(Debug)]
struct PrincipalData {
    user_id: String,
    username: String,
    role: String,
    via: Via,
    permissions: PermissionSet,
    /// Per-key override of `[limits] requests_per_minute`.
    rate_limit_per_minute: Option<u32>,
    /// What [`Principal::rate_key`] returns, made once.
    rate_key: String,
}

impl Principal {
    fn new(
        user_id: String,
        username: String,
        role: String,
        via: Via,
        permissions: PermissionSet,
        rate_limit_per_minute: Option<u32>,
    ) -> Self {
        let rate_key = match &via {
            Via::Jwt { .. } | Via::System => format!("user:{user_id}"),
            Via::ApiKey { key_id, .. } => format!("key:{key_id}"),
        };
        Self(Arc::new(PrincipalData {
            user_id,
            username,
            role,
            via,
            permissions,
            rate_limit_per_minute,
            rate_key,
        }))
    }

    /// The operator at the command line or the server at start-up: whoever can open the
    /// data dir holds every right. Reached only through [`AuthService`].
    fn system() -> Self {
        Self::new(
            "system".into(),
            "system".into(),
            "admin".into(),
            Via::System,
            PermissionSet::all(),
            None,
        )
    }

    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    pub fn username(&self) -> &str {
        &self.0.username
    }

    pub fn role(&self) -> &str {
        &self.0.role
    }

    pub fn via(&self) -> &Via {
        &self.0.via
    }

    /// What this credential may do: the user's permissions, intersected with the key's
    /// for an API key.
    pub fn permissions(&self) -> PermissionSet {
        self.0.permissions
    }

    pub fn rate_limit_per_minute(&self) -> Option<u32> {
        self.0.rate_limit_per_minute
    }

    /// The API key this principal authenticated with, if any.
    pub fn key_id(&self) -> Option<&str> {
        match &self.0.via {
            Via::ApiKey { key_id, .. } => Some(key_id),
            _ => None,
        }
    }

    pub fn actor(&self) -> Actor {
        match &self.0.via {
            Via::Jwt { .. } => Actor::user(self.0.user_id.clone()),
            Via::ApiKey { key_id, .. } => Actor::api_key(key_id.clone()),
            Via::System => Actor::system(),
        }
    }

    /// The key rate limits are counted under: `key:<id>` for an API key, `user:<id>` for
    /// JWTs.
    pub fn rate_key(&self) -> &str {
        &self.0.rate_key
    }

    /// A short description for events: `user:<id>` or `api_key:<id>`.
    pub fn describe(&self) -> String {
        match &self.0.via {
            Via::Jwt { .. } | Via::System => format!("user:{}", self.0.user_id),
            Via::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
        }
    }
}

/// A presented credential.
pub enum Credential {
    Jwt(String),
    ApiKey(String),
}

/// Why an auth operation failed. Each variant says how it reaches the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401 AUTHENTICATION_FAILED; the message is safe to show.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403 PERMISSION_DENIED with `details.required`.
    #[error("missing permission {0}")]
    Forbidden(Permission),
    /// 403 PERMISSION_DENIED with `details.required` and a message saying which rule
    /// refused (granting or reaching beyond one's own permissions).
    #[error("{message}")]
    Beyond {
        required: Permission,
        message: String,
    },
    /// 400 VALIDATION_ERROR, with the field (and offending entries) in details.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        entries: Vec<String>,
    },
    /// 404 NOT_FOUND.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409 CONFLICT.
    #[error("{0}")]
    Conflict(String),
    /// From the event store (503 when storage is unavailable, else 500).
    #[error(transparent)]
    Store(#[from] EventError),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AuthError::Invalid {
            field,
            message: message.into(),
            entries: Vec::new(),
        }
    }
}

impl From<Denied> for AuthError {
    fn from(d: Denied) -> Self {
        AuthError::Forbidden(d.0)
    }
}
