//! Event types: one payload struct per event, the [`Event`] enum, and upcasters.
//!
//! Events are named in the past tense and never carry passwords, key secrets, tokens or
//! email addresses (an argon2 PHC string and a secret's SHA-256 are hashes and allowed).
//! A payload that changes shape gets a new `event_version`; the old version is upcast on
//! read in [`upcast`], so stored events are never rewritten.

use super::envelope::ContentRecord;
use super::error::EventError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident => $ty:literal @ $ver:literal { $($body:tt)* } )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct $variant { $($body)* }
        )*

        /// Every event the log can hold. Each variant wraps its payload struct of the same name.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event { $( $variant($variant), )* }

        impl Event {
            /// Dotted, past-tense type name stored in the envelope, e.g. `user.created`.
            pub fn event_type(&self) -> &'static str {
                match self { $( Event::$variant(_) => $ty, )* }
            }

            /// The payload version this build writes for this event.
            pub fn event_version(&self) -> u32 {
                match self { $( Event::$variant(_) => $ver, )* }
            }

            /// The payload as JSON (what goes into `Envelope::payload`).
            pub fn payload_json(&self) -> Value {
                let r = match self { $( Event::$variant(p) => serde_json::to_value(p), )* };
                // Payloads are plain structs of strings, numbers and Values: cannot fail.
                r.unwrap_or(Value::Null)
            }

            /// The version this build writes for `event_type`, or `None` for an unknown type.
            pub fn current_version(event_type: &str) -> Option<u32> {
                match event_type { $( $ty => Some($ver), )* _ => None }
            }

            /// Every event type this build knows, e.g. for validating query filters.
            pub const ALL_TYPES: &'static [&'static str] = &[$($ty,)*];

            fn decode_current(event_type: &str, payload: Value) -> Result<Event, EventError> {
                match event_type {
                    $( $ty => serde_json::from_value(payload)
                        .map(Event::$variant)
                        .map_err(|e| EventError::decode(format!("{} v{}", $ty, $ver), e)), )*
                    other => Err(EventError::decode("event", format!("unknown event type {other:?}"))),
                }
            }

            /// [`Event::decode_current`] straight from the payload's JSON text.
            fn decode_current_slice(event_type: &str, payload: &[u8]) -> Result<Event, EventError> {
                match event_type {
                    $( $ty => serde_json::from_slice(payload)
                        .map(Event::$variant)
                        .map_err(|e| EventError::decode(format!("{} v{}", $ty, $ver), e)), )*
                    other => Err(EventError::decode("event", format!("unknown event type {other:?}"))),
                }
            }

            /// [`Event::decode_current`] without taking (or cloning) the payload.
            fn decode_current_ref(event_type: &str, payload: &Value) -> Result<Event, EventError> {
                match event_type {
                    $( $ty => <$variant as Deserialize>::deserialize(payload)
                        .map(Event::$variant)
                        .map_err(|e| EventError::decode(format!("{} v{}", $ty, $ver), e)), )*
                    other => Err(EventError::decode("event", format!("unknown event type {other:?}"))),
                }
            }
        }
    };
}

impl Event {
    /// Decodes a stored payload, upcasting older versions to the current one.
    /// A version newer than this build knows is an error (never guessed at).
    pub fn decode(event_type: &str, version: u32, payload: Value) -> Result<Event, EventError> {
        let current = Event::current_version(event_type).ok_or_else(|| {
            EventError::decode("event", format!("unknown event type {event_type:?}"))
        })?;
        if version == 0 || version > current {
            return Err(EventError::decode(
                event_type,
                format!("version {version} not supported (this build knows 1..={current})"),
            ));
        }
        let mut payload = payload;
        let mut v = version;
        while v < current {
            payload = upcast(event_type, v, payload)?;
            v += 1;
        }
        Event::decode_current(event_type, payload)
    }
}

impl Event {
    /// [`Event::decode`] from a borrowed payload: no clone unless it must be upcast.
    pub(crate) fn decode_ref(
        event_type: &str,
        version: u32,
        payload: &Value,
    ) -> Result<Event, EventError> {
        if Event::current_version(event_type) == Some(version) {
            Event::decode_current_ref(event_type, payload)
        } else {
            Event::decode(event_type, version, payload.clone())
        }
    }

    /// [`Event::decode`] from the payload's JSON text, without building a `Value` unless
    /// it must be upcast.
    pub(crate) fn decode_slice(
        event_type: &str,
        version: u32,
        payload: &[u8],
    ) -> Result<Event, EventError> {
        if Event::current_version(event_type) == Some(version) {
            Event::decode_current_slice(event_type, payload)
        } else {
            let value = serde_json::from_slice(payload)
                .map_err(|e| EventError::decode(format!("{event_type} payload"), e))?;
            Event::decode(event_type, version, value)
        }
    }
}

