//! Encoding events for the log, split around the single writer.
//!
//! Off the writer, in the appender's own task ([`prepare`]): the payload as JSON and its
//! canonical bytes, checked to be what verification reads, and the request's actor,
//! request id and client IP as JSON tokens. On the writer ([`Prepared::seal`]): only what
//! the chain forces there: `seq`, `id`, `ts` and `prev_hash` are filled in around those
//! bytes, the canonical form is assembled by copying, and it is hashed twice (the chain
//! hash and the Merkle leaf). The result is byte for byte what
//! [`Envelope::to_stored_bytes`] writes (a test checks it).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::envelope::{
    itoa_u64, write_canonical_value, write_opt_str, write_str, write_ts, Envelope, EventContext,
};
use super::error::EventError;
use super::merkle::{leaf_hash, Hash};
use super::raw::MAX_DEPTH;
use super::types::Event;

/// The request's context, encoded once for all its events.
pub(crate) struct PreparedCtx {
    pub(crate) ctx: EventContext,
    actor_id: Vec<u8>,
    request_id: Vec<u8>,
    client_ip: Vec<u8>,
}

impl PreparedCtx {
    pub(crate) fn new(ctx: &EventContext) -> PreparedCtx {
        let token = |s: &str| {
            let mut v = Vec::with_capacity(s.len() + 2);
            write_str(&mut v, s);
            v
        };
        let opt = |s: Option<&str>| {
            let mut v = Vec::with_capacity(s.map_or(4, |s| s.len() + 2));
            write_opt_str(&mut v, s);
            v
        };
        PreparedCtx {
            actor_id: token(&ctx.actor.id),
            request_id: opt(ctx.request_id.as_deref()),
            client_ip: opt(ctx.client_ip.as_deref()),
            ctx: ctx.clone(),
        }
    }
}

/// One event with everything encoded that does not depend on its place in the log.
pub(crate) struct Prepared {
    pub(crate) event: Event,
    pub(crate) payload: serde_json::Value,
    payload_bytes: Vec<u8>,
    /// The type as a JSON string token.
    type_token: Vec<u8>,
}

/// Encodes `events` for the writer; refuses an event verification could not read back.
pub(crate) fn prepare(events: Vec<Event>) -> Result<Vec<Prepared>, EventError> {
    events
        .into_iter()
        .map(|event| {
            let payload = event.payload_json();
            let mut payload_bytes = Vec::with_capacity(256);
            write_canonical_value(&mut payload_bytes, &payload);
            // The encoder writes canonical JSON by construction (sorted keys, minimal
            // escapes); what verification could still refuse is nesting deeper than it reads.
            if !within_depth(&payload, 0) {
                return Err(EventError::Invalid(format!(
                    "a {} event cannot be stored in canonical form",
                    event.event_type()
                )));
            }
            let mut type_token = Vec::with_capacity(32);
            write_str(&mut type_token, event.event_type());
            Ok(Prepared {
                event,
                payload,
                payload_bytes,
                type_token,
            })
        })
        .collect()
}

/// Where an event lands in the chain.
pub(crate) struct Place {
    pub(crate) seq: u64,
    pub(crate) id: Uuid,
    pub(crate) ts: DateTime<Utc>,
    pub(crate) prev_hash: String,
}

/// Whether every value in `v` is at most [`MAX_DEPTH`] deep, as verification reads it.
fn within_depth(v: &serde_json::Value, depth: usize) -> bool {
    use serde_json::Value;
    depth <= MAX_DEPTH
        && match v {
            Value::Object(m) => m.values().all(|x| within_depth(x, depth + 1)),
            Value::Array(a) => a.iter().all(|x| within_depth(x, depth + 1)),
            _ => true,
        }
}

/// A sealed event: its stored bytes, hash (hex) and Merkle leaf.
pub(crate) struct Sealed {
    pub(crate) stored: Vec<u8>,
    pub(crate) hash: [u8; 64],
    pub(crate) leaf: Hash,
}

