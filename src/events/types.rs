//! Event types: one payload struct per event, the [`Event`] enum, and upcasters.
//!
//! Events are named in the past tense and never carry passwords, password hashes, key
//! secrets, tokens or email addresses (an API key secret's SHA-256 identifies the secret
//! and is allowed; an argon2 hash could be attacked offline and lives in a side keyspace).
//! A payload that changes shape gets a new `event_version`; the old version is upcast on
//! read in [`upcast`], so stored events are never rewritten.
//!
//! Payloads carry integers and strings, never floats: a float's JSON text is the first
//! thing that differs between an auditor's language and ours (shortest forms, exponents),
//! and an integer's is not. Durations are whole microseconds, rates thousandths, and
//! sampling parameters the decimal text of their value ([`SamplingRecord`]). Old versions
//! that held floats (`inference.queued` v1, `inference.completed` v1, `model.updated` v1)
//! are upcast to the integer forms on read.

use super::envelope::ContentRecord;
use super::error::EventError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    let mut obj = match payload {
        Value::Object(m) => m,
        _ => {
            return Err(EventError::decode(
                format!("{event_type} v{version}"),
                "payload is not an object",
            ))
        }
    };
    match (event_type, version) {
        // v1 had no per-key rate limit; such keys use the global limit.
        ("api_key.created", 1) => {
            obj.entry("rate_limit_per_minute").or_insert(Value::Null);
        }
        // v1 carried the argon2 hash; it is never shown (the credentials side keyspace
        // holds it since migration 0002).
        ("user.created", 1) | ("user.password_changed", 1) => {
            obj.remove("password_hash");
        }
        // v1 was one event per failure.
        ("auth.authentication_failed", 1) => {
            obj.insert("count".into(), Value::from(1));
            obj.insert("throttled".into(), Value::from(0));
        }
        // v1 recorded the sampling parameters with float fields.
        ("inference.queued", 1) => {
            let params = obj.remove("params").unwrap_or(Value::Null);
            obj.insert("params".into(), sampling_v1_to_record(&params));
        }
        // v1 recorded `timings` as float milliseconds and tokens per second.
        ("inference.completed", 1) => {
            let t = obj.remove("timings").unwrap_or(Value::Null);
            let f = |k: &str, scale: f64| {
                let v = t.get(k).and_then(Value::as_f64).unwrap_or(0.0) * scale;
                Value::from(v.max(0.0).round() as u64)
            };
            let timings = Map::from_iter([
                ("queue_us".to_string(), f("queue_ms", 1000.0)),
                ("prompt_us".to_string(), f("prompt_ms", 1000.0)),
                ("generate_us".to_string(), f("generate_ms", 1000.0)),
                (
                    "tokens_per_second_milli".to_string(),
                    f("tokens_per_second", 1000.0),
                ),
            ]);
            obj.insert("timings".into(), Value::Object(timings));
        }
        // v1 did not record the value it replaced.
        ("config.changed", 1) => {
            obj.entry("old").or_insert(Value::Null);
        }
        // v1 recorded a model's default sampling parameters with float fields.
        ("model.updated", 1) => {
            if let Some(d) = obj.remove("defaults") {
                let d = if d.is_null() {
                    d
                } else {
                    sampling_v1_to_record(&d)
                };
                obj.insert("defaults".into(), d);
            }
        }
        _ => {
            return Err(EventError::decode(
                event_type,
                format!("no upcaster from version {version}"),
            ))
        }
    }
    Ok(Value::Object(obj))
}

/// Payload fields of old event versions that are never shown to readers, because they held
/// what events must not (`(type, version, field)`): the API, the SSE tail and exports
/// leave them out (exports say so in `redacted`); the stored bytes keep them, so the chain
/// still verifies on the server.
pub const REDACTED_FIELDS: &[(&str, u32, &str)] = &[
    ("user.created", 1, "password_hash"),
    ("user.password_changed", 1, "password_hash"),
];

/// A v1 sampling object (`temperature` etc. as JSON numbers, `stop` as plain strings) in
/// the [`SamplingRecord`] form. The numbers were `f32` values widened to `f64`, so they
/// are narrowed back before being written as decimal text (`0.699999988079071` → `"0.7"`).
fn sampling_v1_to_record(v: &Value) -> Value {
    let decimal = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .map_or(Value::Null, |x| Value::from(decimal_text(x as f32)))
    };
    let stop: Vec<Value> = v
        .get("stop")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| serde_json::to_value(ContentRecord::new(s, true)).unwrap_or(Value::Null))
        .collect();
    let mut out = Map::new();
    out.insert(
        "max_tokens".into(),
        v.get("max_tokens").cloned().unwrap_or(Value::from(256)),
    );
    let temperature = decimal("temperature");
    out.insert(
        "temperature".into(),
        if temperature.is_null() {
            Value::from("0")
        } else {
            temperature
        },
    );
    out.insert(
        "top_k".into(),
        v.get("top_k").cloned().unwrap_or(Value::Null),
    );
    out.insert("top_p".into(), decimal("top_p"));
    out.insert("min_p".into(), decimal("min_p"));
    out.insert("repeat_penalty".into(), decimal("repeat_penalty"));
    out.insert("seed".into(), v.get("seed").cloned().unwrap_or(Value::Null));
    out.insert("stop".into(), Value::Array(stop));
    Value::Object(out)
}

