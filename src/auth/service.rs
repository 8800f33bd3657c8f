//! The auth service: every operation validates, appends its event(s), and reads back from the
//! projections. Nothing here knows HTTP.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};

use super::credentials::{self, ApiKeyMaterial, JwtKeys, MIN_PASSWORD_CHARS};
use super::permissions::{perm, role_permissions, Granted, Permission, PermissionSet, ROLES};
use super::{AuthError, Credential, Principal, Via};
use crate::audit::redact::redact;
use crate::config::AuthConfig;
use crate::events::projections::api_keys::{self, ApiKeyRecord};
use crate::events::projections::revoked_tokens;
use crate::events::projections::users::{self, UserRecord};
use crate::events::{self as ev, Actor, Event, EventContext, EventStore};

const EMAILS: &str = "user_emails";
const LAST_USED: &str = "api_key_last_used";

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
    store: EventStore,
    jwt: JwtKeys,
    ttl: Duration,
    /// Verified against when the user is unknown, so both failures take about as long.
    dummy_hash: String,
    /// When each key's `last_used_at` was last written, to write it at most once a minute.
    last_used: Mutex<HashMap<String, Instant>>,
    /// Serialises user mutations so username uniqueness holds.
    user_lock: tokio::sync::Mutex<()>,
}

fn effective(user: &UserRecord) -> PermissionSet {
    let base = role_permissions(&user.role).unwrap_or_default();
    let extra = PermissionSet::parse_names(&user.extra_permissions).unwrap_or_else(|_| {
        // Unknown names cannot be stored (validated on write); be strict if they are.
        PermissionSet::default()
    });
    base.union(extra)
}

