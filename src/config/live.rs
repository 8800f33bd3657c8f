//! Settings that change while the server runs: `GET` and `PATCH /api/v1/config`.
//!
//! The effective configuration is the file and environment ([`super::Config::load`]) with
//! the runtime overrides on top. An override is a `config.changed` event (key, old and new
//! value; `null` puts the file/env value back), so it is in the audit trail and survives
//! restarts: the `config` projection holds the latest value per key and [`LiveConfig::new`]
//! lays it over the file and environment at start-up.
//!
//! A patch is checked as a whole before anything is applied: every key must exist and be
//! one of [`LIVE_KEYS`], every value must have the key's type and pass the same validation
//! as a config file. Either every change is recorded and applied, or none is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::{Map, Value};

use super::{Config, Source};

/// The settings `PATCH /api/v1/config` may change; everything else needs a restart.
pub const LIVE_KEYS: &[&str] = &[
    "limits.requests_per_minute",
    "limits.max_prompt_chars",
    "auth.login_attempts_per_minute",
    "auth.failed_auth_per_minute",
    "server.max_body_bytes",
    "models.max_upload_bytes",
    "queue.max_depth",
    "queue.max_queued_per_principal",
    "server.cors_origins",
    "server.cors_methods",
    "server.cors_headers",
    "audit.record_content",
    "logging.level",
    "cache.responses",
    "cache.max_bytes",
];

/// Settings shown as `"***"` (they may hold passwords or keys).
pub const SECRET_KEYS: &[&str] = &[
    "auth.jwt_secret",
    "storage.url",
    "queue.url",
    "nats.url",
    "nats.token",
];

pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// One effective setting, as `GET /api/v1/config` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: String,
    /// `"***"` for a secret that is set.
    pub value: Value,
    pub source: Source,
    pub live: bool,
}

/// Why one key of a patch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// One accepted change: `value` null means "back to the file/env value".
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    pub old: Value,
    pub value: Value,
}

/// A checked patch, ready to be recorded and then [`LiveConfig::commit`]ted.
#[derive(Debug)]
pub struct Plan {
    pub changes: Vec<Change>,
    config: Config,
    overrides: BTreeMap<String, Value>,
}

/// The effective configuration, swapped whole on every accepted patch.
pub struct LiveConfig {
    /// Defaults ▸ file ▸ environment.
    base: Config,
    current: ArcSwap<Config>,
    overrides: Mutex<BTreeMap<String, Value>>,
    generation: AtomicU64,
    /// Held from planning a patch until it is committed, so patches apply one at a time.
    pub update: tokio::sync::Mutex<()>,
}

/// Every leaf of the configuration by dotted key (arrays and nulls are leaves).
pub fn leaves(config: &Config) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let value = serde_json::to_value(config).unwrap_or(Value::Null);
    flatten("", &value, &mut out);
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut node = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map.entry(part.to_string()).or_insert(Value::Null);
    }
}

/// `{"limits": {"requests_per_minute": 30}}` (a JSON merge patch) as dotted keys; a key
/// may also be written dotted at the top level (`{"limits.requests_per_minute": 30}`).
fn patch_keys(patch: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in patch {
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                for (sub, value) in patch_keys(inner) {
                    out.push((format!("{k}.{sub}"), value));
                }
            }
            other => out.push((k.clone(), other.clone())),
        }
    }
    out
}

fn rebuild(base: &Config, overrides: &BTreeMap<String, Value>) -> Result<Config, String> {
    let mut json = serde_json::to_value(base).map_err(|e| e.to_string())?;
    for (key, value) in overrides {
        set_path(&mut json, key, value.clone());
    }
    let mut config: Config = serde_json::from_value(json).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| strip(&e.to_string()))?;
    config.sources = base.sources.clone();
    for key in overrides.keys() {
        config.sources.insert(key.clone(), Source::Runtime);
    }
    Ok(config)
}

fn strip(message: &str) -> String {
    message
        .trim_start_matches("configuration error: ")
        .to_string()
}

