//! Login, logout, and turning a presented credential into a [`Principal`]; failed
//! authentications are recorded in aggregate per client IP ([`FailureLog`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::credentials::{self, ApiKeyMaterial};
use super::permissions::{Permission, PermissionSet};
use super::service::{effective, valid_username, verify_password, CREDENTIALS, LAST_USED};
use super::verified::credential_hash;
use super::{AuthError, AuthService, Credential, Principal, Via};
use crate::events::projections::api_keys::{self, ApiKeyRecord};
use crate::events::projections::revoked_tokens;
use crate::events::projections::users::{self, UserRecord};
use crate::events::{self as ev, Actor, Event, EventContext};

/// Failed authentications per client IP that are not yet in the log: the log gets at most
/// one `auth.authentication_failed` event per IP per window, carrying how many failures
/// (and throttled attempts) it stands for, so a stranger cannot grow the permanent log at
/// disk speed.
pub(crate) struct FailureLog {
    window: StdDuration,
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    /// When this IP's last event was recorded (the window runs from here).
    since: Instant,
    count: u64,
    throttled: u64,
    credential: String,
    /// The first key id seen since the last event.
    key_id: Option<String>,
    reason: String,
}

impl Pending {
    fn event(&mut self) -> ev::AuthenticationFailed {
        let e = ev::AuthenticationFailed {
            credential: std::mem::take(&mut self.credential),
            key_id: self.key_id.take(),
            reason: std::mem::take(&mut self.reason),
            count: self.count,
            throttled: self.throttled,
        };
        self.since = Instant::now();
        self.count = 0;
        self.throttled = 0;
        e
    }
}

impl FailureLog {
    pub(crate) fn new(window_secs: u64) -> Self {
        Self {
            window: StdDuration::from_secs(window_secs.max(1)),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn window(&self) -> StdDuration {
        self.window
    }

    /// Notes one failure (or, with `throttled`, one attempt refused unchecked) from `ip`.
    /// Returns the event to record now when this IP has none in the current window.
    fn note(
        &self,
        ip: &str,
        credential: &str,
        key_id: Option<&str>,
        reason: &str,
        throttled: bool,
    ) -> Option<ev::AuthenticationFailed> {
        let mut map = self.pending.lock().expect("failure log lock");
        let fresh = !map.contains_key(ip);
        let p = map.entry(ip.to_string()).or_insert_with(|| Pending {
            since: Instant::now(),
            count: 0,
            throttled: 0,
            credential: String::new(),
            key_id: None,
            reason: String::new(),
        });
        if throttled {
            p.throttled += 1;
        } else {
            p.count += 1;
        }
        if p.count + p.throttled == 1 {
            p.credential = credential.to_string();
            p.reason = reason.to_string();
        }
        if p.key_id.is_none() {
            p.key_id = key_id.map(str::to_string);
        }
        (fresh || p.since.elapsed() >= self.window).then(|| p.event())
    }

    /// Events for the IPs whose window is over with failures not yet recorded (every IP's
    /// when `all`); IPs idle for a whole window are forgotten.
    fn due(&self, all: bool) -> Vec<(String, ev::AuthenticationFailed)> {
        let mut map = self.pending.lock().expect("failure log lock");
        let mut out = Vec::new();
        map.retain(|ip, p| {
            let over = all || p.since.elapsed() >= self.window;
            if !over {
                return true;
            }
            if p.count + p.throttled == 0 {
                return false;
            }
            out.push((ip.clone(), p.event()));
            true
        });
        out
    }
}

/// How a username is recorded in `auth.login_failed`: as given when it is a valid
/// username, else as `sha256:<hex>` (it may be a password typed into the wrong field).
fn recorded_username(username: &str) -> String {
    if valid_username(username) {
        username.to_string()
    } else {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(username.as_bytes()))
        )
    }
}

