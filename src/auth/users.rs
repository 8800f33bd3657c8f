//! Users: create, list, show, update, delete, and passwords.
//!
//! The rule against escalation (as Kubernetes RBAC has it): a caller may grant a role or
//! permissions only when they are a subset of its own effective permissions (for an API key,
//! the key's), and may manage (change, reset the password of, disable, delete) only users
//! whose permissions are a subset of its own. Password hashes and email addresses live in
//! side keyspaces written in the same atomic batch as the event, never in the log.

use bytes::Bytes;

use super::permissions::{perm, role_permissions, Granted, PermissionSet};
use super::service::{
    effective, hash_password, parse_permissions, validate_email, validate_password, validate_role,
    validate_username, verify_password, within, CREDENTIALS, EMAILS,
};
use super::{AuthError, AuthService, NewUser, Principal, UserPatch, UserView};
use crate::events::projections::users::{self, UserRecord};
use crate::events::{self as ev, Event, EventContext, SideWrite};
use crate::paging::{page, Page};

impl AuthService {
    /// The id of the user with this username.
    pub fn find_user_id(&self, username: &str) -> Result<String, AuthError> {
        users::by_username(&self.store, username)?
            .map(|u| u.id)
            .ok_or(AuthError::NotFound("user"))
    }

    fn user_view(&self, u: UserRecord) -> UserView {
        let permissions = effective(&u);
        self.user_view_with(u, permissions)
    }

