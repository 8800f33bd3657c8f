//! The envelope around every stored event, its canonical encoding and the hash chain.
//!
//! # Hash rule (for auditors)
//!
//! Every envelope is stored, and exported by `inferno audit export`, as one JSON object with
//! exactly these keys: `seq` (integer, 1, 2, 3, ... without gaps), `id` (UUID v7, lowercase
//! hyphenated), `ts` (string, UTC, formatted `%Y-%m-%dT%H:%M:%S%.6fZ`, e.g.
//! `2025-01-31T09:08:07.123456Z`), `type` (string, e.g. `user.created`), `version`
//! (integer), `actor` (object `{"kind": "user"|"api_key"|"system", "id": string}`),
//! `request_id` (string or null), `client_ip` (string or null), `payload` (any JSON object),
//! `prev_hash` (64 lowercase hex chars) and `hash` (64 lowercase hex chars).
//!
//! To recompute `hash` in any language:
//!
//! 1. Take the envelope object and remove the `hash` key. Keep every other key, including
//!    those whose value is `null`.
//! 2. Serialize it as JSON with object keys sorted lexicographically by their UTF-8 bytes at
//!    every depth (inside `actor` and `payload` too), no whitespace between tokens, UTF-8
//!    output, strings escaped minimally: `"` → `\"`, `\` → `\\`, U+0008/0009/000A/000C/000D
//!    → `\b \t \n \f \r`, other control characters below U+0020 → `\u00xx` (lowercase hex),
//!    everything else (including `/` and non-ASCII) written as is. Numbers are written
//!    exactly as their text appears in the export, never parsed and printed again. This is
//!    what `serde_json` and Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"),
//!    ensure_ascii=False)` produce for integers and strings.
//!
//!    Events carry only integers and strings: durations in microseconds, rates in
//!    thousandths, sampling parameters as decimal text. A float's text is where two JSON
//!    libraries disagree (`1e+16` or `1e16`, and not every library reads every float back
//!    exactly), an integer's is not. Events written before this rule (`inference.queued`
//!    v1, `inference.completed` v1, `model.updated` v1) hold floats: keep their text as
//!    exported (the README's Python recipe shows how).
//! 3. `hash = lowercase_hex(SHA-256(prev_hash_as_64_ascii_hex_bytes || canonical_bytes))`.
//! 4. The first event (`seq` 1) has `prev_hash` = 64 `0` characters ([`GENESIS_HASH`]);
//!    every later event's `prev_hash` equals the previous event's `hash`.
//!
//! The chain is intact iff, for every event in `seq` order, step 3 reproduces its `hash`
//! and step 4 holds.

use super::error::EventError;
use super::raw::RawEnvelope;
use super::types::{Event, REDACTED_FIELDS};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `prev_hash` of the first event: 64 ASCII zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `ts` format of envelopes (microseconds, always six digits, `Z`).
pub const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    ApiKey,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::ApiKey => "api_key",
            ActorKind::System => "system",
        }
    }
}

/// The principal behind an event: a user id, an API key id, or `system`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    /// The server itself (start-up, schedulers, CLI maintenance).
    pub fn system() -> Actor {
        Actor {
            kind: ActorKind::System,
            id: "system".to_string(),
        }
    }
    pub fn user(id: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::User,
            id: id.into(),
        }
    }
    pub fn api_key(id: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::ApiKey,
            id: id.into(),
        }
    }
}

/// Request-scoped facts copied into every envelope of one append.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
}

impl EventContext {
    pub fn system() -> EventContext {
        EventContext {
            actor: Actor::system(),
            request_id: None,
            client_ip: None,
        }
    }
}

/// A prompt or completion as the log sees it: always its digest and length, the text only
/// when the operator enabled content recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    /// Lowercase hex SHA-256 of the UTF-8 text.
    pub sha256: String,
    /// Length in bytes.
    pub length: usize,
    pub text: Option<String>,
}

impl ContentRecord {
    pub fn new(text: &str, record_content: bool) -> ContentRecord {
        ContentRecord {
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            length: text.len(),
            text: record_content.then(|| text.to_string()),
        }
    }
}

