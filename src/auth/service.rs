//! The auth service: every operation validates, appends its event(s), and reads back from the
//! projections. Nothing here knows HTTP. This file holds its state, start-up and the checks
//! the operations share; the operations are in `session.rs`, `keys.rs` and `users.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use super::credentials::{self, JwtKeys, MIN_PASSWORD_CHARS};
use super::permissions::{role_permissions, Granted, Perm, Permission, PermissionSet, ROLES};
use super::session::FailureLog;
use super::verified::{RenderedViews, VerifiedCredentials};
use super::{AuthError, Principal};
use crate::config::AuthConfig;
use crate::events::projections::users::{self, UserRecord};
use crate::events::{EventContext, EventStore};

/// Side keyspace: user id → email address (never in the log).
pub(super) const EMAILS: &str = "user_emails";
/// Side keyspace: user id → argon2id PHC string (never in the log).
pub(super) const CREDENTIALS: &str = "user_credentials";
/// Side keyspace: key id → RFC 3339 time of last use.
pub(super) const LAST_USED: &str = "api_key_last_used";

pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: String,
    pub extra_permissions: Vec<String>,
    pub email: Option<String>,
}

#[derive(Default)]
pub struct UserPatch {
    pub role: Option<String>,
    pub extra_permissions: Option<Vec<String>>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
    /// `Some(None)` removes the address.
    pub email: Option<Option<String>>,
}