/// The shortest decimal text that reads back as exactly `v` (`0.7`, `1`, `0.0001`).
pub fn decimal_text(v: f32) -> String {
    v.to_string()
}

/// Sampling parameters as events record them: every float as its decimal text, stop
/// strings as [`ContentRecord`]s (digest and length; the text only when content is
/// recorded, and always for a model's defaults, which are configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingRecord {
    pub max_tokens: u32,
    /// Decimal text, e.g. `"0"` or `"0.7"`.
    pub temperature: String,
    pub top_k: Option<i32>,
    pub top_p: Option<String>,
    pub min_p: Option<String>,
    pub repeat_penalty: Option<String>,
    pub seed: Option<u32>,
    pub stop: Vec<ContentRecord>,
}

impl SamplingRecord {
    /// The parameters as plain JSON numbers and strings, the shape the API shows (for
    /// read models, which are not hashed). `None` when a decimal text does not parse or a
    /// stop string's text was not recorded.
    pub fn to_plain_json(&self) -> Option<Value> {
        let num = |s: &str| -> Option<Value> {
            let v: f64 = s.parse().ok()?;
            serde_json::Number::from_f64(v).map(Value::Number)
        };
        let opt = |s: &Option<String>| -> Option<Value> {
            match s {
                None => Some(Value::Null),
                Some(s) => num(s),
            }
        };
        let stop = self
            .stop
            .iter()
            .map(|r| r.text.clone().map(Value::String))
            .collect::<Option<Vec<_>>>()?;
        Some(Value::Object(Map::from_iter([
            ("max_tokens".to_string(), Value::from(self.max_tokens)),
            ("temperature".to_string(), num(&self.temperature)?),
            ("top_k".to_string(), serde_json::to_value(self.top_k).ok()?),
            ("top_p".to_string(), opt(&self.top_p)?),
            ("min_p".to_string(), opt(&self.min_p)?),
            ("repeat_penalty".to_string(), opt(&self.repeat_penalty)?),
            ("seed".to_string(), serde_json::to_value(self.seed).ok()?),
            ("stop".to_string(), Value::Array(stop)),
        ])))
    }
}

/// How a job queued with an `Idempotency-Key` is recognised again: digests only, so the
/// log never holds the client's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the owner's user id, a NUL byte and the header value.
    pub key_sha256: String,
    /// SHA-256 (hex) of the request body as the server parsed it.
    pub body_sha256: String,
}

/// How long an inference took, in whole microseconds, and its decode rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimingsRecord {
    /// Waiting for a free slot.
    pub queue_us: u64,
    /// From getting a slot to the first generated token.
    pub prompt_us: u64,
    /// From the first generated token to the end.
    pub generate_us: u64,
    /// Tokens per second after the first, times 1000.
    pub tokens_per_second_milli: u64,
    /// Prompt tokens taken from the prompt-prefix cache (absent before it existed, and
    /// when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