impl AuthService {
    /// The user's argon2id hash, from the credentials side keyspace.
    pub(super) fn password_hash(&self, user_id: &str) -> Result<Option<String>, AuthError> {
        Ok(self
            .store
            .side_get(CREDENTIALS, user_id.as_bytes())?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    /// The user named `username` and why the password does not log them in (`None`: it
    /// does). Unknown users cost one password check too.
    async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(Option<UserRecord>, Option<&'static str>), AuthError> {
        let user = if valid_username(username) {
            users::by_username(&self.store, username)?
        } else {
            None
        };
        let stored = match &user {
            Some(u) => self.password_hash(&u.id)?,
            None => None,
        };
        let hash = stored.clone().unwrap_or_else(|| self.dummy_hash.clone());
        let ok = verify_password(password.to_string(), hash).await && stored.is_some();
        let reason = match (&user, ok) {
            (None, _) => Some("unknown user"),
            (Some(_), false) => Some("wrong password"),
            (Some(u), true) if u.disabled => Some("user disabled"),
            _ => None,
        };
        Ok((user, reason))
    }

    /// Checks the password and issues a JWT. Unknown users and wrong passwords fail alike.
    pub async fn login(
        &self,
        ctx: &EventContext,
        username: &str,
        password: &str,
    ) -> Result<(String, DateTime<Utc>), AuthError> {
        let failed = || AuthError::Unauthenticated("invalid username or password".into());
        // The head before the check: a catch-up that lands during it also counts as new.
        let before = self.store.head().0;
        let (mut user, mut reason) = self.check_password(username, password).await?;
        // Cluster mode: a user created, enabled or given a new password on another node
        // moments ago is not refused for this node's lag (a read barrier, then once more).
        if reason.is_some() && self.store.node_id().is_some() {
            self.store.sync().await?;
            if self.store.head().0 != before {
                (user, reason) = self.check_password(username, password).await?;
            }
        }
        if let Some(reason) = reason {
            crate::metrics::auth_failed(crate::metrics::Credential::Password, reason);
            self.store
                .append(
                    ctx,
                    vec![Event::LoginFailed(ev::LoginFailed {
                        username: recorded_username(username),
                        reason: reason.into(),
                    })],
                )
                .await?;
            return Err(failed());
        }
        let user = user.expect("checked above");
        let (token, claims) = self.jwt.issue(&user.id, self.ttl);
        let ctx = EventContext {
            actor: Actor::user(user.id.clone()),
            ..ctx.clone()
        };
        self.store
            .append(
                &ctx,
                vec![Event::LoginSucceeded(ev::LoginSucceeded {
                    user_id: user.id.clone(),
                    username: user.username.clone(),
                    jti: claims.jti,
                })],
            )
            .await?;
        Ok((token, credentials::timestamp(claims.exp)))
    }

    /// Revokes the JWT the principal authenticated with.
    pub async fn logout(&self, principal: &Principal, ctx: &EventContext) -> Result<(), AuthError> {
        match principal.via() {
            Via::Jwt {
                jti, expires_at, ..
            } => {
                self.store
                    .append(
                        ctx,
                        vec![Event::TokenRevoked(ev::TokenRevoked {
                            jti: jti.clone(),
                            user_id: principal.user_id().to_string(),
                            expires_at: *expires_at,
                        })],
                    )
                    .await?;
                Ok(())
            }
            Via::ApiKey { .. } | Via::System => Err(AuthError::invalid(
                "credential",
                "logout revokes JWTs; revoke an API key with DELETE /api/v1/auth/api-keys/{id}",
            )),
        }
    }

    /// Resolves a credential to a principal. A failure is noted in the [`FailureLog`] and
    /// reaches the log in aggregate.
    pub async fn authenticate(
        &self,
        cred: Credential,
        ctx: &EventContext,
    ) -> Result<Principal, AuthError> {
        self.authenticate_with(cred, || ctx.clone()).await
    }

    /// [`AuthService::authenticate`] with the event context made only when a failure is
    /// to be noted.
    pub async fn authenticate_with(
        &self,
        cred: Credential,
        ctx: impl FnOnce() -> EventContext,
    ) -> Result<Principal, AuthError> {
        let check = |cred: &Credential| match cred {
            Credential::Jwt(token) => ("jwt", self.check_jwt(token).map_err(|r| (None, r))),
            Credential::ApiKey(key) => ("api_key", self.check_key(key)),
        };
        let before = self.store.head().0;
        let (kind, mut result) = check(&cred);
        // Cluster mode: a key or user created on another node moments ago is not refused
        // for this node's lag (a read barrier, then once more). Revocations arrive by the
        // tail (within `events::shared::BACKSTOP`).
        if result.is_err()
            && self.store.node_id().is_some()
            && self.store.sync().await.is_ok()
            && self.store.head().0 != before
        {
            result = check(&cred).1;
        }
        match result {
            Ok(p) => Ok(p),
            Err((key_id, reason)) => {
                let label = match kind {
                    "jwt" => crate::metrics::Credential::Jwt,
                    _ => crate::metrics::Credential::ApiKey,
                };
                crate::metrics::auth_failed(label, &reason);
                self.note_failure(&ctx(), kind, key_id.as_deref(), &reason, false)
                    .await?;
                let shown = if kind == "api_key" && reason != "malformed API key" {
                    "Invalid API key".to_string()
                } else {
                    reason
                };
                Err(AuthError::Unauthenticated(shown))
            }
        }
    }

    /// Notes an attempt with a credential that was refused unchecked because its client IP
    /// is over its failed-authentication budget.
    pub async fn note_throttled(&self, ctx: &EventContext, jwt: bool) -> Result<(), AuthError> {
        let kind = if jwt { "jwt" } else { "api_key" };
        self.note_failure(ctx, kind, None, "throttled", true).await
    }

    async fn note_failure(
        &self,
        ctx: &EventContext,
        kind: &str,
        key_id: Option<&str>,
        reason: &str,
        throttled: bool,
    ) -> Result<(), AuthError> {
        let ip = ctx.client_ip.clone().unwrap_or_default();
        if let Some(event) = self.failures.note(&ip, kind, key_id, reason, throttled) {
            self.store
                .append(ctx, vec![Event::AuthenticationFailed(event)])
                .await?;
        }
        Ok(())
    }

    /// Records the failures whose window is over (all of them when `all`, at shutdown).
    pub async fn flush_failures(&self, all: bool) -> Result<(), AuthError> {
        for (ip, event) in self.failures.due(all) {
            let ctx = EventContext {
                client_ip: Some(ip),
                ..EventContext::system()
            };
            self.store
                .append(&ctx, vec![Event::AuthenticationFailed(event)])
                .await?;
        }
        Ok(())
    }

    /// How often [`AuthService::flush_failures`] should run.
    pub fn failure_flush_interval(&self) -> StdDuration {
        (self.failures.window() / 2).max(StdDuration::from_millis(500))
    }

    fn active_user(&self, user_id: &str) -> Result<UserRecord, String> {
        match users::get(&self.store, user_id) {
            Ok(Some(u)) if u.disabled => Err("user disabled".into()),
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err("user no longer exists".into()),
            Err(_) => Err("user lookup failed".into()),
        }
    }

    /// The principal of a JWT whose signature and expiry checked out, as things stand now.
    fn jwt_principal(
        &self,
        user_id: &str,
        jti: &str,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Principal, String> {
        if expires_at <= Utc::now() {
            return Err("token expired".into());
        }
        if revoked_tokens::is_revoked(&self.store, jti).unwrap_or(true) {
            return Err("token revoked".into());
        }
        let user = self.active_user(user_id)?;
        if user
            .tokens_valid_after
            .is_some_and(|after| issued_at < after)
        {
            return Err("token issued before the user's password change or disabling".into());
        }
        let permissions = effective(&user);
        Ok(Principal::new(
            user.id,
            user.username,
            user.role,
            Via::Jwt {
                jti: jti.to_string(),
                issued_at,
                expires_at,
            },
            permissions,
            None,
        ))
    }

    /// The record cache's generation, taken before the records behind a principal are read
    /// (see [`VerifiedCredentials`](super::verified::VerifiedCredentials)).
    fn generation(&self) -> u64 {
        self.store.record_cache().generation()
    }

    fn check_jwt(&self, token: &str) -> Result<Principal, String> {
        let hash = credential_hash(token);
        let generation = self.generation();
        if let Some(p) = self.verified_jwts.get(&hash, generation) {
            return Ok(p);
        }
        let claims = self.jwt.verify(token)?;
        let expires_at = credentials::timestamp(claims.exp);
        let principal =
            self.jwt_principal(&claims.sub, &claims.jti, claims.issued_at(), expires_at)?;
        self.verified_jwts
            .insert(hash, principal.clone(), generation, Some(expires_at));
        Ok(principal)
    }

    fn key_record(&self, id: &str) -> Result<ApiKeyRecord, String> {
        match api_keys::get(&self.store, id) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("unknown key id".into()),
            Err(_) => Err("key lookup failed".into()),
        }
    }

    /// The principal of an API key's record as things stand now.
    fn key_principal(&self, record: ApiKeyRecord) -> Result<Principal, String> {
        if record.revoked_at.is_some() {
            return Err("key revoked".into());
        }
        if record.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err("key expired".into());
        }
        let user = self.active_user(&record.user_id)?;
        let key_perms = PermissionSet::parse_names(&record.permissions).unwrap_or_default();
        let permissions = key_perms.intersect(effective(&user));
        Ok(Principal::new(
            user.id,
            user.username,
            user.role,
            Via::ApiKey {
                key_id: record.id,
                rotated_at: record.rotated_at,
            },
            permissions,
            record.rate_limit_per_minute,
        ))
    }

    fn check_key(&self, token: &str) -> Result<Principal, (Option<String>, String)> {
        let hash = credential_hash(token);
        let generation = self.generation();
        if let Some(p) = self.verified_keys.get(&hash, generation) {
            if let Some(id) = p.key_id() {
                self.touch_key(id);
            }
            return Ok(p);
        }
        let Some(material) = ApiKeyMaterial::parse(token) else {
            return Err((None, "malformed API key".into()));
        };
        let id = Some(material.id.clone());
        let record = self.key_record(&material.id).map_err(|r| (id.clone(), r))?;
        if !material.matches(&record.secret_sha256) {
            return Err((id, "wrong secret".into()));
        }
        let expires_at = record.expires_at;
        let principal = self.key_principal(record).map_err(|r| (id, r))?;
        self.touch_key(&material.id);
        self.verified_keys
            .insert(hash, principal.clone(), generation, expires_at);
        Ok(principal)
    }

    /// The principal's credential checked again against the current state (revocation,
    /// expiry, disabling, password change, permission changes), for long-lived requests
    /// such as SSE tails. `Err` says why it no longer holds.
    pub fn recheck(&self, principal: &Principal) -> Result<Principal, String> {
        match principal.via() {
            Via::Jwt {
                jti,
                issued_at,
                expires_at,
            } => self.jwt_principal(principal.user_id(), jti, *issued_at, *expires_at),
            Via::ApiKey { key_id, rotated_at } => {
                let now = self.key_principal(self.key_record(key_id)?)?;
                match now.via() {
                    Via::ApiKey { rotated_at: r, .. } if r != rotated_at => {
                        Err("key rotated".into())
                    }
                    _ => Ok(now),
                }
            }
            Via::System => Ok(principal.clone()),
        }
    }

    /// Records `last_used_at`, at most once a minute per key (not an event: it is not an action).
    fn touch_key(&self, key_id: &str) {
        let mut map = self.last_used.lock().expect("last_used lock");
        let due = map
            .get(key_id)
            .is_none_or(|t| t.elapsed() >= StdDuration::from_secs(60));
        if due {
            map.insert(key_id.to_string(), Instant::now());
            let now = Utc::now().to_rfc3339();
            let _ = self
                .store
                .side_put(LAST_USED, key_id.as_bytes(), now.as_bytes());
        }
    }

    /// Records a refused permission check.
    pub async fn record_denied(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        permission: Permission,
        route: &str,
    ) -> Result<(), AuthError> {
        self.store
            .append(
                ctx,
                vec![Event::PermissionDenied(ev::PermissionDenied {
                    principal: principal.describe(),
                    permission: permission.as_str().into(),
                    route: route.into(),
                })],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_ip_per_window_with_the_count() {
        let log = FailureLog::new(3600);
        let first = log.note("1.2.3.4", "api_key", Some("k1"), "wrong secret", false);
        assert_eq!(first.map(|e| e.count), Some(1));
        for i in 0..299 {
            let key = format!("k{i}");
            assert!(log
                .note("1.2.3.4", "api_key", Some(&key), "unknown key id", false)
                .is_none());
        }
        assert!(log
            .note("1.2.3.4", "jwt", None, "throttled", true)
            .is_none());
        // Another IP has its own window.
        assert!(log
            .note("5.6.7.8", "jwt", None, "malformed token", false)
            .is_some());
        let due = log.due(true);
        let rest = due.iter().find(|(ip, _)| ip == "1.2.3.4").unwrap();
        assert_eq!((rest.1.count, rest.1.throttled), (299, 1));
        assert_eq!(rest.1.key_id.as_deref(), Some("k0"));
        assert!(log.due(true).is_empty(), "nothing left to record");
    }

    #[test]
    fn usernames_that_fail_username_rules_are_recorded_hashed() {
        assert_eq!(recorded_username("alice"), "alice");
        let hashed = recorded_username("correct horse battery staple!");
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 7 + 64,
            "{hashed}"
        );
        assert!(!hashed.contains("horse"));
    }
}
