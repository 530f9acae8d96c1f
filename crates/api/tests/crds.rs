//! The committed CRDs (in `crds/` and in the Helm chart) must be exactly what the Rust
//! types generate. Regenerate with `make crds`.
//!
//! And what they generate is bounded: the API server ignores formats it does not know
//! (`uint32`), so every integer carries its own `minimum` and `maximum`; strings, lists
//! and maps carry a largest size, which keeps objects within the API server's limits
//! and the CEL rules within its cost budget.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["crds", "charts/sluice/crds"] {
        for (name, generated) in sluice_api::crds() {
            let path = root.join(dir).join(name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
            assert!(
                committed == generated,
                "{} differs from the Rust types; run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn crds_carry_the_agreed_names() {
    let crds = sluice_api::crds();
    let pools = &crds[0].1;
    for needle in [
        "group: sluice.dev",
        "kind: AgentPool",
        "- ap",
        "scope: Namespaced",
        "status: {}",
        "name: Algorithm",
        "jsonPath: .status.readyEndpoints",
    ] {
        assert!(
            pools.contains(needle),
            "AgentPool CRD lacks {needle:?}:\n{pools}"
        );
    }
    assert!(crds[1].1.contains("- rp"), "RatePolicy short name");
}

/// Every place in `schema` that lacks a bound, as `path: what is missing`.
fn unbounded(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    let has = |key: &str| schema.get(key).is_some();
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") => {
            if !has("minimum") {
                out.push(format!("{path}: minimum"));
            }
            // int64 is a format the API server knows and enforces.
            let int64 = schema.get("format").and_then(Value::as_str) == Some("int64");
            if !has("maximum") && !int64 {
                out.push(format!("{path}: maximum"));
            }
        }
        Some("string") if !has("enum") && !has("maxLength") => {
            out.push(format!("{path}: maxLength"));
        }
        Some("array") if !has("maxItems") => out.push(format!("{path}: maxItems")),
        Some("object")
            if schema
                .get("additionalProperties")
                .is_some_and(Value::is_object)
                && !has("maxProperties") =>
        {
            out.push(format!("{path}: maxProperties"));
        }
        None if int_or_string && !has("x-kubernetes-validations") => {
            out.push(format!(
                "{path}: a rule bounding the integer and the string"
            ));
        }
        _ => {}
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, child) in properties {
            unbounded(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        unbounded(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        unbounded(values, &format!("{path}.*"), out);
    }
}

#[test]
fn every_value_is_bounded() {
    for (name, yaml) in sluice_api::crds() {
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("CRD is YAML");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        for part in ["spec", "status"] {
            unbounded(&schema["properties"][part], part, &mut missing);
        }
        assert!(
            missing.is_empty(),
            "{name} lacks bounds:\n{}",
            missing.join("\n")
        );
    }
}

#[test]
fn conditions_are_a_map_keyed_on_type() {
    for (name, yaml) in sluice_api::crds() {
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("CRD is YAML");
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{name}"
        );
        let required = conditions["items"]["required"]
            .as_array()
            .expect("required");
        assert!(
            required.contains(&"type".into()),
            "{name}: a map key must be required"
        );
    }
}
