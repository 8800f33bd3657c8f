//! `/api/v1/users`: user management (`manage_users`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::NoContent;
use super::error::ApiError;
use super::payload::StrictJson;
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
    #[oai(nullable)]
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

/// A [`User`] response body, rendered ahead: the same bytes as `Json<User>` (keys sorted
/// as its `serde_json::Map` sorts them, times as RFC 3339, `null` for no email) and the
/// same OpenAPI description, written straight from the struct instead of through a
/// `serde_json::Value`. `GET /auth/me`, every client's identity check, answers with it
/// (and keeps the rendering until the next commit).
pub struct UserJson(pub Bytes);

impl UserJson {
    pub fn render(user: User) -> Result<Bytes, ApiError> {
        serde_json::to_vec(&UserFields(&user))
            .map(Bytes::from)
            .map_err(ApiError::internal)
    }
}

struct UserFields<'a>(&'a User);

impl serde::Serialize for UserFields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Destructured so that a new field of `User` cannot be forgotten here.
        let User {
            id,
            username,
            role,
            extra_permissions,
            permissions,
            disabled,
            email,
            created_at,
            updated_at,
        } = self.0;
        let mut m = s.serialize_map(Some(9))?;
        m.serialize_entry("created_at", &created_at.to_rfc3339())?;
        m.serialize_entry("disabled", disabled)?;
        m.serialize_entry("email", email)?;
        m.serialize_entry("extra_permissions", extra_permissions)?;
        m.serialize_entry("id", id)?;
        m.serialize_entry("permissions", permissions)?;
        m.serialize_entry("role", role)?;
        m.serialize_entry("updated_at", &updated_at.to_rfc3339())?;
        m.serialize_entry("username", username)?;
        m.end()
    }
}

impl poem_openapi::payload::Payload for UserJson {
    const CONTENT_TYPE: &'static str = <Json<User> as poem_openapi::payload::Payload>::CONTENT_TYPE;

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        <Json<User> as poem_openapi::payload::Payload>::schema_ref()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <Json<User> as poem_openapi::payload::Payload>::register(registry);
    }
}

impl ApiResponse for UserJson {
    fn meta() -> poem_openapi::registry::MetaResponses {
        <Json<User> as ApiResponse>::meta()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <Json<User> as ApiResponse>::register(registry);
    }
}

impl poem::IntoResponse for UserJson {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(<Self as poem_openapi::payload::Payload>::CONTENT_TYPE)
            .body(self.0)
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
    /// Pass as `cursor` for the next page; null on the last one.
    #[oai(nullable)]
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
        body: StrictJson<CreateUser>,
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
        body: StrictJson<UpdateUser>,
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

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    #[test]
    fn user_json_writes_what_json_of_user_writes() {
        for email in [None, Some("a@example.com".to_string())] {
            let user = || User {
                id: "0190-id".into(),
                username: "alice".into(),
                role: "user".into(),
                extra_permissions: vec!["read_metrics".into()],
                permissions: vec!["read_models".into(), "read_metrics".into()],
                disabled: false,
                email: email.clone(),
                created_at: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
                updated_at: DateTime::from_timestamp(1_700_000_001, 0).unwrap(),
            };
            let direct = UserJson::render(user()).ok().unwrap();
            let via_value = serde_json::to_vec(&user().to_json().unwrap()).unwrap();
            assert_eq!(direct, via_value);
        }
    }
}
