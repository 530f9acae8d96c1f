//! Checking plain objects against the CRDs' own OpenAPI schemas, the ones [`crds`]
//! generates, so that a manifest read from a file is held to exactly what the API
//! server would hold it to.
//!
//! Two checks, each where it fits:
//!
//! * [`unknown_fields`] finds the fields the API server would prune from a document
//!   (the ones its schema does not declare), with the closest declared field as a
//!   suggestion. Only the raw document has them, so [`manifest`](crate::manifest)
//!   runs it before the typed parse drops them.
//! * [`out_of_bounds`] finds values outside the schema's `minimum`, `maximum`,
//!   `minLength`, `maxLength`, `minItems`, `maxItems` and `maxProperties`. The compile
//!   step runs it on every object, so that a file is refused what `kubectl apply`
//!   would be refused; objects from the API server always pass.
//!
//! Types and enums are left to the typed parse, patterns to the types that parse
//! them ([`Duration`](crate::Duration)) and to compile, and the CEL rules
//! (`x-kubernetes-validations`) to compile's own checks, which say the same thing.
//!
//! [`crds`]: crate::crds

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

/// The custom resources whose schema is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `AgentPool`.
    AgentPool,
    /// `RatePolicy`.
    RatePolicy,
}

impl Kind {
    /// The `openAPIV3Schema` of the kind's CRD, as JSON.
    fn schema(self) -> &'static Value {
        static POOL: OnceLock<Value> = OnceLock::new();
        static POLICY: OnceLock<Value> = OnceLock::new();
        let (cell, crd) = match self {
            Kind::AgentPool => (&POOL, crd_of::<crate::AgentPool> as fn() -> _),
            Kind::RatePolicy => (&POLICY, crd_of::<crate::RatePolicy> as fn() -> _),
        };
        cell.get_or_init(|| {
            let crd = serde_json::to_value(crd()).unwrap_or_default();
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_default()
        })
    }
}

fn crd_of<K: kube::CustomResourceExt>()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    K::crd()
}

/// A field in a document that its kind's schema does not declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownField {
    /// Where it is, for example `spec.loadBalancing.algorith`.
    pub path: String,
    /// The declared field at the same place it most likely means.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: unknown field", self.path)?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, "; did you mean `{suggestion}`?")?;
        }
        Ok(())
    }
}

/// The fields of `document` (a whole object: `apiVersion`, `kind`, `metadata`,
/// `spec`, ...) that the schema of `kind` does not declare, in key order.
pub fn unknown_fields(kind: Kind, document: &Value) -> Vec<UnknownField> {
    let mut found = Vec::new();
    let Value::Object(root) = document else {
        return found;
    };
    let schema = kind.schema();
    for (key, value) in root {
        match key.as_str() {
            // Checked by the API server itself rather than by the CRD's schema.
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Value::Object(metadata) = value {
                    let known = object_meta_fields();
                    for field in metadata.keys() {
                        if !known.iter().any(|k| k == field) {
                            found.push(UnknownField {
                                path: format!("metadata.{field}"),
                                suggestion: suggest(field, known.iter().map(String::as_str)),
                            });
                        }
                    }
                }
            }
            _ => match schema.get("properties").and_then(|p| p.get(key)) {
                Some(field_schema) => walk_unknown(field_schema, value, key, &mut found),
                None => found.push(UnknownField {
                    path: key.clone(),
                    suggestion: suggest(
                        key,
                        property_names(schema)
                            .chain(["apiVersion", "kind", "metadata"])
                            .collect::<Vec<_>>(),
                    ),
                }),
            },
        }
    }
    found
}

/// The top-level fields of `ObjectMeta`, from its own schema.
fn object_meta_fields() -> &'static [String] {
    static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let schema = schemars::generate::SchemaSettings::openapi3()
            .into_generator()
            .into_root_schema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

fn property_names(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys().map(String::as_str))
}

