//! [`StrictJson`]: the request-body payload of every route, poem-openapi's `Json<T>` without
//! its one leniency.
//!
//! poem-openapi parses a JSON number or boolean where the spec declares a string by
//! stringifying it (`{"model": 7}` would reach the handler as `"7"`). A client that sends
//! the wrong type has a bug the server should name, so before `T` parses the body it is
//! checked against `T`'s own schema for that confusion: a number or boolean where a string
//! is declared is 400 `VALIDATION_ERROR` with `details.field` naming the field
//! (`messages[1].content`). Every other type poem-openapi already parses strictly (no
//! string for an integer, no number for a boolean or an enum).
//!
//! Two things plain JSON parsing lets through are refused too, as 400 `VALIDATION_ERROR`:
//! an object with the same key twice (`{"model":"a","model":"b"}`: parsers disagree on
//! which one wins, so a proxy that checked one and a server that used the other would
//! disagree) and a NUL character in any string (no prompt, name or id needs one, and C
//! code below us would cut the string there).

use std::any::TypeId;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use poem::{FromRequest, Request, RequestBody, Result};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use serde_json::Value;

use super::error::ApiError;

/// A JSON request body of type `T`, parsed strictly (see the module docs).
#[derive(Debug, Clone)]
pub struct StrictJson<T>(pub T);

impl<T> Deref for StrictJson<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Type> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON + 'static> ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;

    async fn from_request(request: &Request, body: &mut RequestBody) -> Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        parse_body::<T>(&data).map(Self)
    }
}

/// A request body as [`StrictJson`] reads it: strict JSON (empty is `null`), then the
/// type-confusion check against `T`'s schema, then `T`'s own parse.
pub(crate) fn parse_body<T: ParseFromJSON + 'static>(data: &[u8]) -> Result<T> {
    let value = if data.is_empty() {
        Value::Null
    } else {
        parse_strict(data).map_err(|err| ParseRequestPayloadError {
            reason: err.to_string(),
        })?
    };
    if let Some(field) = misplaced_scalar_in::<T>(&value) {
        return Err(ApiError::field(&field, format!("`{field}` must be a string")).into());
    }
    let value = T::parse_from_json(Some(value)).map_err(|err| ParseRequestPayloadError {
        reason: err.into_message(),
    })?;
    Ok(value)
}

poem_openapi::impl_apirequest_for_payload!(StrictJson<T>, T: ParseFromJSON + 'static);

/// Parses `data` as one JSON value, refusing duplicate object keys and NUL characters.
pub(crate) fn parse_strict(data: &[u8]) -> serde_json::Result<Value> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(data);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A [`Value`] seed that refuses what [`parse_strict`] documents.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn no_nul<E: serde::de::Error>(s: &str) -> Result<(), E> {
    if s.contains('\0') {
        Err(E::custom("strings must not contain NUL (\\u0000)"))
    } else {
        Ok(())
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        no_nul(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        no_nul(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            no_nul(&key)?;
            let v = map.next_value_seed(self)?;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(A::Error::custom(format!("duplicate key `{shown}`")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The schemas `T` refers to, registered once per type.
fn registry_of<T: Type + 'static>() -> Arc<Registry> {
    static REGISTRIES: OnceLock<Mutex<HashMap<TypeId, Arc<Registry>>>> = OnceLock::new();
    let mut registries = REGISTRIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    registries
        .entry(TypeId::of::<T>())
        .or_insert_with(|| {
            let mut registry = Registry::new();
            T::register(&mut registry);
            Arc::new(registry)
        })
        .clone()
}

/// The path of the first number or boolean in `value` where `T`'s schema declares a string.
fn misplaced_scalar_in<T: Type + 'static>(value: &Value) -> Option<String> {
    misplaced_scalar(value, &T::schema_ref(), &registry_of::<T>(), "")
}

/// The path of the first number or boolean in `value` where `schema` declares a string.
fn misplaced_scalar(
    value: &Value,
    schema: &MetaSchemaRef,
    registry: &Registry,
    path: &str,
) -> Option<String> {
    let schema: &MetaSchema = match schema {
        MetaSchemaRef::Inline(s) => s,
        MetaSchemaRef::Reference(name) => registry.schemas.get(name)?,
    };
    if let Some(found) = schema
        .all_of
        .iter()
        .find_map(|s| misplaced_scalar(value, s, registry, path))
    {
        return Some(found);
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Number(_) | Value::Bool(_) if schema.ty == "string" => Some(path.to_string()),
        Value::Object(map) => {
            let declared = schema.properties.iter().find_map(|(name, prop)| {
                let v = map.get(*name)?;
                misplaced_scalar(v, prop, registry, &join(name))
            });
            declared.or_else(|| {
                let extra = schema.additional_properties.as_deref()?;
                map.iter()
                    .filter(|(k, _)| !schema.properties.iter().any(|(name, _)| name == k))
                    .find_map(|(k, v)| misplaced_scalar(v, extra, registry, &join(k)))
            })
        }
        Value::Array(items) => {
            let item = schema.items.as_deref()?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, v)| misplaced_scalar(v, item, registry, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem_openapi::Object;
    use serde_json::json;

    #[derive(Debug, Object)]
    struct Inner {
        text: String,
        count: Option<u32>,
    }

    #[derive(Debug, Object)]
    struct Outer {
        name: Option<String>,
        tags: Option<Vec<String>>,
        inner: Option<Vec<Inner>>,
        labels: Option<std::collections::BTreeMap<String, String>>,
        any: Option<Value>,
    }

    fn check(v: Value) -> Option<String> {
        misplaced_scalar(&v, &Outer::schema_ref(), &registry_of::<Outer>(), "")
    }

    #[test]
    fn numbers_and_booleans_where_strings_are_declared_are_named() {
        assert_eq!(check(json!({"name": 7})).as_deref(), Some("name"));
        assert_eq!(
            check(json!({"tags": ["a", true]})).as_deref(),
            Some("tags[1]")
        );
        assert_eq!(
            check(json!({"inner": [{"text": "x"}, {"text": 1.5}]})).as_deref(),
            Some("inner[1].text")
        );
        assert_eq!(
            check(json!({"labels": {"k": 3}})).as_deref(),
            Some("labels.k")
        );
    }

    #[test]
    fn duplicate_keys_and_nul_characters_are_refused() {
        let err = parse_strict(br#"{"a":1,"b":{"c":2,"c":3}}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key `c`"), "{err}");
        let err = parse_strict(br#"{"a":"x\u0000y"}"#).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(parse_strict(br#"{"a\u0000":1}"#).is_err());
        assert!(parse_strict(br#"{"a":1} {"#).is_err());
        let v = parse_strict(br#"{"a":[1,-2,1.5,true,null,"s"],"b":{}}"#).unwrap();
        assert_eq!(v, json!({"a": [1, -2, 1.5, true, null, "s"], "b": {}}));
        // Numbers keep serde_json's own reading (u64 beyond i64, floats).
        let v = parse_strict(b"[18446744073709551615, 1e300]").unwrap();
        assert_eq!(v, json!([u64::MAX, 1e300]));
    }

    #[test]
    fn well_typed_bodies_and_untyped_fields_pass() {
        assert_eq!(check(json!({"name": "a", "tags": ["b"], "any": 5})), None);
        assert_eq!(check(json!({"inner": [{"text": "x", "count": 2}]})), None);
        assert_eq!(check(json!({"name": null})), None);
        // Other mismatches are left to poem-openapi, which refuses them.
        assert_eq!(check(json!({"name": ["x"]})), None);
    }
}
