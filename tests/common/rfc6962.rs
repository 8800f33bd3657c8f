//! RFC 6962 / RFC 9162 written here from their text, independently of the server's code:
//! the canonical bytes of an exported event, leaf and node hashes, the tree hash, and the
//! inclusion and consistency proof checks.

use serde_json::Value;
use sha2::{Digest, Sha256};

pub type H = [u8; 32];

/// Independent canonical JSON per the documented rule: sorted keys at every depth,
/// compact, minimal string escaping, numbers as printed in the export.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escape(k, out);
                out.push(':');
                canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        Value::String(s) => escape(s, out),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
    }
}

pub fn escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The canonical bytes of an exported line: the envelope without `hash`.
pub fn canonical_of_line(line: &[u8]) -> String {
    let mut v: Value = serde_json::from_slice(line).unwrap();
    v.as_object_mut().unwrap().remove("hash");
    let mut s = String::new();
    canonical(&v, &mut s);
    s
}

pub fn sha(parts: &[&[u8]]) -> H {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn leaf(line: &[u8]) -> H {
    sha(&[&[0], canonical_of_line(line).as_bytes()])
}

pub fn node(l: &H, r: &H) -> H {
    sha(&[&[1], l, r])
}

/// RFC 6962 section 2.1: MTH(D[n]).
pub fn mth(d: &[H]) -> H {
    match d.len() {
        0 => sha(&[]),
        1 => d[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// RFC 9162 section 2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf: &H, path: &[H], root: &H) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 section 2.1.4.2.
pub fn verify_consistency(m: u64, n: u64, old: &H, new: &H, proof: &[H]) -> bool {
    if m == n {
        return proof.is_empty() && old == new;
    }
    if proof.is_empty() || m == 0 || m > n {
        return false;
    }
    let mut path = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, *old);
    }
    let (mut f, mut s) = (m - 1, n - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old && sr == *new
}