fn walk_unknown(schema: &Value, value: &Value, path: &str, found: &mut Vec<UnknownField>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                    walk_unknown(child_schema, child, &child_path, found);
                } else if let Some(child_schema) = additional {
                    walk_unknown(child_schema, child, &child_path, found);
                } else if properties.is_some() {
                    found.push(UnknownField {
                        suggestion: suggest(key, property_names(schema).collect::<Vec<_>>()),
                        path: child_path,
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk_unknown(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// The declared field `key` most likely stands for: one that differs only in case,
/// else the closest within a few edits (fewer for short names).
fn suggest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = key.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in known {
        let distance = if candidate.to_lowercase() == lower {
            0
        } else {
            strsim::damerau_levenshtein(&lower, &candidate.to_lowercase())
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let limit = (key.chars().count() / 3).clamp(1, 3);
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c.to_owned())
}

/// A value outside its schema's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Where it is, for example `spec.queue.defaultPriority`.
    pub path: String,
    /// What the bound is, for example `must be at most 1000000 (is 5000000)`.
    pub message: String,
}

/// The values of `object` (a whole object as JSON) that break a bound of the schema
/// of `kind`, in key order.
pub fn out_of_bounds(kind: Kind, object: &Value) -> Vec<OutOfBounds> {
    let mut found = Vec::new();
    if let (Value::Object(root), Some(properties)) = (object, kind.schema().get("properties")) {
        for (key, value) in root {
            if let Some(schema) = properties.get(key) {
                walk_bounds(schema, value, key, &mut found);
            }
        }
    }
    found
}

fn walk_bounds(schema: &Value, value: &Value, path: &str, found: &mut Vec<OutOfBounds>) {
    let mut report = |message: String| {
        found.push(OutOfBounds {
            path: path.to_owned(),
            message,
        });
    };
    let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
    let count = |name: &str| schema.get(name).and_then(Value::as_u64);
    match value {
        Value::Number(n) => {
            let Some(x) = n.as_f64() else { return };
            if let Some(min) = bound("minimum")
                && x < min
            {
                report(format!("must be at least {min} (is {x})"));
            }
            if let Some(max) = bound("maximum")
                && x > max
            {
                report(format!("must be at most {max} (is {x})"));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = count("minLength")
                && len < min
            {
                report(if min == 1 {
                    "must not be empty".to_owned()
                } else {
                    format!("must be at least {min} characters long (is {len})")
                });
            }
            if let Some(max) = count("maxLength")
                && len > max
            {
                report(format!("must be at most {max} characters long (is {len})"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = count("minItems")
                && len < min
            {
                report(format!("needs at least {min} {}", plural(min, "entry")));
            }
            if let Some(max) = count("maxItems")
                && len > max
            {
                report(format!("has {len} entries, more than the {max} allowed"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk_bounds(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        Value::Object(map) => {
            let len = map.len() as u64;
            if let Some(max) = count("maxProperties")
                && len > max
            {
                report(format!("has {len} entries, more than the {max} allowed"));
            }
            let properties = schema.get("properties");
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                if let Some(child_schema) = properties.and_then(|p| p.get(key)).or(additional) {
                    walk_bounds(child_schema, child, &format!("{path}.{key}"), found);
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

fn plural(n: u64, word: &str) -> String {
    match (n, word.strip_suffix('y')) {
        (1, _) => word.to_owned(),
        (_, Some(stem)) => format!("{stem}ies"),
        (_, None) => format!("{word}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(spec: Value) -> Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "AgentPool",
            "metadata": {"name": "echo", "labels": {"any": "thing"}},
            "spec": spec,
        })
    }

    fn paths(found: &[UnknownField]) -> Vec<String> {
        found.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn names_unknown_fields_with_the_closest_known_one() {
        let doc = pool(json!({
            "matches": [{"pathprefix": "/agents/echo/"}, {"modle": "gpt-4o"}],
            "backends": [{"endpoints": ["127.0.0.1:1"], "maxConcurency": 4}],
            "loadBalancing": {"algorith": "Weighted"},
            "queue": {"tierPriorities": {"premium": 10}},
        }));
        assert_eq!(
            paths(&unknown_fields(Kind::AgentPool, &doc)),
            [
                "spec.backends[0].maxConcurency: unknown field; did you mean `maxConcurrency`?",
                "spec.loadBalancing.algorith: unknown field; did you mean `algorithm`?",
                "spec.matches[0].pathprefix: unknown field; did you mean `pathPrefix`?",
                "spec.matches[1].modle: unknown field; did you mean `model`?",
            ]
        );
    }

    #[test]
    fn checks_the_top_level_and_metadata_too() {
        let doc = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "RatePolicy",
            "metadata": {"name": "x", "namepsace": "demo"},
            "specs": {},
        });
        assert_eq!(
            paths(&unknown_fields(Kind::RatePolicy, &doc)),
            [
                "metadata.namepsace: unknown field; did you mean `namespace`?",
                "specs: unknown field; did you mean `spec`?",
            ]
        );
    }

    #[test]
    fn a_valid_document_has_none() {
        let doc = pool(json!({
            "matches": [{"pathPrefix": "/a", "headers": [{"name": "x", "value": "y"}]}],
            "backends": [{"service": {"name": "a", "port": "http"}, "weight": 2}],
            "loadBalancing": {"algorithm": "ConsistentHash", "consistentHash": {"header": "x"}},
        }));
        assert_eq!(unknown_fields(Kind::AgentPool, &doc), []);
    }

    #[test]
    fn finds_values_outside_the_bounds() {
        let doc = pool(json!({
            "matches": [],
            "backends": [{"endpoints": ["x".repeat(300)], "weight": 0}],
            "queue": {"defaultPriority": 5_000_000_u64, "tierPriorities": {"a": 2_000_000}},
        }));
        let found: Vec<String> = out_of_bounds(Kind::AgentPool, &doc)
            .into_iter()
            .map(|o| format!("{}: {}", o.path, o.message))
            .collect();
        assert_eq!(
            found,
            [
                "spec.backends[0].endpoints[0]: must be at most 259 characters long (is 300)",
                "spec.backends[0].weight: must be at least 1 (is 0)",
                "spec.matches: needs at least 1 entry",
                "spec.queue.defaultPriority: must be at most 1000000 (is 5000000)",
                "spec.queue.tierPriorities.a: must be at most 1000000 (is 2000000)",
            ]
        );
    }
}
