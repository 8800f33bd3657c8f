//! Credential material: argon2id passwords, HS256 JWTs and `inf_` API keys.

use std::io::Write;
use std::path::Path;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Minimum password length.
pub const MIN_PASSWORD_CHARS: usize = 12;

pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing password: {e}"))
}

/// `true` when `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

pub fn random_string(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// JWT claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    /// `iat` in microseconds, so that a token issued in the same second as a password
    /// change is still ordered against it (tokens of older builds lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_us: Option<i64>,
}

impl Claims {
    /// When the token was issued, as precisely as it says.
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.iat_us
            .and_then(DateTime::from_timestamp_micros)
            .unwrap_or_else(|| timestamp(self.iat))
    }
}

/// HS256 signing and verification keys.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iat", "jti"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The configured secret, or one generated once and kept in `data_dir/jwt_secret`
    /// (mode 0600).
    pub fn load(configured: Option<&Secret>, data_dir: &Path) -> std::io::Result<Self> {
        if let Some(secret) = configured {
            return Ok(Self::new(secret.expose().as_bytes()));
        }
        let path = data_dir.join("jwt_secret");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            let existing = existing.trim();
            if existing.len() >= 32 {
                return Ok(Self::new(existing.as_bytes()));
            }
        }
        let secret = random_string(64);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path)?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()?;
        Ok(Self::new(secret.as_bytes()))
    }

    pub fn issue(&self, user_id: &str, ttl: chrono::Duration) -> (String, Claims) {
        let now = Utc::now();
        let claims = Claims {
            sub: user_id.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            iat_us: Some(now.timestamp_micros()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    /// Verifies signature, algorithm (HS256 only) and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "invalid token signature".to_string()
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    "token algorithm not accepted".to_string()
                }
                _ => "malformed token".to_string(),
            })
    }
}

pub fn timestamp(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_else(Utc::now)
}

/// API keys look like `inf_` + a 12-character lookup id + a 40-character secret, all base62.
/// The id finds the record in one map lookup; only SHA-256 of the secret is stored.
pub struct ApiKeyMaterial {
    pub id: String,
    pub secret: String,
}

pub const KEY_PREFIX: &str = "inf_";
const KEY_ID_LEN: usize = 12;
const KEY_SECRET_LEN: usize = 40;

impl ApiKeyMaterial {
    pub fn generate() -> Self {
        Self {
            id: random_string(KEY_ID_LEN),
            secret: random_string(KEY_SECRET_LEN),
        }
    }

    /// A new secret for an existing id (rotation).
    pub fn rotate(id: &str) -> Self {
        Self {
            id: id.to_string(),
            secret: random_string(KEY_SECRET_LEN),
        }
    }

    pub fn token(&self) -> String {
        format!("{KEY_PREFIX}{}{}", self.id, self.secret)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix(KEY_PREFIX)?;
        if rest.len() != KEY_ID_LEN + KEY_SECRET_LEN
            || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        Some(Self {
            id: rest[..KEY_ID_LEN].to_string(),
            secret: rest[KEY_ID_LEN..].to_string(),
        })
    }

    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// Constant-time comparison with the stored hash.
    pub fn matches(&self, stored_sha256: &str) -> bool {
        self.secret_sha256()
            .as_bytes()
            .ct_eq(stored_sha256.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        let k = ApiKeyMaterial::generate();
        let token = k.token();
        assert!(token.starts_with("inf_") && token.len() == 4 + 52);
        let parsed = ApiKeyMaterial::parse(&token).unwrap();
        assert_eq!(parsed.id, k.id);
        assert!(parsed.matches(&k.secret_sha256()));
        assert!(ApiKeyMaterial::parse("inf_short").is_none());
    }

    #[test]
    fn jwt_rejects_other_keys() {
        let a = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let b = JwtKeys::new(b"fedcba9876543210fedcba9876543210");
        let (token, claims) = a.issue("u1", chrono::Duration::hours(1));
        assert_eq!(a.verify(&token).unwrap().jti, claims.jti);
        assert!(b.verify(&token).is_err());
    }
}
