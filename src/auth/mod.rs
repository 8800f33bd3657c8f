//! Users, passwords, JWTs, API keys, permissions and roles, and the [`Principal`] a request
//! acts as. Every action is recorded as an event; users and keys are projections of the log.

pub mod credentials;
pub mod permissions;
mod service;

use chrono::{DateTime, Utc};

pub use permissions::{perm, role_permissions, Denied, Granted, Perm, Permission, PermissionSet};
pub use service::{AuthService, KeyView, NewApiKey, NewUser, UserPatch, UserView};

use crate::events::{Actor, EventError};

/// How the principal proved itself.
#[derive(Debug, Clone)]
pub enum Via {
    Jwt {
        jti: String,
        expires_at: DateTime<Utc>,
    },
    ApiKey {
        key_id: String,
    },
    /// The command line on a stopped server's data dir.
    System,
}

/// Who a request acts as, with its effective permissions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub via: Via,
    pub permissions: PermissionSet,
    /// Per-key override of `[limits] requests_per_minute`.
    pub rate_limit_per_minute: Option<u32>,
}

impl Principal {
    /// The operator at the command line: whoever can open the data dir holds every right.
    pub fn system() -> Self {
        Self {
            user_id: "system".into(),
            username: "system".into(),
            role: "admin".into(),
            via: Via::System,
            permissions: PermissionSet::all(),
            rate_limit_per_minute: None,
        }
    }

    pub fn actor(&self) -> Actor {
        match &self.via {
            Via::Jwt { .. } => Actor::user(self.user_id.clone()),
            Via::ApiKey { key_id } => Actor::api_key(key_id.clone()),
            Via::System => Actor::system(),
        }
    }

    /// The key rate limits are counted under: the API key, or the user for JWTs.
    pub fn rate_key(&self) -> String {
        match &self.via {
            Via::Jwt { .. } | Via::System => format!("user:{}", self.user_id),
            Via::ApiKey { key_id } => format!("key:{key_id}"),
        }
    }

    /// A short description for events: `user:<id>` or `api_key:<id>`.
    pub fn describe(&self) -> String {
        match &self.via {
            Via::Jwt { .. } | Via::System => format!("user:{}", self.user_id),
            Via::ApiKey { key_id } => format!("api_key:{key_id}"),
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