events! {
    // ---- users ----
    /// A user account was created. Version 2 dropped `password_hash` (v1 carried the
    /// argon2 PHC string): the hash lives in a side keyspace of credentials, never in the
    /// log, and v1 payloads are shown without it.
    UserCreated => "user.created" @ 2 {
        pub user_id: String,
        pub username: String,
        pub role: String,
        pub extra_permissions: Vec<String>,
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
    /// Version 2 dropped `password_hash` (see `user.created`). Every JWT of the user issued
    /// before this event stops working.
    PasswordChanged => "user.password_changed" @ 2 {
        pub user_id: String,
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
    /// Failed authentications from one client IP, in aggregate: at most one such event per
    /// IP per `[auth] failure_event_window_secs`. `credential`, `key_id` (the first key id
    /// seen) and `reason` are those of the first failure it counts. Version 2 added `count`
    /// and `throttled` (v1: one failure per event).
    AuthenticationFailed => "auth.authentication_failed" @ 2 {
        /// `"jwt"` or `"api_key"`.
        pub credential: String,
        pub key_id: Option<String>,
        pub reason: String,
        /// Failed checks since the previous such event of this IP.
        pub count: u64,
        /// Attempts refused unchecked because the IP was over its failure budget.
        pub throttled: u64,
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
    /// Version 2 records `defaults` as a [`SamplingRecord`] (v1: float fields).
    ModelUpdated => "model.updated" @ 2 {
        pub model_id: String,
        pub aliases: Option<Vec<String>>,
        pub defaults: Option<SamplingRecord>,
        pub enabled: Option<bool>,
    }
    ModelDeleted => "model.deleted" @ 1 { pub model_id: String, pub forced: bool, }

    // ---- config, cache, queue ----
    /// A runtime setting changed (`PATCH /api/v1/config`). `value` null: back to the
    /// file/environment value. Version 2 added `old` (v1 payloads upcast to null).
    ConfigChanged => "config.changed" @ 2 { pub key: String, pub old: Value, pub value: Value, }
    CacheCleared => "cache.cleared" @ 1 { pub scope: String, }
    QueuePaused => "queue.paused" @ 1 { pub reason: Option<String>, }
    QueueResumed => "queue.resumed" @ 1 {}

    // ---- audit transparency ----
    /// A signed checkpoint of the Merkle tree over the first `tree_size` events (this event
    /// comes after them). `note` is the whole C2SP signed note, as
    /// `GET /api/v1/audit/checkpoint` serves it.
    AuditCheckpoint => "audit.checkpoint" @ 1 {
        pub tree_size: u64,
        /// Lowercase hex of the RFC 6962 root hash.
        pub root_hash: String,
        /// The signing key's note key id (8 hex digits).
        pub key_id: String,
        pub note: String,
    }

    // ---- jobs / inference ----
    /// Version 2 records `params` as a [`SamplingRecord`] (v1: float fields, plain stop
    /// strings).
    InferenceQueued => "inference.queued" @ 2 {
        pub job_id: String,
        pub model: String,
        pub params: SamplingRecord,
        pub prompt: ContentRecord,
    }
    InferenceStarted => "inference.started" @ 1 { pub job_id: String, }
    /// Version 2 records `timings` as integers ([`TimingsRecord`]; v1: float ms).
    InferenceCompleted => "inference.completed" @ 2 {
        pub job_id: String,
        pub finish_reason: String,
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub timings: TimingsRecord,
        pub output: ContentRecord,
    }
    InferenceFailed => "inference.failed" @ 1 { pub job_id: String, pub error: String, }
    InferenceCancelled => "inference.cancelled" @ 1 { pub job_id: String, pub reason: String, }
    /// A job went (back) to the queue by a queue manager's retry; `attempt` is what its
    /// attempt count was reset to (0).
    JobRetried => "job.retried" @ 1 { pub job_id: String, pub attempt: u32, }
    /// Attempts exhausted (`[queue] max_attempts`): the job stays dead with its last error.
    JobDead => "job.dead" @ 1 { pub job_id: String, pub error: String, }

    // ---- durable job queue (replaces inference.* for new jobs) ----
    /// A job accepted into the queue. Its full request (prompt text, sampling values) is
    /// kept outside the log, in the `job_payloads` side keyspace written in the same batch;
    /// the log holds what an auditor needs: digests, lengths and sampling as decimal text.
    JobQueued => "job.queued" @ 1 {
        pub job_id: String,
        /// `inference`.
        pub kind: String,
        pub model: String,
        /// User id of the principal that queued it (the job's owner).
        pub owner: String,
        /// `low`, `normal`, `high` or `critical`.
        pub priority: String,
        pub params: SamplingRecord,
        pub prompt: ContentRecord,
        /// SHA-256 of owner + `Idempotency-Key` header, and of the request body, when the
        /// client sent that header.
        pub idempotency: Option<IdempotencyRecord>,
    }
    /// A worker took the job; `attempt` counts from 1.
    JobStarted => "job.started" @ 1 { pub job_id: String, pub worker: String, pub attempt: u32, }
    JobCompleted => "job.completed" @ 1 {
        pub job_id: String,
        /// `stop` or `length`.
        pub finish_reason: String,
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub timings: TimingsRecord,
        pub output: ContentRecord,
        /// Answered from the response cache (absent before it existed, and when false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub cached: bool,
    }
    /// Failed for good (an error no retry can mend), in the error body's terms.
    JobFailed => "job.failed" @ 1 { pub job_id: String, pub code: String, pub error: String, }
    /// `by`: the principal id that cancelled, or `client` (the waiting client went away).
    /// A running job keeps its partial output (`output`).
    JobCancelled => "job.cancelled" @ 1 {
        pub job_id: String,
        pub by: String,
        pub output: Option<ContentRecord>,
        pub completion_tokens: Option<u64>,
    }
    JobPriorityChanged => "job.priority_changed" @ 1 { pub job_id: String, pub from: String, pub to: String, }
    /// Back to the queue without finishing: `lease_expired`, `worker_lost` (found running at
    /// start-up), `shutdown`, or `retry` after a retryable error. `counts_attempt` false
    /// (shutdown) takes back the attempt its start counted.
    JobRequeued => "job.requeued" @ 1 { pub job_id: String, pub reason: String, pub counts_attempt: bool, }
    /// Finished jobs with one of `statuses` that finished before `finished_before` left the
    /// queue, with their stored results (their events stay). `automatic`: by
    /// `[queue] retention_hours`.
    QueuePurged => "queue.purged" @ 1 {
        pub statuses: Vec<String>,
        pub finished_before: chrono::DateTime<chrono::Utc>,
        pub count: u64,
        pub automatic: bool,
    }
}