fn validate_username(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid(
            "username",
            "username must be 1 to 64 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

fn validate_password(field: &'static str, password: &str) -> Result<(), AuthError> {
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

fn validate_email(email: &str) -> Result<(), AuthError> {
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

fn validate_role(role: &str) -> Result<(), AuthError> {
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

fn parse_permissions(field: &'static str, names: &[String]) -> Result<PermissionSet, AuthError> {
    PermissionSet::parse_names(names).map_err(|unknown| AuthError::Invalid {
        field,
        message: format!("unknown permission(s): {}", unknown.join(", ")),
        entries: unknown,
    })
}

async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
        .map_err(AuthError::Internal)
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || credentials::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

impl AuthService {
    pub fn new(store: EventStore, cfg: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
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
        })
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// On a data dir with no users, creates the first admin. Returns the generated password
    /// when none was given, for the caller to print once to the terminal.
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

    // ---- login, tokens, authentication ----

    /// Checks the password and issues a JWT. Unknown users and wrong passwords fail alike.
    pub async fn login(
        &self,
        ctx: &EventContext,
        username: &str,
        password: &str,
    ) -> Result<(String, DateTime<Utc>), AuthError> {
        let failed = || AuthError::Unauthenticated("invalid username or password".into());
        let user = users::by_username(&self.store, username)?;
        let (hash, user) = match user {
            Some(u) => (u.password_hash.clone(), Some(u)),
            None => (self.dummy_hash.clone(), None),
        };
        let ok = verify_password(password.to_string(), hash).await;
        let reason = match (&user, ok) {
            (None, _) => Some("unknown user"),
            (Some(_), false) => Some("wrong password"),
            (Some(u), true) if u.disabled => Some("user disabled"),
            _ => None,
        };
        if let Some(reason) = reason {
            self.store
                .append(
                    ctx,
                    vec![Event::LoginFailed(ev::LoginFailed {
                        username: redact(&username.chars().take(64).collect::<String>()),
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
        match &principal.via {
            Via::Jwt { jti, expires_at } => {
                self.store
                    .append(
                        ctx,
                        vec![Event::TokenRevoked(ev::TokenRevoked {
                            jti: jti.clone(),
                            user_id: principal.user_id.clone(),
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

    /// Resolves a credential to a principal, recording the failure as an event.
    pub async fn authenticate(
        &self,
        cred: Credential,
        ctx: &EventContext,
    ) -> Result<Principal, AuthError> {
        let (kind, result) = match cred {
            Credential::Jwt(token) => ("jwt", self.check_jwt(&token).map_err(|r| (None, r))),
            Credential::ApiKey(key) => ("api_key", self.check_key(&key)),
        };
        match result {
            Ok(p) => Ok(p),
            Err((key_id, reason)) => {
                self.store
                    .append(
                        ctx,
                        vec![Event::AuthenticationFailed(ev::AuthenticationFailed {
                            credential: kind.into(),
                            key_id,
                            reason: reason.clone(),
                        })],
                    )
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

    fn active_user(&self, user_id: &str) -> Result<UserRecord, String> {
        match users::get(&self.store, user_id) {
            Ok(Some(u)) if u.disabled => Err("user disabled".into()),
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err("user no longer exists".into()),
            Err(_) => Err("user lookup failed".into()),
        }
    }

    fn check_jwt(&self, token: &str) -> Result<Principal, String> {
        let claims = self.jwt.verify(token)?;
        if revoked_tokens::is_revoked(&self.store, &claims.jti).unwrap_or(true) {
            return Err("token revoked".into());
        }
        let user = self.active_user(&claims.sub)?;
        Ok(Principal {
            permissions: effective(&user),
            user_id: user.id,
            username: user.username,
            role: user.role,
            via: Via::Jwt {
                jti: claims.jti,
                expires_at: credentials::timestamp(claims.exp),
            },
            rate_limit_per_minute: None,
        })
    }

    fn check_key(&self, token: &str) -> Result<Principal, (Option<String>, String)> {
        let Some(material) = ApiKeyMaterial::parse(token) else {
            return Err((None, "malformed API key".into()));
        };
        let id = Some(material.id.clone());
        let record = match api_keys::get(&self.store, &material.id) {
            Ok(Some(r)) => r,
            Ok(None) => return Err((id, "unknown key id".into())),
            Err(_) => return Err((id, "key lookup failed".into())),
        };
        if !material.matches(&record.secret_sha256) {
            return Err((id, "wrong secret".into()));
        }
        if record.revoked_at.is_some() {
            return Err((id, "key revoked".into()));
        }
        if record.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err((id, "key expired".into()));
        }
        let user = self
            .active_user(&record.user_id)
            .map_err(|r| (id.clone(), r))?;
        let key_perms = PermissionSet::parse_names(&record.permissions).unwrap_or_default();
        self.touch_key(&record.id);
        Ok(Principal {
            permissions: key_perms.intersect(effective(&user)),
            user_id: user.id,
            username: user.username,
            role: user.role,
            via: Via::ApiKey { key_id: record.id },
            rate_limit_per_minute: record.rate_limit_per_minute,
        })
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

    // ---- API keys ----

    pub async fn create_key(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        req: NewApiKey,
    ) -> Result<(KeyView, String), AuthError> {
        if matches!(principal.via, Via::ApiKey { .. })
            && !principal.permissions.contains(Permission::ManageUsers)
        {
            return Err(AuthError::Forbidden(Permission::ManageUsers));
        }
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(AuthError::invalid(
                "name",
                "name must be 1 to 100 characters",
            ));
        }
        let wanted = parse_permissions("permissions", &req.permissions)?;
        let excess: Vec<String> = wanted
            .iter()
            .filter(|p| !principal.permissions.contains(*p))
            .map(|p| p.as_str().to_string())
            .collect();
        if !excess.is_empty() {
            return Err(AuthError::Invalid {
                field: "permissions",
                message: format!(
                    "a key carries a subset of its owner's permissions; not held: {}",
                    excess.join(", ")
                ),
                entries: excess,
            });
        }
        let days = req.expires_in_days.unwrap_or(90);
        if !(1..=3650).contains(&days) {
            return Err(AuthError::invalid(
                "expires_in_days",
                "expires_in_days must be between 1 and 3650",
            ));
        }
        if let Some(limit) = req.rate_limit_per_minute {
            if !(1..=1_000_000).contains(&limit) {
                return Err(AuthError::invalid(
                    "rate_limit_per_minute",
                    "rate_limit_per_minute must be between 1 and 1000000",
                ));
            }
        }
        let material = ApiKeyMaterial::generate();
        let expires_at = Utc::now() + Duration::days(days as i64);
        self.store
            .append(
                ctx,
                vec![Event::ApiKeyCreated(ev::ApiKeyCreated {
                    key_id: material.id.clone(),
                    user_id: principal.user_id.clone(),
                    name: name.to_string(),
                    permissions: wanted.names(),
                    expires_at: Some(expires_at),
                    secret_sha256: material.secret_sha256(),
                    rate_limit_per_minute: req.rate_limit_per_minute,
                })],
            )
            .await?;
        let view = self.key_view_of(&material.id)?;
        Ok((view, material.token()))
    }

    fn key_view(&self, r: ApiKeyRecord) -> KeyView {
        let last_used_at = self
            .store
            .side_get(LAST_USED, r.id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v: Vec<u8>| String::from_utf8(v).ok())
            .and_then(|s: String| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc));
        KeyView {
            id: r.id,
            user_id: r.user_id,
            name: r.name,
            permissions: r.permissions,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at,
            rate_limit_per_minute: r.rate_limit_per_minute,
        }
    }

    fn key_view_of(&self, id: &str) -> Result<KeyView, AuthError> {
        let r = api_keys::get(&self.store, id)?.ok_or(AuthError::NotFound("API key"))?;
        Ok(self.key_view(r))
    }

    /// A key the principal may see: its own, or any with `manage_users`. Others are 404.
    fn visible_key(&self, principal: &Principal, id: &str) -> Result<ApiKeyRecord, AuthError> {
        let r = api_keys::get(&self.store, id)?.ok_or(AuthError::NotFound("API key"))?;
        if r.user_id != principal.user_id
            && !principal.permissions.contains(Permission::ManageUsers)
        {
            return Err(AuthError::NotFound("API key"));
        }
        Ok(r)
    }

    pub fn list_keys(
        &self,
        principal: &Principal,
        user: Option<&str>,
    ) -> Result<Vec<KeyView>, AuthError> {
        let owner = user.unwrap_or(&principal.user_id);
        if owner != principal.user_id && !principal.permissions.contains(Permission::ManageUsers) {
            return Err(AuthError::Forbidden(Permission::ManageUsers));
        }
        Ok(api_keys::list_for_user(&self.store, owner)?
            .into_iter()
            .map(|r| self.key_view(r))
            .collect())
    }

    pub fn get_key(&self, principal: &Principal, id: &str) -> Result<KeyView, AuthError> {
        Ok(self.key_view(self.visible_key(principal, id)?))
    }

    pub async fn revoke_key(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        id: &str,
    ) -> Result<(), AuthError> {
        let r = self.visible_key(principal, id)?;
        if r.revoked_at.is_none() {
            self.store
                .append(
                    ctx,
                    vec![Event::ApiKeyRevoked(ev::ApiKeyRevoked { key_id: r.id })],
                )
                .await?;
        }
        Ok(())
    }

    /// A new secret for the same id, name and permissions; the old secret stops working.
    pub async fn rotate_key(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        id: &str,
    ) -> Result<(KeyView, String), AuthError> {
        let r = self.visible_key(principal, id)?;
        if r.revoked_at.is_some() {
            return Err(AuthError::Conflict(
                "a revoked key cannot be rotated".into(),
            ));
        }
        let material = ApiKeyMaterial::rotate(&r.id);
        self.store
            .append(
                ctx,
                vec![Event::ApiKeyRotated(ev::ApiKeyRotated {
                    key_id: r.id.clone(),
                    secret_sha256: material.secret_sha256(),
                })],
            )
            .await?;
        Ok((self.key_view_of(&r.id)?, material.token()))
    }

    // ---- users ----

    /// The id of the user with this username.
    pub fn find_user_id(&self, username: &str) -> Result<String, AuthError> {
        users::by_username(&self.store, username)?
            .map(|u| u.id)
            .ok_or(AuthError::NotFound("user"))
    }

    fn user_view(&self, u: UserRecord) -> UserView {
        let email = self
            .store
            .side_get(EMAILS, u.id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok());
        UserView {
            permissions: effective(&u).names(),
            id: u.id,
            username: u.username,
            role: u.role,
            extra_permissions: u.extra_permissions,
            disabled: u.disabled,
            email,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }

    /// The caller's identity with the permissions this credential actually carries.
    pub fn me(&self, principal: &Principal) -> Result<UserView, AuthError> {
        let u = users::get(&self.store, &principal.user_id)?.ok_or(AuthError::NotFound("user"))?;
        let mut view = self.user_view(u);
        view.permissions = principal.permissions.names();
        Ok(view)
    }

    async fn insert_user(&self, ctx: &EventContext, new: NewUser) -> Result<UserView, AuthError> {
        validate_username(&new.username)?;
        validate_password("password", &new.password)?;
        validate_role(&new.role)?;
        let extra = parse_permissions("extra_permissions", &new.extra_permissions)?;
        if let Some(e) = &new.email {
            validate_email(e)?;
        }
        let _guard = self.user_lock.lock().await;
        if users::by_username(&self.store, &new.username)?.is_some() {
            return Err(AuthError::Conflict(format!(
                "username {:?} is taken",
                new.username
            )));
        }
        let password_hash = hash_password(new.password).await?;
        let id = uuid::Uuid::now_v7().to_string();
        if let Some(e) = &new.email {
            self.store.side_put(EMAILS, id.as_bytes(), e.as_bytes())?;
        }
        self.store
            .append(
                ctx,
                vec![Event::UserCreated(ev::UserCreated {
                    user_id: id.clone(),
                    username: new.username,
                    role: new.role,
                    extra_permissions: extra.names(),
                    password_hash,
                    has_email: new.email.is_some(),
                })],
            )
            .await?;
        let u = users::get(&self.store, &id)?.ok_or(AuthError::NotFound("user"))?;
        Ok(self.user_view(u))
    }

    pub async fn create_user(
        &self,
        _cap: &Granted<perm::ManageUsers>,
        ctx: &EventContext,
        new: NewUser,
    ) -> Result<UserView, AuthError> {
        self.insert_user(ctx, new).await
    }

    pub fn list_users(
        &self,
        _cap: &Granted<perm::ManageUsers>,
    ) -> Result<Vec<UserView>, AuthError> {
        Ok(users::list(&self.store)?
            .into_iter()
            .map(|u| self.user_view(u))
            .collect())
    }

    pub fn get_user(
        &self,
        _cap: &Granted<perm::ManageUsers>,
        id: &str,
    ) -> Result<UserView, AuthError> {
        let u = users::get(&self.store, id)?.ok_or(AuthError::NotFound("user"))?;
        Ok(self.user_view(u))
    }

    pub async fn update_user(
        &self,
        cap: &Granted<perm::ManageUsers>,
        ctx: &EventContext,
        id: &str,
        patch: UserPatch,
    ) -> Result<UserView, AuthError> {
        let _guard = self.user_lock.lock().await;
        let u = users::get(&self.store, id)?.ok_or(AuthError::NotFound("user"))?;
        if let Some(role) = &patch.role {
            validate_role(role)?;
        }
        let extra = match &patch.extra_permissions {
            Some(names) => Some(parse_permissions("extra_permissions", names)?.names()),
            None => None,
        };
        if let Some(Some(e)) = &patch.email {
            validate_email(e)?;
        }
        if let Some(p) = &patch.password {
            validate_password("password", p)?;
        }
        if patch.disabled == Some(true) && id == cap.principal().user_id {
            return Err(AuthError::Conflict("you cannot disable yourself".into()));
        }
        let mut events = Vec::new();
        let email_changed = patch.email.is_some();
        if patch.role.is_some() || extra.is_some() || email_changed {
            events.push(Event::UserUpdated(ev::UserUpdated {
                user_id: u.id.clone(),
                role: patch.role.clone(),
                extra_permissions: extra,
                email_changed,
            }));
        }
        match patch.disabled {
            Some(true) if !u.disabled => events.push(Event::UserDisabled(ev::UserDisabled {
                user_id: u.id.clone(),
            })),
            Some(false) if u.disabled => events.push(Event::UserEnabled(ev::UserEnabled {
                user_id: u.id.clone(),
            })),
            _ => {}
        }
        if let Some(p) = patch.password {
            events.push(Event::PasswordChanged(ev::PasswordChanged {
                user_id: u.id.clone(),
                password_hash: hash_password(p).await?,
                by_admin: true,
            }));
        }
        match &patch.email {
            Some(Some(e)) => self.store.side_put(EMAILS, u.id.as_bytes(), e.as_bytes())?,
            Some(None) => self.store.side_delete(EMAILS, u.id.as_bytes())?,
            None => {}
        }
        if !events.is_empty() {
            self.store.append(ctx, events).await?;
        }
        let u = users::get(&self.store, id)?.ok_or(AuthError::NotFound("user"))?;
        Ok(self.user_view(u))
    }

    pub async fn delete_user(
        &self,
        cap: &Granted<perm::ManageUsers>,
        ctx: &EventContext,
        id: &str,
    ) -> Result<(), AuthError> {
        let _guard = self.user_lock.lock().await;
        let u = users::get(&self.store, id)?.ok_or(AuthError::NotFound("user"))?;
        if u.id == cap.principal().user_id {
            return Err(AuthError::Conflict("you cannot delete yourself".into()));
        }
        self.store
            .append(
                ctx,
                vec![Event::UserDeleted(ev::UserDeleted {
                    user_id: u.id.clone(),
                })],
            )
            .await?;
        self.store.side_delete(EMAILS, u.id.as_bytes())?;
        Ok(())
    }

    /// A user changes their own password, proving the old one.
    pub async fn change_own_password(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        old: &str,
        new: &str,
    ) -> Result<(), AuthError> {
        validate_password("new_password", new)?;
        let u = users::get(&self.store, &principal.user_id)?.ok_or(AuthError::NotFound("user"))?;
        if !verify_password(old.to_string(), u.password_hash.clone()).await {
            return Err(AuthError::invalid("old_password", "old password is wrong"));
        }
        self.store
            .append(
                ctx,
                vec![Event::PasswordChanged(ev::PasswordChanged {
                    user_id: u.id,
                    password_hash: hash_password(new.to_string()).await?,
                    by_admin: false,
                })],
            )
            .await?;
        Ok(())
    }
}
