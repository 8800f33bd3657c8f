//! Runtime configuration set through the API: key → JSON value (a key set back to its
//! file/environment value is absent).

use super::*;
use serde_json::Value;

pub const KS: &str = "config";

pub struct ConfigProjection;

impl Projection for ConfigProjection {
    fn name(&self) -> &'static str {
        "config"
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
        if let Event::ConfigChanged(e) = event {
            if e.value.is_null() {
                tx.delete(KS, e.key.as_bytes().to_vec())?;
            } else {
                tx.put_json(KS, e.key.as_bytes(), &e.value)?;
            }
        }
        Ok(())
    }
}

pub fn get(store: &EventStore, key: &str) -> Result<Option<Value>, EventError> {
    read_json(store, KS, key.as_bytes())
}

pub fn get_all(store: &EventStore) -> Result<BTreeMap<String, Value>, EventError> {
    store
        .projection_scan(KS, b"")?
        .into_iter()
        .map(|(k, v)| {
            let value =
                serde_json::from_slice(&v).map_err(|e| EventError::decode("config record", e))?;
            Ok((String::from_utf8_lossy(&k).into_owned(), value))
        })
        .collect()
}