impl LiveConfig {
    /// `base` (file and environment) with `stored` (the `config` projection) laid over it.
    /// A stored key that is no longer live or no longer valid is skipped with a warning.
    pub fn new(base: Config, stored: BTreeMap<String, Value>) -> Self {
        let (overrides, current) = accepted(&base, stored);
        let current = current.unwrap_or_else(|| base.clone());
        Self {
            base,
            current: ArcSwap::from_pointee(current),
            overrides: Mutex::new(overrides),
            generation: AtomicU64::new(0),
            update: tokio::sync::Mutex::new(()),
        }
    }

    /// Lays `stored` (the `config` projection as it is now) over the base again: in
    /// cluster mode, a change another node made. Hold [`LiveConfig::update`] around it.
    pub fn reload(&self, stored: BTreeMap<String, Value>) -> Arc<Config> {
        let (overrides, current) = accepted(&self.base, stored);
        let config = Arc::new(current.unwrap_or_else(|| self.base.clone()));
        *self.overrides.lock().expect("config overrides lock") = overrides;
        self.current.store(config.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        config
    }
}

/// The stored overrides that are still live and valid, in key order, and the
/// configuration with all of them (`None`: none).
fn accepted(
    base: &Config,
    stored: BTreeMap<String, Value>,
) -> (BTreeMap<String, Value>, Option<Config>) {
    let mut overrides = BTreeMap::new();
    // The configuration with every override accepted so far.
    let mut current = None;
    for (key, value) in stored {
        if value.is_null() {
            continue;
        }
        if !is_live(&key) {
            tracing::warn!(
                key,
                "ignoring a runtime setting that can no longer change live"
            );
            continue;
        }
        let mut candidate = overrides.clone();
        candidate.insert(key.clone(), value);
        match rebuild(base, &candidate) {
            Ok(config) => {
                overrides = candidate;
                current = Some(config);
            }
            Err(error) => tracing::warn!(key, error, "ignoring an invalid runtime setting"),
        }
    }
    (overrides, current)
}

impl LiveConfig {
    /// The effective configuration now.
    pub fn get(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Bumped by every commit, so that what is built from the configuration (CORS) knows
    /// when to rebuild.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every effective setting with its source, secrets masked.
    pub fn settings(&self) -> Vec<Setting> {
        let config = self.get();
        leaves(&config)
            .into_iter()
            .map(|(key, value)| {
                let value = if SECRET_KEYS.contains(&key.as_str()) && !value.is_null() {
                    Value::String("***".into())
                } else {
                    value
                };
                Setting {
                    source: config.source_of(&key),
                    live: is_live(&key),
                    key,
                    value,
                }
            })
            .collect()
    }

    /// Checks `patch` as a whole; every refused key is named.
    pub fn plan(&self, patch: &Value) -> Result<Plan, Vec<FieldError>> {
        let Some(object) = patch.as_object() else {
            return Err(vec![FieldError {
                field: String::new(),
                message: "the body must be a JSON object of settings".into(),
            }]);
        };
        let known = leaves(&self.base);
        let current = leaves(&self.get());
        let overrides = self
            .overrides
            .lock()
            .expect("config overrides lock")
            .clone();
        let mut errors = Vec::new();
        let mut changes = Vec::new();
        let mut next = overrides.clone();
        let keys = patch_keys(object);
        if keys.is_empty() {
            errors.push(FieldError {
                field: String::new(),
                message: "the patch names no setting".into(),
            });
        }
        for (key, value) in keys {
            let error = |message: String| FieldError {
                field: key.clone(),
                message,
            };
            if !known.contains_key(&key) {
                errors.push(error("unknown setting".into()));
                continue;
            }
            if !is_live(&key) {
                errors.push(error(
                    "cannot change while the server runs: set it in the config file or \
                     environment and restart"
                        .into(),
                ));
                continue;
            }
            // Each key is checked on its own first, so each bad one is named.
            let mut alone = overrides.clone();
            if value.is_null() {
                alone.remove(&key);
            } else {
                alone.insert(key.clone(), value.clone());
            }
            if let Err(message) = rebuild(&self.base, &alone) {
                errors.push(error(message));
                continue;
            }
            let old = current.get(&key).cloned().unwrap_or(Value::Null);
            if value.is_null() {
                next.remove(&key);
            } else {
                next.insert(key.clone(), value.clone());
            }
            changes.push(Change { key, old, value });
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            return Err(errors);
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        // ...then together (rules across keys).
        let config = rebuild(&self.base, &next).map_err(|message| {
            vec![FieldError {
                field: changes.first().map(|c| c.key.clone()).unwrap_or_default(),
                message,
            }]
        })?;
        Ok(Plan {
            changes,
            config,
            overrides: next,
        })
    }

    /// Makes a recorded plan the effective configuration; returns it.
    pub fn commit(&self, plan: Plan) -> Arc<Config> {
        let config = Arc::new(plan.config);
        *self.overrides.lock().expect("config overrides lock") = plan.overrides;
        self.current.store(config.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live() -> LiveConfig {
        LiveConfig::new(Config::default(), BTreeMap::new())
    }

    #[test]
    fn a_valid_patch_changes_only_its_keys() {
        let l = live();
        let plan = l
            .plan(&json!({"limits": {"requests_per_minute": 5}, "logging.level": "debug"}))
            .unwrap();
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(plan.changes[0].key, "limits.requests_per_minute");
        assert_eq!(plan.changes[0].old, json!(60));
        assert_eq!(plan.changes[1].old, json!("info"));
        let c = l.commit(plan);
        assert_eq!(c.limits.requests_per_minute, 5);
        assert_eq!(c.logging.level, "debug");
        assert_eq!(c.source_of("limits.requests_per_minute"), Source::Runtime);
        assert_eq!(c.source_of("limits.max_prompt_chars"), Source::Default);
        assert_eq!(l.generation(), 1);
    }

    #[test]
    fn every_bad_key_is_named_and_nothing_applies() {
        let l = live();
        let errors = l
            .plan(&json!({
                "limits": {"requests_per_minute": "fast", "max_prompt_chars": 100},
                "server": {"bind": "0.0.0.0:1", "max_body_bytes": 0},
                "nope": 1,
                "logging": {"level": "[[["}
            }))
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "limits.requests_per_minute",
                "logging.level",
                "nope",
                "server.bind",
                "server.max_body_bytes"
            ]
        );
        assert!(errors[3].message.contains("restart"), "{errors:?}");
        assert_eq!(l.get().limits.max_prompt_chars, 10_000);
        assert_eq!(l.generation(), 0);
    }

    #[test]
    fn null_puts_the_file_value_back() {
        let mut base = Config::default();
        base.limits.requests_per_minute = 7;
        base.sources
            .insert("limits.requests_per_minute".into(), Source::File);
        let stored = BTreeMap::from([("limits.requests_per_minute".to_string(), json!(3))]);
        let l = LiveConfig::new(base, stored);
        assert_eq!(l.get().limits.requests_per_minute, 3);
        let plan = l
            .plan(&json!({"limits": {"requests_per_minute": null}}))
            .unwrap();
        assert_eq!(plan.changes[0].old, json!(3));
        let c = l.commit(plan);
        assert_eq!(c.limits.requests_per_minute, 7);
        assert_eq!(c.source_of("limits.requests_per_minute"), Source::File);
    }

    #[test]
    fn stored_values_that_no_longer_apply_are_skipped() {
        let stored = BTreeMap::from([
            ("server.bind".to_string(), json!("0.0.0.0:1")),
            ("limits.max_prompt_chars".to_string(), json!(0)),
            ("queue.max_depth".to_string(), json!(9)),
        ]);
        let l = LiveConfig::new(Config::default(), stored);
        let c = l.get();
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert_eq!(c.limits.max_prompt_chars, 10_000);
        assert_eq!(c.queue.max_depth, 9);
    }

    #[test]
    fn secrets_are_masked() {
        let mut base = Config::default();
        base.auth.jwt_secret = Some(super::super::Secret::new("x".repeat(40)));
        let l = LiveConfig::new(base, BTreeMap::new());
        let s = l.settings();
        let jwt = s.iter().find(|s| s.key == "auth.jwt_secret").unwrap();
        assert_eq!(jwt.value, json!("***"));
        assert!(!jwt.live);
        assert!(s.iter().all(|s| s.value != json!("x".repeat(40))));
    }
}