    /// The view of `u` showing `permissions` as its effective ones.
    fn user_view_with(&self, u: UserRecord, permissions: PermissionSet) -> UserView {
        let email = self
            .store
            .side_get(EMAILS, u.id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok());
        UserView {
            permissions: permissions.names(),
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
        let u = users::get(&self.store, principal.user_id())?.ok_or(AuthError::NotFound("user"))?;
        Ok(self.user_view_with(u, principal.permissions()))
    }

    /// [`AuthService::me`] as `render` turns it into bytes (a response body), remembered
    /// per user and permission set until the next commit, so that asking again costs a
    /// lookup. `render` must depend on nothing but the view.
    pub fn me_rendered<E: From<AuthError>>(
        &self,
        principal: &Principal,
        render: impl FnOnce(UserView) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let generation = self.store.record_cache().generation();
        let (user_id, permissions) = (principal.user_id(), principal.permissions());
        if let Some(body) = self.rendered_me.get(user_id, permissions, generation) {
            return Ok(body);
        }
        let body = render(self.me(principal)?)?;
        self.rendered_me
            .insert(user_id, permissions, generation, body.clone());
        Ok(body)
    }

    pub(super) async fn insert_user(
        &self,
        ctx: &EventContext,
        new: NewUser,
    ) -> Result<UserView, AuthError> {
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
        let mut side = vec![SideWrite::put(CREDENTIALS, &id, password_hash)];
        if let Some(e) = &new.email {
            side.push(SideWrite::put(EMAILS, &id, e.clone()));
        }
        let event = Event::UserCreated(ev::UserCreated {
            user_id: id.clone(),
            username: new.username,
            role: new.role,
            extra_permissions: extra.names(),
            has_email: new.email.is_some(),
        });
        self.store.append_with(ctx, vec![event], side).await?;
        let u = users::get(&self.store, &id)?.ok_or(AuthError::NotFound("user"))?;
        Ok(self.user_view(u))
    }

    /// Creates a user whose role and extra permissions the caller holds itself.
    pub async fn create_user(
        &self,
        cap: &Granted<perm::ManageUsers>,
        ctx: &EventContext,
        new: NewUser,
    ) -> Result<UserView, AuthError> {
        validate_role(&new.role)?;
        let extra = parse_permissions("extra_permissions", &new.extra_permissions)?;
        let granted = role_permissions(&new.role).unwrap_or_default().union(extra);
        within(cap.principal(), granted, "creating this user")?;
        self.insert_user(ctx, new).await
    }

    /// One page of users, by id (creation order).
    pub fn list_users(
        &self,
        _cap: &Granted<perm::ManageUsers>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserView>, AuthError> {
        let p = page(users::list(&self.store)?, |u| u.id.as_str(), cursor, limit);
        Ok(Page {
            items: p.items.into_iter().map(|u| self.user_view(u)).collect(),
            next_cursor: p.next_cursor,
        })
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
        let caller = cap.principal();
        let _guard = self.user_lock.lock().await;
        let u = users::get(&self.store, id)?.ok_or(AuthError::NotFound("user"))?;
        if let Some(role) = &patch.role {
            validate_role(role)?;
        }
        let extra = match &patch.extra_permissions {
            Some(names) => Some(parse_permissions("extra_permissions", names)?),
            None => None,
        };
        if let Some(Some(e)) = &patch.email {
            validate_email(e)?;
        }
        if let Some(p) = &patch.password {
            validate_password("password", p)?;
        }
        within(caller, effective(&u), "managing this user")?;
        if patch.role.is_some() || extra.is_some() {
            let role = patch.role.as_deref().unwrap_or(&u.role);
            let extra = extra.unwrap_or_else(|| {
                PermissionSet::parse_names(&u.extra_permissions).unwrap_or_default()
            });
            let granted = role_permissions(role).unwrap_or_default().union(extra);
            within(caller, granted, "this role or these permissions")?;
        }
        if patch.disabled == Some(true) && id == caller.user_id() {
            return Err(AuthError::Conflict("you cannot disable yourself".into()));
        }
        let mut events = Vec::new();
        let mut side = Vec::new();
        let email_changed = patch.email.is_some();
        if patch.role.is_some() || extra.is_some() || email_changed {
            events.push(Event::UserUpdated(ev::UserUpdated {
                user_id: u.id.clone(),
                role: patch.role.clone(),
                extra_permissions: extra.map(PermissionSet::names),
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
            side.push(SideWrite::put(CREDENTIALS, &u.id, hash_password(p).await?));
            events.push(Event::PasswordChanged(ev::PasswordChanged {
                user_id: u.id.clone(),
                by_admin: true,
            }));
        }
        match &patch.email {
            Some(Some(e)) => side.push(SideWrite::put(EMAILS, &u.id, e.clone())),
            Some(None) => side.push(SideWrite::delete(EMAILS, &u.id)),
            None => {}
        }
        if !events.is_empty() {
            self.store.append_with(ctx, events, side).await?;
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
        if u.id == cap.principal().user_id() {
            return Err(AuthError::Conflict("you cannot delete yourself".into()));
        }
        within(cap.principal(), effective(&u), "deleting this user")?;
        let event = Event::UserDeleted(ev::UserDeleted {
            user_id: u.id.clone(),
        });
        let side = vec![
            SideWrite::delete(EMAILS, &u.id),
            SideWrite::delete(CREDENTIALS, &u.id),
        ];
        self.store.append_with(ctx, vec![event], side).await?;
        Ok(())
    }

    /// A user changes their own password, proving the old one. Every JWT issued before
    /// the change stops working.
    pub async fn change_own_password(
        &self,
        principal: &Principal,
        ctx: &EventContext,
        old: &str,
        new: &str,
    ) -> Result<(), AuthError> {
        validate_password("new_password", new)?;
        let u = users::get(&self.store, principal.user_id())?.ok_or(AuthError::NotFound("user"))?;
        let stored = self.password_hash(&u.id)?.unwrap_or_default();
        if !verify_password(old.to_string(), stored).await {
            return Err(AuthError::invalid("old_password", "old password is wrong"));
        }
        let side = vec![SideWrite::put(
            CREDENTIALS,
            &u.id,
            hash_password(new.to_string()).await?,
        )];
        let event = Event::PasswordChanged(ev::PasswordChanged {
            user_id: u.id,
            by_admin: false,
        });
        self.store.append_with(ctx, vec![event], side).await?;
        Ok(())
    }
}
