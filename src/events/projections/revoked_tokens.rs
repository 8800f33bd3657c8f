//! Revoked JWT ids, with the token's own expiry (after which the entry is moot).

use super::*;
use chrono::{DateTime, Utc};

pub const KS: &str = "revoked_tokens";

pub struct RevokedTokensProjection;

impl Projection for RevokedTokensProjection {
    fn name(&self) -> &'static str {
        "revoked_tokens"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        _env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        if let Event::TokenRevoked(e) = event {
            tx.put_json(KS, e.jti.as_bytes(), &e.expires_at)?;
        }
        Ok(())
    }
}

pub fn is_revoked(store: &EventStore, jti: &str) -> Result<bool, EventError> {
    Ok(expires_at(store, jti)?.is_some())
}

pub fn expires_at(store: &EventStore, jti: &str) -> Result<Option<DateTime<Utc>>, EventError> {
    read_json(store, KS, jti.as_bytes())
}
