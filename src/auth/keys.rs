//! API keys: create, list, show, revoke and rotate, and who may do which.
//!
//! The rules (README, "Who may do what"):
//! - A JWT reaches all keys of its user; `manage_users` reaches every user's keys.
//! - An API key reaches itself, and keys of its owner whose permissions are a subset of its
//!   own; any other key needs `manage_users`.
//! - Rotating hands over the new secret, so it also needs the rotated key's permissions to
//!   be a subset of the caller's (unless the caller is the owner's JWT or the key itself).
//! - A key's `rate_limit_per_minute` may be at most the owner's limit unless the creator
//!   holds `manage_users`; a user holds at most `[auth] max_keys_per_user` live keys.

use chrono::{DateTime, Duration, Utc};

use super::credentials::ApiKeyMaterial;
use super::permissions::{Permission, PermissionSet};
use super::service::{parse_permissions, within, LAST_USED};
use super::{AuthError, AuthService, KeyView, NewApiKey, Principal, Via};
use crate::events::projections::api_keys::{self, ApiKeyRecord};
use crate::events::{self as ev, Event, EventContext};
use crate::paging::{page, Page};

/// What a caller wants to do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAction {
    Read,
    Revoke,
    Rotate,
}

fn key_permissions(r: &ApiKeyRecord) -> PermissionSet {
    PermissionSet::parse_names(&r.permissions).unwrap_or_else(|_| PermissionSet::all())
}

/// Whether `principal` may perform `action` on key `r`: `Ok`, 404 for a key it may not
/// even know of (another user's, without `manage_users`), or 403 naming what is missing.
fn check_key_access(
    principal: &Principal,
    r: &ApiKeyRecord,
    action: KeyAction,
) -> Result<(), AuthError> {
    let manages_users = principal.permissions().contains(Permission::ManageUsers);
    let own = r.user_id == principal.user_id();
    if !own && !manages_users {
        return Err(AuthError::NotFound("API key"));
    }
    let itself = principal.key_id() == Some(r.id.as_str());
    let owners_jwt = own && !matches!(principal.via(), Via::ApiKey { .. });
    if itself || owners_jwt {
        return Ok(());
    }
    let narrower = key_permissions(r).is_subset_of(principal.permissions());
    match action {
        KeyAction::Rotate => within(principal, key_permissions(r), "rotating this key"),
        KeyAction::Read | KeyAction::Revoke if narrower || manages_users => Ok(()),
        KeyAction::Read | KeyAction::Revoke => Err(AuthError::Beyond {
            required: Permission::ManageUsers,
            message: "an API key may reach only itself and keys whose permissions are a subset \
                      of its own; this one needs permission manage_users"
                .into(),
        }),
    }
}

impl AuthService {
    pub async fn create_key(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        req: NewApiKey,
    ) -> Result<(KeyView, String), AuthError> {
        let manages_users = principal.permissions().contains(Permission::ManageUsers);
        if principal.key_id().is_some() && !manages_users {
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
            .filter(|p| !principal.permissions().contains(*p))
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
            let default_rate_limit = self.default_rate_limit();
            if limit > default_rate_limit && !manages_users {
                return Err(AuthError::Beyond {
                    required: Permission::ManageUsers,
                    message: format!(
                        "rate_limit_per_minute may only lower the owner's limit ({}) \
                         unless the creator holds manage_users",
                        default_rate_limit
                    ),
                });
            }
        }
        let now = Utc::now();
        let live = api_keys::live_count_for_user(&self.store, principal.user_id(), now)?;
        if live >= self.max_keys_per_user as usize {
            return Err(AuthError::Conflict(format!(
                "a user may hold at most {} live API keys; revoke one first",
                self.max_keys_per_user
            )));
        }
        let material = ApiKeyMaterial::generate();
        let expires_at = now + Duration::days(days as i64);
        self.store
            .append(
                ctx,
                vec![Event::ApiKeyCreated(ev::ApiKeyCreated {
                    key_id: material.id.clone(),
                    user_id: principal.user_id().to_string(),
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

    /// The key `id` when `principal` may perform `action` on it.
    fn reachable_key(
        &self,
        principal: &Principal,
        id: &str,
        action: KeyAction,
    ) -> Result<ApiKeyRecord, AuthError> {
        let r = api_keys::get(&self.store, id)?.ok_or(AuthError::NotFound("API key"))?;
        check_key_access(principal, &r, action)?;
        Ok(r)
    }

    /// The keys of `user` (default: the caller's) that the caller may read, by id, one page.
    pub fn list_keys(
        &self,
        principal: &Principal,
        user: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<KeyView>, AuthError> {
        let owner = user.unwrap_or(principal.user_id());
        if owner != principal.user_id() {
            Self::require(principal, Permission::ManageUsers)?;
        }
        let keys: Vec<ApiKeyRecord> = api_keys::list_for_user(&self.store, owner)?
            .into_iter()
            .filter(|r| check_key_access(principal, r, KeyAction::Read).is_ok())
            .collect();
        let p = page(keys, |r| r.id.as_str(), cursor, limit);
        Ok(Page {
            items: p.items.into_iter().map(|r| self.key_view(r)).collect(),
            next_cursor: p.next_cursor,
        })
    }

    pub fn get_key(&self, principal: &Principal, id: &str) -> Result<KeyView, AuthError> {
        Ok(self.key_view(self.reachable_key(principal, id, KeyAction::Read)?))
    }

    pub async fn revoke_key(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        id: &str,
    ) -> Result<(), AuthError> {
        let r = self.reachable_key(principal, id, KeyAction::Revoke)?;
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
        let r = self.reachable_key(principal, id, KeyAction::Rotate)?;
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
}
