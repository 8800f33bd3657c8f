//! The committed spec is what the code generates.

#[test]
fn committed_spec_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = inferno::api::spec_json();
    let a: serde_json::Value = serde_json::from_str(&committed).unwrap_or_default();
    let b: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(
        a == b,
        "openapi/openapi.json is out of date; regenerate it with:\n  cargo run -q -- openapi > openapi/openapi.json"
    );
}
