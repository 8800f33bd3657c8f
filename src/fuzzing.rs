//! Entry points of the `cargo fuzz` targets (`fuzz/`), one per parser or encoder that
//! reads what a client, a file or the disk hands us. Each takes arbitrary bytes, must never
//! panic on them, and checks the property its target states (a round trip, two decoders
//! agreeing); a violated property panics, which libFuzzer reports as a crash. Not an API.

use crate::auth::credentials::{ApiKeyMaterial, JwtKeys};
use crate::events::{Envelope, RawEnvelope};

pub use crate::api::fuzz::{chat_request, inference_request};

/// Stored event bytes: the zero-copy reader and the full decoder agree whenever both
/// accept, an accepted envelope re-encodes to bytes that decode to the same envelope, and
/// reading its typed event (upcasting old versions) fails cleanly or succeeds.
pub fn event_decode(data: &[u8]) {
    let raw = RawEnvelope::parse(data);
    if let Some(raw) = &raw {
        let mut a = Vec::new();
        let mut b = Vec::new();
        assert_eq!(
            raw.hash(&mut a),
            raw.hash(&mut b),
            "hashing is deterministic"
        );
        let _ = raw.type_str();
    }
    let fast = raw.and_then(RawEnvelope::to_envelope);
    let full = serde_json::from_slice::<Envelope>(data).ok();
    if let (Some(fast), Some(full)) = (&fast, &full) {
        assert_eq!(
            fast, full,
            "the zero-copy reader and the full decoder disagree"
        );
    }
    if let Ok(env) = Envelope::from_stored_bytes(0, data) {
        let _ = env.event();
        let again = Envelope::from_stored_bytes(0, &env.to_stored_bytes())
            .expect("an envelope's own stored bytes decode");
        assert_eq!(again, env, "stored bytes round trip");
        assert_eq!(
            again.canonical_bytes(),
            env.canonical_bytes(),
            "canonical bytes are stable"
        );
    }
}

/// Any JSON value: its canonical encoding parses back to the same value, is canonical by
/// the verifier's own check, and encoding it again gives the same bytes (so its hash is
/// stable).
pub fn canonical_encode(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut once = Vec::new();
    crate::events::write_canonical_value(&mut once, &value);
    let back: serde_json::Value =
        serde_json::from_slice(&once).expect("the canonical encoding is JSON");
    assert_eq!(back, value, "decode(encode(x)) == x");
    let mut twice = Vec::new();
    crate::events::write_canonical_value(&mut twice, &back);
    assert_eq!(once, twice, "encoding is stable");
    assert!(
        depth(&value) > crate::events::MAX_DEPTH || crate::events::is_canonical_value(&once),
        "the verifier accepts the encoder's output: {}",
        String::from_utf8_lossy(&once)
    );
}

/// A GGUF header from arbitrary bytes: metadata or a clean error, never a panic, an
/// allocation beyond the input's size or a hang.
pub fn gguf_header(data: &[u8]) {
    let _ = crate::inference::gguf::parse_slice(data);
}

/// An API key: a parsed key prints back as the same token.
pub fn api_key(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = ApiKeyMaterial::parse(token) {
        assert_eq!(key.token(), token, "an accepted key round trips");
    }
}

/// A bearer token checked as a JWT: refused cleanly unless signed with our key.
pub fn jwt(data: &[u8]) {
    static KEYS: std::sync::OnceLock<JwtKeys> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| JwtKeys::new(b"fuzzing-secret-fuzzing-secret-0123456789"));
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = keys.verify(token) {
        // Only a token carrying our HS256 signature can get here; the fuzzer cannot forge
        // one, so this is a signature bypass.
        panic!("an arbitrary token verified: {claims:?}");
    }
}

/// How deep `v` nests (a scalar is 0).
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
