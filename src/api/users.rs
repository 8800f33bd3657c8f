//! `/api/v1/users`: user management (`manage_users`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::NoContent;
use super::error::ApiError;
use super::security::Auth;
use super::ApiTags;
use crate::auth::{perm, NewUser, UserPatch, UserView};
use crate::server::AppState;

#[derive(Debug, Object)]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: String,
    pub extra_permissions: Vec<String>,
    /// Effective permissions (for `/auth/me`: those this credential carries).
    pub permissions: Vec<String>,
    pub disabled: bool,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserView> for User {
    fn from(u: UserView) -> Self {
        Self {
            id: u.id,
            username: u.username,
            role: u.role,
            extra_permissions: u.extra_permissions,
            permissions: u.permissions,
            disabled: u.disabled,
            email: u.email,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    /// admin, user, auditor or operator; default user.
    pub role: Option<String>,
    /// Permissions beyond the role.
    #[oai(default)]
    pub extra_permissions: Vec<String>,
    pub email: Option<String>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<String>,
    pub extra_permissions: Option<Vec<String>>,
    pub disabled: Option<bool>,
    /// Password reset by an administrator.
    pub password: Option<String>,
    /// A string sets the address; null removes it.
    pub email: MaybeUndefined<String>,
}

/// One page of users.
#[derive(Debug, Object)]
pub struct UserPage {
    pub users: Vec<User>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreatedUser {
    #[oai(status = 201)]
    Created(Json<User>),
}

pub struct UsersApi;

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// List users by id (creation order), one page at a time. Requires permission
    /// `manage_users`.
    #[oai(path = "/api/v1/users", method = "get", operation_id = "list_users")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageUsers>,
        /// 1 to 1000; default 100.
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<UserPage>, ApiError> {
        let limit = super::page_limit(limit.0)?;
        let p = state
            .auth()
            .list_users(&auth.grant, cursor.0.as_deref(), limit)?;
        Ok(Json(UserPage {
            users: p.items.into_iter().map(User::from).collect(),
            next_cursor: p.next_cursor,
        }))
    }

    /// Create a user. Requires permission `manage_users`, and every permission of the
    /// role and extra permissions granted (no one grants beyond their own).
    #[oai(path = "/api/v1/users", method = "post", operation_id = "create_user")]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageUsers>,
        body: Json<CreateUser>,
    ) -> Result<CreatedUser, ApiError> {
        let b = body.0;
        let user = state
            .auth()
            .create_user(
                &auth.grant,
                &auth.ctx,
                NewUser {
                    username: b.username,
                    password: b.password,
                    role: b.role.unwrap_or_else(|| "user".into()),
                    extra_permissions: b.extra_permissions,
                    email: b.email,
                },
            )
            .await?;
        Ok(CreatedUser::Created(Json(user.into())))
    }

    /// Show a user. Requires permission `manage_users`.
    #[oai(path = "/api/v1/users/:id", method = "get", operation_id = "get_user")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageUsers>,
        id: Path<String>,
    ) -> Result<Json<User>, ApiError> {
        Ok(Json(state.auth().get_user(&auth.grant, &id)?.into()))
    }

    /// Change role, permissions, disabled flag, password or email. Requires permission
    /// `manage_users`, and every permission the user holds and is granted. A password
    /// change or disabling ends every JWT the user was issued before it.
    #[oai(
        path = "/api/v1/users/:id",
        method = "patch",
        operation_id = "update_user"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageUsers>,
        id: Path<String>,
        body: Json<UpdateUser>,
    ) -> Result<Json<User>, ApiError> {
        let b = body.0;
        let email = match b.email {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(v) => Some(Some(v)),
        };
        let user = state
            .auth()
            .update_user(
                &auth.grant,
                &auth.ctx,
                &id,
                UserPatch {
                    role: b.role,
                    extra_permissions: b.extra_permissions,
                    disabled: b.disabled,
                    password: b.password,
                    email,
                },
            )
            .await?;
        Ok(Json(user.into()))
    }

    /// Delete a user and revoke their keys. Requires permission `manage_users` and every
    /// permission the user holds.
    #[oai(
        path = "/api/v1/users/:id",
        method = "delete",
        operation_id = "delete_user"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageUsers>,
        id: Path<String>,
    ) -> Result<NoContent, ApiError> {
        state
            .auth()
            .delete_user(&auth.grant, &auth.ctx, &id)
            .await?;
        Ok(NoContent::Done)
    }
}
