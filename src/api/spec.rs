//! The spec as committed (`openapi/openapi.json`), printed (`inferno openapi`) and served
//! (`/api/v1/openapi.json`): poem-openapi's, with every optional property marked nullable.
//!
//! An `Option` field that is `None` is sent as `null`, and `null` is accepted for one in a
//! request, but poem-openapi documents such a field only as not required. OpenAPI 3.0 says
//! `null` is not a value of a schema without `nullable: true`, and generated clients hold
//! to that: openapi-python-client's models fail on a `null` date or object. So a property
//! that is neither required nor has a `default` (poem-openapi writes one for
//! `#[oai(default)]`, which does not take `null`) gets `nullable: true`; a bare `$ref`,
//! whose siblings OpenAPI 3.0 ignores, becomes `allOf: [$ref]` first.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// poem-openapi's spec with optional properties marked nullable, as pretty JSON.
pub fn with_nullable_optionals(spec: &str) -> String {
    let mut doc: Node = serde_json::from_str(spec).expect("poem-openapi writes valid JSON");
    if let Some(Node::Object(schemas)) =
        doc.get_mut("components").and_then(|c| c.get_mut("schemas"))
    {
        for (_, schema) in schemas {
            mark_optionals(schema);
        }
    }
    serde_json::to_string_pretty(&doc).expect("serializable")
}

fn mark_optionals(schema: &mut Node) {
    let required: Vec<String> = match schema.get_mut("required") {
        Some(Node::Array(names)) => names
            .iter()
            .filter_map(|n| match n {
                Node::Scalar(Value::String(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let Some(Node::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (name, prop) in props {
        if required.contains(name) || prop.get_mut("default").is_some() {
            continue;
        }
        let Node::Object(fields) = prop else { continue };
        if let Some(i) = fields.iter().position(|(k, _)| k == "$ref") {
            let reference = fields.remove(i);
            fields.push((
                "allOf".into(),
                Node::Array(vec![Node::Object(vec![reference])]),
            ));
        }
        fields.push(("nullable".into(), Node::Scalar(Value::Bool(true))));
    }
}

/// A JSON value whose objects keep their keys in order. (serde_json's `Map` sorts them
/// unless its `preserve_order` feature is on, which would change every JSON body.)
enum Node {
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Scalar(Value),
}

impl Node {
    fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Object(fields) => fields.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Node::Array(items) => items.serialize(s),
            Node::Scalar(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.into())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut fields = Vec::new();
        while let Some(entry) = map.next_entry()? {
            fields.push(entry);
        }
        Ok(Node::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_properties_become_nullable_in_place() {
        let spec = r##"{"z": 1, "components": {"schemas": {"A": {"type": "object",
            "required": ["id"], "properties": {"id": {"type": "string"},
            "at": {"type": "string", "format": "date-time"}, "b": {"$ref": "#/B"},
            "tags": {"type": "array", "default": []}}}}}, "a": 2}"##;
        let out: Value = serde_json::from_str(&with_nullable_optionals(spec)).unwrap();
        let props = &out["components"]["schemas"]["A"]["properties"];
        assert_eq!(props["id"].get("nullable"), None);
        assert_eq!(props["at"]["nullable"], true);
        assert_eq!(props["b"]["allOf"][0]["$ref"], "#/B");
        assert_eq!(props["b"]["nullable"], true);
        assert_eq!(props["tags"].get("nullable"), None);
        let text = with_nullable_optionals(spec);
        assert!(
            text.find("\"z\"").unwrap() < text.find("\"a\"").unwrap(),
            "{text}"
        );
    }
}