impl Prepared {
    /// Places the event at `seq` after `prev_hash` (64 hex bytes). `canon` is scratch
    /// space, reused across calls.
    pub(crate) fn seal(
        &self,
        ctx: &PreparedCtx,
        seq: u64,
        id: Uuid,
        ts: &DateTime<Utc>,
        prev_hash: &[u8],
        canon: &mut Vec<u8>,
    ) -> Sealed {
        let mut seq_buf = [0u8; 20];
        let seq_raw = itoa_u64(seq, &mut seq_buf);
        let mut ver_buf = [0u8; 20];
        let version = itoa_u64(self.event.event_version().into(), &mut ver_buf);
        let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = id.hyphenated().encode_lower(&mut id_buf).as_bytes();
        let mut ts_raw = Vec::with_capacity(27);
        write_ts(&mut ts_raw, ts);
        let kind = ctx.ctx.actor.kind.as_str().as_bytes();

        // The canonical form: keys sorted, no `hash` (the rule in `envelope.rs`).
        canon.clear();
        canon.extend_from_slice(b"{\"actor\":{\"id\":");
        canon.extend_from_slice(&ctx.actor_id);
        canon.extend_from_slice(b",\"kind\":\"");
        canon.extend_from_slice(kind);
        canon.extend_from_slice(b"\"},\"client_ip\":");
        canon.extend_from_slice(&ctx.client_ip);
        canon.extend_from_slice(b",\"id\":\"");
        canon.extend_from_slice(id);
        canon.extend_from_slice(b"\",\"payload\":");
        canon.extend_from_slice(&self.payload_bytes);
        canon.extend_from_slice(b",\"prev_hash\":\"");
        canon.extend_from_slice(prev_hash);
        canon.extend_from_slice(b"\",\"request_id\":");
        canon.extend_from_slice(&ctx.request_id);
        canon.extend_from_slice(b",\"seq\":");
        canon.extend_from_slice(seq_raw);
        canon.extend_from_slice(b",\"ts\":\"");
        canon.extend_from_slice(&ts_raw);
        canon.extend_from_slice(b"\",\"type\":");
        canon.extend_from_slice(&self.type_token);
        canon.extend_from_slice(b",\"version\":");
        canon.extend_from_slice(version);
        canon.push(b'}');

        let mut h = Sha256::new();
        h.update(prev_hash);
        h.update(&canon[..]);
        let mut hash = [0u8; 64];
        // Cannot fail: the output is exactly twice the digest length.
        let _ = hex::encode_to_slice(h.finalize(), &mut hash);
        let leaf = leaf_hash(canon);

        // The stored form: declaration order, `hash` last.
        let mut stored = Vec::with_capacity(canon.len() + 90);
        stored.extend_from_slice(b"{\"seq\":");
        stored.extend_from_slice(seq_raw);
        stored.extend_from_slice(b",\"id\":\"");
        stored.extend_from_slice(id);
        stored.extend_from_slice(b"\",\"ts\":\"");
        stored.extend_from_slice(&ts_raw);
        stored.extend_from_slice(b"\",\"type\":");
        stored.extend_from_slice(&self.type_token);
        stored.extend_from_slice(b",\"version\":");
        stored.extend_from_slice(version);
        stored.extend_from_slice(b",\"actor\":{\"kind\":\"");
        stored.extend_from_slice(kind);
        stored.extend_from_slice(b"\",\"id\":");
        stored.extend_from_slice(&ctx.actor_id);
        stored.extend_from_slice(b"},\"request_id\":");
        stored.extend_from_slice(&ctx.request_id);
        stored.extend_from_slice(b",\"client_ip\":");
        stored.extend_from_slice(&ctx.client_ip);
        stored.extend_from_slice(b",\"payload\":");
        stored.extend_from_slice(&self.payload_bytes);
        stored.extend_from_slice(b",\"prev_hash\":\"");
        stored.extend_from_slice(prev_hash);
        stored.extend_from_slice(b"\",\"hash\":\"");
        stored.extend_from_slice(&hash);
        stored.extend_from_slice(b"\"}");
        Sealed { stored, hash, leaf }
    }

    /// The envelope callers get back, owning the payload.
    pub(crate) fn envelope(
        payload: serde_json::Value,
        event: &Event,
        ctx: &PreparedCtx,
        place: Place,
        hash: &[u8; 64],
    ) -> Envelope {
        let Place {
            seq,
            id,
            ts,
            prev_hash,
        } = place;
        Envelope {
            seq,
            id,
            ts,
            r#type: event.event_type().to_string(),
            version: event.event_version(),
            actor: ctx.ctx.actor.clone(),
            request_id: ctx.ctx.request_id.clone(),
            client_ip: ctx.ctx.client_ip.clone(),
            payload,
            prev_hash,
            hash: String::from_utf8_lossy(hash).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::envelope::Actor;
    use crate::events::raw::RawEnvelope;
    use crate::events::{LoginFailed, GENESIS_HASH};

    #[test]
    fn sealed_bytes_are_what_the_envelope_stores_and_verification_hashes() {
        let ctxs = [
            EventContext::system(),
            EventContext {
                actor: Actor::api_key("k\"ey\\1"),
                request_id: Some("req-\u{1}-é".into()),
                client_ip: Some("::1".into()),
            },
        ];
        let mut canon = Vec::new();
        for ctx in &ctxs {
            let pctx = PreparedCtx::new(ctx);
            let events = prepare(vec![Event::LoginFailed(LoginFailed {
                username: "a\"b\\c\n\u{7}/ü".into(),
                reason: "x".into(),
            })])
            .unwrap();
            let p = &events[0];
            let id = Uuid::now_v7();
            let ts = Utc::now();
            let sealed = p.seal(&pctx, 42, id, &ts, GENESIS_HASH.as_bytes(), &mut canon);
            let raw = RawEnvelope::parse(&sealed.stored).expect("verification reads it");
            assert!(crate::events::raw::is_canonical_value(raw.payload));
            let mut buf = Vec::new();
            assert_eq!(raw.hash(&mut buf), sealed.hash);
            assert_eq!(buf, canon);
            let place = Place {
                seq: 42,
                id,
                ts,
                prev_hash: GENESIS_HASH.to_string(),
            };
            let env = Prepared::envelope(p.payload.clone(), &p.event, &pctx, place, &sealed.hash);
            // Microseconds: what the store keeps.
            let mut env = env;
            env.ts = raw.to_envelope().unwrap().ts;
            assert_eq!(env.to_stored_bytes(), sealed.stored);
            assert_eq!(env.canonical_bytes(), canon);
        }
    }
}