/// One stored event. Field order here is the stored/exported order; the hash uses the
/// sorted canonical form described in the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    pub id: Uuid,
    #[serde(with = "ts_format")]
    pub ts: DateTime<Utc>,
    #[serde(rename = "type")]
    pub r#type: String,
    pub version: u32,
    pub actor: Actor,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl Envelope {
    /// The canonical bytes of a freshly built envelope, encoded from its fields: the
    /// reference for the stored-bytes view in `raw.rs`, which is what the writer and
    /// verification hash. See the module docs.
    pub(crate) fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        // Keys in sorted order: actor, client_ip, id, payload, prev_hash, request_id, seq,
        // ts, type, version.
        out.extend_from_slice(b"{\"actor\":{\"id\":");
        write_str(&mut out, &self.actor.id);
        out.extend_from_slice(b",\"kind\":");
        write_str(&mut out, self.actor.kind.as_str());
        out.extend_from_slice(b"},\"client_ip\":");
        write_opt_str(&mut out, self.client_ip.as_deref());
        out.extend_from_slice(b",\"id\":\"");
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut id).as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"payload\":");
        write_canonical_value(&mut out, &self.payload);
        out.extend_from_slice(b",\"prev_hash\":");
        write_str(&mut out, &self.prev_hash);
        out.extend_from_slice(b",\"request_id\":");
        write_opt_str(&mut out, self.request_id.as_deref());
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa_u64(self.seq, &mut [0u8; 20]));
        out.extend_from_slice(b",\"ts\":\"");
        write_ts(&mut out, &self.ts);
        out.push(b'"');
        out.extend_from_slice(b",\"type\":");
        write_str(&mut out, &self.r#type);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(itoa_u64(self.version.into(), &mut [0u8; 20]));
        out.push(b'}');
        out
    }

    /// `hex(SHA-256(prev_hash || canonical_bytes))`.
    #[cfg(test)]
    pub(crate) fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(self.canonical_bytes());
        hex::encode(h.finalize())
    }

    /// The payload fields of this event that readers must not see ([`REDACTED_FIELDS`]).
    pub fn redacted_fields(&self) -> Vec<&'static str> {
        redacted_fields(&self.r#type, self.version)
    }

    /// The envelope as readers see it: [`REDACTED_FIELDS`] left out of the payload.
    pub fn shown(&self) -> std::borrow::Cow<'_, Envelope> {
        let fields = self.redacted_fields();
        if fields.is_empty() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut env = self.clone();
        if let Some(obj) = env.payload.as_object_mut() {
            for f in fields {
                obj.remove(f);
            }
        }
        std::borrow::Cow::Owned(env)
    }

    /// One line of an export: the stored form, or for an event with redacted fields the
    /// shown form plus `"redacted": ["payload.<field>", ...]` and its Merkle `leaf_hash`
    /// (its `hash` and leaf can then be checked only as a link, and recomputed on the
    /// server with `inferno audit verify`).
    pub fn export_line(&self) -> Vec<u8> {
        let fields = self.redacted_fields();
        let mut out = self.shown().to_stored_bytes();
        if !fields.is_empty() {
            out.pop();
            out.extend_from_slice(b",\"redacted\":[");
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(&mut out, &format!("payload.{f}"));
            }
            // The Merkle leaf cannot be recomputed without the redacted fields: it is
            // shown, as the hash is (`inferno audit verify-export` trusts both for such
            // lines and counts them).
            out.extend_from_slice(b"],\"leaf_hash\":\"");
            let leaf = super::merkle::leaf_hash(&self.canonical_bytes());
            out.extend_from_slice(hex::encode(leaf.0).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out
    }

    /// Decodes the payload into a current-version [`Event`], upcasting old versions.
    pub fn event(&self) -> Result<Event, EventError> {
        Event::decode_ref(&self.r#type, self.version, &self.payload)
    }

    /// The stored (and exported) JSON form, one line, no trailing newline: the keys in
    /// declaration order, `actor` as `{"kind","id"}`, the payload canonical (sorted keys at
    /// every depth, whatever order the map keeps), `hash` last.
    pub fn to_stored_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(itoa_u64(self.seq, &mut [0u8; 20]));
        out.extend_from_slice(b",\"id\":\"");
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut id).as_bytes());
        out.extend_from_slice(b"\",\"ts\":\"");
        write_ts(&mut out, &self.ts);
        out.extend_from_slice(b"\",\"type\":");
        write_str(&mut out, &self.r#type);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(itoa_u64(self.version.into(), &mut [0u8; 20]));
        out.extend_from_slice(b",\"actor\":{\"kind\":");
        write_str(&mut out, self.actor.kind.as_str());
        out.extend_from_slice(b",\"id\":");
        write_str(&mut out, &self.actor.id);
        out.extend_from_slice(b"},\"request_id\":");
        write_opt_str(&mut out, self.request_id.as_deref());
        out.extend_from_slice(b",\"client_ip\":");
        write_opt_str(&mut out, self.client_ip.as_deref());
        out.extend_from_slice(b",\"payload\":");
        write_canonical_value(&mut out, &self.payload);
        out.extend_from_slice(b",\"prev_hash\":");
        write_str(&mut out, &self.prev_hash);
        out.extend_from_slice(b",\"hash\":");
        write_str(&mut out, &self.hash);
        out.push(b'}');
        out
    }

    pub fn from_stored_bytes(seq_hint: u64, bytes: &[u8]) -> Result<Envelope, EventError> {
        // Fast path for the layout this build writes; anything else takes the full decoder.
        if let Some(env) = RawEnvelope::parse(bytes).and_then(RawEnvelope::to_envelope) {
            return Ok(env);
        }
        serde_json::from_slice(bytes)
            .map_err(|e| EventError::decode(format!("event {seq_hint}"), e))
    }
}