/// Turns a payload of `event_type` at `version` into one at `version + 1`.
///
/// Upcasters live here, next to the types, one arm per historical version.
fn upcast(event_type: &str, version: u32, payload: Value) -> Result<Value, EventError> {
    match (event_type, version) {
        // v1 had no per-key rate limit; such keys use the global limit.
        ("api_key.created", 1) => {
            let mut obj = match payload {
                Value::Object(m) => m,
                _ => {
                    return Err(EventError::decode(
                        "api_key.created v1",
                        "payload is not an object",
                    ))
                }
            };
            obj.entry("rate_limit_per_minute").or_insert(Value::Null);
            Ok(Value::Object(obj))
        }
        _ => Err(EventError::decode(
            event_type,
            format!("no upcaster from version {version}"),
        )),
    }
}

events! {
    // ---- users ----
    /// A user account was created. `password_hash` is an argon2 PHC string.
    UserCreated => "user.created" @ 1 {
        pub user_id: String,
        pub username: String,
        pub role: String,
        pub extra_permissions: Vec<String>,
        pub password_hash: String,
        /// The address itself lives in a side keyspace, never in the log.
        pub has_email: bool,
    }
    /// Role, permissions or email changed; `None` fields are unchanged.
    UserUpdated => "user.updated" @ 1 {
        pub user_id: String,
        pub role: Option<String>,
        pub extra_permissions: Option<Vec<String>>,
        pub email_changed: bool,
    }
    UserDisabled => "user.disabled" @ 1 { pub user_id: String, }
    UserEnabled => "user.enabled" @ 1 { pub user_id: String, }
    /// The user is removed and all of its API keys are revoked.
    UserDeleted => "user.deleted" @ 1 { pub user_id: String, }
    PasswordChanged => "user.password_changed" @ 1 {
        pub user_id: String,
        pub password_hash: String,
        pub by_admin: bool,
    }

    // ---- auth ----
    LoginSucceeded => "auth.login_succeeded" @ 1 {
        pub user_id: String,
        pub username: String,
        /// JWT id of the issued token (not the token).
        pub jti: String,
    }
    LoginFailed => "auth.login_failed" @ 1 { pub username: String, pub reason: String, }
    TokenRevoked => "auth.token_revoked" @ 1 {
        pub jti: String,
        pub user_id: String,
        pub expires_at: chrono::DateTime<chrono::Utc>,
    }
    AuthenticationFailed => "auth.authentication_failed" @ 1 {
        /// `"jwt"` or `"api_key"`.
        pub credential: String,
        pub key_id: Option<String>,
        pub reason: String,
    }
    PermissionDenied => "auth.permission_denied" @ 1 {
        pub principal: String,
        pub permission: String,
        pub route: String,
    }

    // ---- api keys ----
    /// Version 2 added `rate_limit_per_minute` (v1 payloads upcast to `None`).
    ApiKeyCreated => "api_key.created" @ 2 {
        pub key_id: String,
        pub user_id: String,
        pub name: String,
        pub permissions: Vec<String>,
        pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// SHA-256 (hex) of the secret; the secret itself is shown once and never stored.
        pub secret_sha256: String,
        pub rate_limit_per_minute: Option<u32>,
    }
    ApiKeyRevoked => "api_key.revoked" @ 1 { pub key_id: String, }
    ApiKeyRotated => "api_key.rotated" @ 1 { pub key_id: String, pub secret_sha256: String, }

    // ---- models ----
    ModelRegistered => "model.registered" @ 1 {
        pub model_id: String,
        pub file_name: String,
        pub sha256: String,
        pub size_bytes: u64,
    }
    ModelUpdated => "model.updated" @ 1 {
        pub model_id: String,
        pub aliases: Option<Vec<String>>,
        pub defaults: Option<Value>,
        pub enabled: Option<bool>,
    }
    ModelDeleted => "model.deleted" @ 1 { pub model_id: String, pub forced: bool, }

    // ---- config, cache, queue ----
    ConfigChanged => "config.changed" @ 1 { pub key: String, pub value: Value, }
    CacheCleared => "cache.cleared" @ 1 { pub scope: String, }
    QueuePaused => "queue.paused" @ 1 { pub reason: Option<String>, }
    QueueResumed => "queue.resumed" @ 1 {}

    // ---- jobs / inference ----
    InferenceQueued => "inference.queued" @ 1 {
        pub job_id: String,
        pub model: String,
        pub params: Value,
        pub prompt: ContentRecord,
    }
    InferenceStarted => "inference.started" @ 1 { pub job_id: String, }
    InferenceCompleted => "inference.completed" @ 1 {
        pub job_id: String,
        pub finish_reason: String,
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub timings: Value,
        pub output: ContentRecord,
    }
    InferenceFailed => "inference.failed" @ 1 { pub job_id: String, pub error: String, }
    InferenceCancelled => "inference.cancelled" @ 1 { pub job_id: String, pub reason: String, }
    JobRetried => "job.retried" @ 1 { pub job_id: String, pub attempt: u32, }
    JobDead => "job.dead" @ 1 { pub job_id: String, pub error: String, }
}