/// A user as shown to clients (never the password hash).
pub struct UserView {
    pub id: String,
    pub username: String,
    pub role: String,
    pub extra_permissions: Vec<String>,
    /// Role plus extra permissions.
    pub permissions: Vec<String>,
    pub disabled: bool,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewApiKey {
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_in_days: Option<u32>,
    pub rate_limit_per_minute: Option<u32>,
}

/// An API key as shown to clients (never the secret or its hash).
pub struct KeyView {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub rate_limit_per_minute: Option<u32>,
}

pub struct AuthService {
    pub(super) store: EventStore,
    pub(super) jwt: JwtKeys,
    pub(super) ttl: Duration,
    /// Verified against when the user is unknown, so both failures take about as long.
    pub(super) dummy_hash: String,
    /// When each key's `last_used_at` was last written, to write it at most once a minute.
    pub(super) last_used: Mutex<HashMap<String, Instant>>,
    /// Serialises user mutations so username uniqueness holds.
    pub(super) user_lock: tokio::sync::Mutex<()>,
    /// `[limits] requests_per_minute`: the limit of every user; a key may only lower it
    /// unless its creator holds `manage_users`.
    pub(super) default_rate_limit: std::sync::atomic::AtomicU32,
    pub(super) max_keys_per_user: u32,
    /// Failed authentications not yet recorded, per client IP.
    pub(super) failures: FailureLog,
    /// Principals of JWTs, and of API keys, that authenticated since the last commit (two
    /// maps, so that a credential is only ever taken for the kind it was checked as).
    pub(super) verified_jwts: VerifiedCredentials,
    pub(super) verified_keys: VerifiedCredentials,
    /// Identity views as the API rendered them, until the next commit.
    pub(super) rendered_me: RenderedViews,
    /// Built for the offline CLI on a data dir it holds locked (see [`AuthService::operator`]).
    offline: bool,
}

/// The permissions a user holds: its role's plus its extra ones.
pub(super) fn effective(user: &UserRecord) -> PermissionSet {
    let base = role_permissions(&user.role).unwrap_or_default();
    let extra = PermissionSet::parse_names(&user.extra_permissions).unwrap_or_else(|_| {
        // Unknown names cannot be stored (validated on write); be strict if they are.
        PermissionSet::default()
    });
    base.union(extra)
}

/// Refuses when `wanted` holds a permission `holder` lacks (no one grants, or reaches,
/// beyond their own permissions). `what` says what was asked, for the message.
pub(super) fn within(
    holder: &Principal,
    wanted: PermissionSet,
    what: &str,
) -> Result<(), AuthError> {
    match wanted.iter().find(|p| !holder.permissions().contains(*p)) {
        None => Ok(()),
        Some(required) => Err(AuthError::Beyond {
            required,
            message: format!(
                "{what} needs permission {required}, which this credential does not hold; \
                 no one may grant or reach beyond their own permissions"
            ),
        }),
    }
}

pub(super) fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn validate_username(name: &str) -> Result<(), AuthError> {
    if valid_username(name) {
        Ok(())
    } else {
        Err(AuthError::invalid(
            "username",
            "username must be 1 to 64 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

pub(super) fn validate_password(field: &'static str, password: &str) -> Result<(), AuthError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(AuthError::invalid(
            field,
            format!("password must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if n > 1024 {
        return Err(AuthError::invalid(
            field,
            "password must be at most 1024 characters",
        ));
    }
    Ok(())
}

pub(super) fn validate_email(email: &str) -> Result<(), AuthError> {
    let parts: Vec<&str> = email.split('@').collect();
    let ok = email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid("email", "email is not a valid address"))
    }
}

pub(super) fn validate_role(role: &str) -> Result<(), AuthError> {
    if role_permissions(role).is_some() {
        Ok(())
    } else {
        Err(AuthError::Invalid {
            field: "role",
            message: format!("unknown role {role:?}; roles are {}", ROLES.join(", ")),
            entries: vec![role.to_string()],
        })
    }
}

pub(super) fn parse_permissions(
    field: &'static str,
    names: &[String],
) -> Result<PermissionSet, AuthError> {
    PermissionSet::parse_names(names).map_err(|unknown| AuthError::Invalid {
        field,
        message: format!("unknown permission(s): {}", unknown.join(", ")),
        entries: unknown,
    })
}

pub(super) async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
        .map_err(AuthError::Internal)
}

pub(super) async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || credentials::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

impl AuthService {
    pub fn new(
        store: EventStore,
        cfg: &AuthConfig,
        default_rate_limit: u32,
        data_dir: &Path,
    ) -> Result<Self, AuthError> {
        if let Some(secret) = &cfg.jwt_secret {
            if secret.expose().len() < 32 {
                return Err(AuthError::Internal(format!(
                    "auth.jwt_secret (INFERNO_AUTH__JWT_SECRET) is {} bytes; it must be at least 32",
                    secret.expose().len()
                )));
            }
        }
        let jwt = JwtKeys::load(cfg.jwt_secret.as_ref(), data_dir)
            .map_err(|e| AuthError::Internal(format!("loading the JWT secret: {e}")))?;
        let dummy_hash = credentials::hash_password(&credentials::random_string(24))
            .map_err(AuthError::Internal)?;
        Ok(Self {
            store,
            jwt,
            ttl: Duration::hours(cfg.token_ttl_hours.max(1) as i64),
            dummy_hash,
            last_used: Mutex::new(HashMap::new()),
            user_lock: tokio::sync::Mutex::new(()),
            default_rate_limit: std::sync::atomic::AtomicU32::new(default_rate_limit.max(1)),
            max_keys_per_user: cfg.max_keys_per_user.max(1),
            failures: FailureLog::new(cfg.failure_event_window_secs),
            verified_jwts: VerifiedCredentials::default(),
            verified_keys: VerifiedCredentials::default(),
            rendered_me: RenderedViews::default(),
            offline: false,
        })
    }

    /// The service for the offline CLI, on a data dir whose lock the caller holds (the
    /// store is open, so no server runs on it). Only such a service hands out
    /// [`AuthService::operator`] capabilities.
    pub fn offline(
        store: EventStore,
        cfg: &AuthConfig,
        data_dir: &Path,
    ) -> Result<Self, AuthError> {
        let mut service = Self::new(store, cfg, u32::MAX, data_dir)?;
        service.offline = true;
        Ok(service)
    }

    /// The operator at the command line holds every right on the data dir it opened:
    /// a capability for the system principal. Refused on a serving instance.
    pub fn operator<P: Perm>(&self) -> Result<Granted<P>, AuthError> {
        if !self.offline {
            return Err(AuthError::Forbidden(P::PERMISSION));
        }
        Principal::system()
            .grant::<P>()
            .map_err(|d| AuthError::Forbidden(d.0))
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// On a data dir with no users, creates the first admin. Returns the generated password
    /// when none was given, for the caller to hand to the operator once.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        password: Option<String>,
    ) -> Result<Option<String>, AuthError> {
        if !users::list(&self.store)?.is_empty() {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| credentials::random_string(24));
        self.insert_user(
            &EventContext::system(),
            NewUser {
                username: username.to_string(),
                password: password.clone(),
                role: "admin".into(),
                extra_permissions: Vec::new(),
                email: None,
            },
        )
        .await?;
        Ok(generated.then_some(password))
    }

    /// `Forbidden` naming `p` unless `principal` holds it (for a permission known only at
    /// run time; compile-time ones go through `Granted`).
    pub(super) fn require(principal: &Principal, p: Permission) -> Result<(), AuthError> {
        if principal.permissions().contains(p) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(p))
        }
    }
}

impl AuthService {
    /// `[limits] requests_per_minute` changed live: keys created from now on are checked
    /// against the new value.
    pub fn set_default_rate_limit(&self, per_minute: u32) {
        self.default_rate_limit
            .store(per_minute.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn default_rate_limit(&self) -> u32 {
        self.default_rate_limit
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
