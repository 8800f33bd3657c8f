//! The eleven permissions, roles as named sets of them, and the capability types that prove
//! a check was made.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::Principal;

macro_rules! permissions {
    ($($variant:ident => $name:literal, $marker:ident;)*) => {
        /// One fine-grained right.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Permission { $($variant),* }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name),* }
            }

            pub fn parse(name: &str) -> Option<Permission> {
                match name { $($name => Some(Permission::$variant),)* _ => None }
            }
        }

        /// Zero-sized markers, one per permission, for [`Granted`].
        pub mod perm {
            $(
                #[doc = concat!("The `", $name, "` permission.")]
                pub struct $marker;
                impl super::Perm for $marker {
                    const PERMISSION: super::Permission = super::Permission::$variant;
                }
            )*
        }
    };
}

permissions! {
    ReadModels => "read_models", ReadModels;
    WriteModels => "write_models", WriteModels;
    DeleteModels => "delete_models", DeleteModels;
    RunInference => "run_inference", RunInference;
    ManageCache => "manage_cache", ManageCache;
    ReadMetrics => "read_metrics", ReadMetrics;
    WriteConfig => "write_config", WriteConfig;
    ManageUsers => "manage_users", ManageUsers;
    ViewAuditLogs => "view_audit_logs", ViewAuditLogs;
    UseStreaming => "use_streaming", UseStreaming;
    ManageQueue => "manage_queue", ManageQueue;
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionSet(u16);

impl PermissionSet {
    pub fn all() -> Self {
        Self::from_iter(Permission::ALL.iter().copied())
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & (1 << p as u16) != 0
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= 1 << p as u16;
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_string()).collect()
    }

    /// Parses names, returning the unknown ones as the error.
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<Self, Vec<String>> {
        let mut set = Self::default();
        let mut unknown = Vec::new();
        for n in names {
            match Permission::parse(n.as_ref()) {
                Some(p) => set.insert(p),
                None => unknown.push(n.as_ref().to_string()),
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(unknown)
        }
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut s = Self::default();
        for p in iter {
            s.insert(p);
        }
        s
    }
}

/// The built-in roles.
pub const ROLES: &[&str] = &["admin", "user", "auditor", "operator"];

/// The permissions of a role, or `None` for an unknown role.
pub fn role_permissions(role: &str) -> Option<PermissionSet> {
    use Permission::*;
    let set = match role {
        "admin" => PermissionSet::all(),
        "user" => [ReadModels, RunInference, UseStreaming]
            .into_iter()
            .collect(),
        "auditor" => [ViewAuditLogs, ReadMetrics].into_iter().collect(),
        "operator" => [ReadModels, ManageQueue, ManageCache, ReadMetrics]
            .into_iter()
            .collect(),
        _ => return None,
    };
    Some(set)
}

/// A permission known at compile time.
pub trait Perm: Send + Sync + 'static {
    const PERMISSION: Permission;
}

/// Proof that a principal holds permission `P`. It can only be made by
/// [`Principal::grant`], so code that takes a `&Granted<P>` cannot be reached without the
/// check.
pub struct Granted<P: Perm> {
    principal: Principal,
    _perm: PhantomData<P>,
}

impl<P: Perm> Granted<P> {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// The principal lacks a permission.
#[derive(Debug, Clone, thiserror::Error)]
#[error("missing permission {0}")]
pub struct Denied(pub Permission);

impl Principal {
    /// Checks `P` and yields the capability.
    pub fn grant<P: Perm>(&self) -> Result<Granted<P>, Denied> {
        if self.permissions().contains(P::PERMISSION) {
            Ok(Granted {
                principal: self.clone(),
                _perm: PhantomData,
            })
        } else {
            Err(Denied(P::PERMISSION))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_have_the_documented_permissions() {
        assert_eq!(role_permissions("admin").unwrap().iter().count(), 11);
        let user = role_permissions("user").unwrap();
        assert_eq!(
            user.names(),
            ["read_models", "run_inference", "use_streaming"]
        );
        assert!(role_permissions("root").is_none());
    }

    #[test]
    fn parse_reports_unknown_names() {
        let err = PermissionSet::parse_names(&["read_models", "fly"]).unwrap_err();
        assert_eq!(err, ["fly"]);
    }
}