/// The [`REDACTED_FIELDS`] of events of this type and version.
pub fn redacted_fields(event_type: &str, version: u32) -> Vec<&'static str> {
    REDACTED_FIELDS
        .iter()
        .filter(|(t, v, _)| *t == event_type && *v == version)
        .map(|(_, _, f)| *f)
        .collect()
}

/// Formats a timestamp the way envelopes store it.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.format(TS_FORMAT).to_string()
}

/// Appends `format_ts(ts)` to `out`, without chrono's format machinery for the usual
/// years 0..=9999 (chrono formats the rest).
pub(crate) fn write_ts(out: &mut Vec<u8>, ts: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = ts.year();
    let nanos = ts.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(format_ts(ts).as_bytes());
        return;
    }
    let micros = nanos / 1000;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, ts.month());
    put(8, 2, ts.day());
    put(11, 2, ts.hour());
    put(14, 2, ts.minute());
    put(17, 2, ts.second());
    put(20, 6, micros);
    out.extend_from_slice(&b);
}

mod ts_format {
    use chrono::{DateTime, NaiveDateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::with_capacity(32);
        super::write_ts(&mut buf, ts);
        match std::str::from_utf8(&buf) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_str(&ts.format(super::TS_FORMAT)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        NaiveDateTime::parse_from_str(&s, super::TS_FORMAT)
            .map(|n| n.and_utc())
            .map_err(serde::de::Error::custom)
    }
}

/// Decimal digits of `v`, written at the end of `buf`.
pub(crate) fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

pub(crate) fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping is exactly the minimal escaping documented above.
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes `v` compactly with object keys sorted by their bytes at every depth, whatever
/// order the map itself keeps (serde_json may be built with `preserve_order`).
pub(crate) fn write_canonical_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_canonical_value(out, v);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_value(out, item);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DurationRound, TimeDelta, TimeZone};

    #[test]
    fn write_ts_matches_chrono_formatting() {
        let mut cases = vec![
            Utc.with_ymd_and_hms(2025, 1, 31, 9, 8, 7).unwrap(),
            Utc.with_ymd_and_hms(1, 2, 3, 4, 5, 6).unwrap(),
            Utc.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc::now(),
        ];
        for extra_nanos in [1, 999, 123_456_789, 999_999_999] {
            cases.push(cases[0] + TimeDelta::nanoseconds(extra_nanos));
        }
        for ts in cases {
            let mut out = Vec::new();
            write_ts(&mut out, &ts);
            assert_eq!(String::from_utf8(out).unwrap(), format_ts(&ts), "{ts:?}");
        }
    }

    #[test]
    fn stored_bytes_are_serdes_encoding_with_a_sorted_payload() {
        let env = Envelope {
            seq: 7,
            id: Uuid::now_v7(),
            ts: Utc::now()
                .duration_trunc(TimeDelta::microseconds(1))
                .unwrap(),
            r#type: "x.y\"".into(),
            version: 2,
            actor: Actor::user("u\n1"),
            request_id: Some("r".into()),
            client_ip: None,
            payload: serde_json::json!({"b": {"d": 1, "c": [2, "é"]}, "a": null}),
            prev_hash: GENESIS_HASH.into(),
            hash: "ab".repeat(32),
        };
        assert_eq!(env.to_stored_bytes(), serde_json::to_vec(&env).unwrap());
        let back: Envelope = serde_json::from_slice(&env.to_stored_bytes()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn canonical_bytes_match_the_generic_encoder() {
        let env = Envelope {
            seq: 18_446_744_073_709_551_615,
            id: Uuid::now_v7(),
            ts: Utc::now(),
            r#type: "x.y".into(),
            version: u32::MAX,
            actor: Actor::api_key("k\u{2}"),
            request_id: None,
            client_ip: Some("::1".into()),
            payload: serde_json::json!({"b": 1, "a": [true, null, 0.5]}),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let mut v = serde_json::to_value(&env).unwrap();
        let map = v.as_object_mut().unwrap();
        map.remove("hash");
        let mut generic = Vec::new();
        write_canonical_value(&mut generic, &v);
        assert_eq!(env.canonical_bytes(), generic);
    }
}
