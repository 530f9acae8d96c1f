//! What the API server does with a custom resource's body before it stores it, from the
//! CRD's structural schema (`openAPIV3Schema`):
//!
//! * **pruning**: fields the schema does not declare are dropped (unless
//!   `x-kubernetes-preserve-unknown-fields`), and so are `null`s where the schema does
//!   not say `nullable`;
//! * **validation**: types, `required`, `enum`, `minimum`/`maximum` (also exclusive),
//!   `minLength`/`maxLength` (in characters), `pattern`, `minItems`/`maxItems`,
//!   `maxProperties`, and the CEL rules of `x-kubernetes-validations` (through
//!   kube-cel, with the old object for transition rules).
//!
//! `format` is ignored, as the API server ignores the formats it does not know
//! (`uint32`, `uint16`, `double`): a schema that bounds an integer only by its format
//! bounds nothing. An integer beyond the 64-bit signed range is not an integer.

use serde_json::{Map, Value, json};

/// One reason an object was refused: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field, `spec.queue.defaultPriority`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Drops from `object` what the schema `root` does not declare; `apiVersion`, `kind`
/// and `metadata` are the API server's and stay.
pub fn prune(root: &Value, object: &mut Value) {
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    for (k, v) in fields.iter_mut() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = root.get("properties").and_then(|p| p.get(k)) {
            prune_value(s, v);
        }
    }
    let properties = root.get("properties").and_then(Value::as_object);
    fields.retain(|k, v| {
        matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            || properties
                .and_then(|p| p.get(k))
                .is_some_and(|s| !v.is_null() || s["nullable"] == true)
    });
}

fn prune_value(schema: &Value, value: &mut Value) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let schema_of = |k: &str| properties.and_then(|p| p.get(k)).or(additional);
            fields
                .retain(|k, v| schema_of(k).is_some_and(|s| !v.is_null() || s["nullable"] == true));
            for (k, v) in fields.iter_mut() {
                if let Some(s) = schema_of(k) {
                    prune_value(s, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    prune_value(s, item);
                }
            }
        }
        _ => {}
    }
}

/// Checks `value` against `schema` (structural rules only; see [`validate`]).
fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let mut fail = |message: String| {
        out.push(Violation {
            path: path.to_owned(),
            message,
        });
    };
    if value.is_null() {
        if schema["nullable"] != true {
            fail("Invalid value: null: must not be null".to_owned());
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        fail(format!(
            "Unsupported value: {value}: supported values: {}",
            allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || value.is_i64()) {
            fail(format!(
                "Invalid value: {value}: must be an integer or a string"
            ));
        }
        return;
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        // JSON integers beyond int64 do not decode as integers in the API server.
        Some("integer") => value.is_i64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let wanted = schema["type"].as_str().unwrap_or_default();
        fail(format!("Invalid value: {value}: must be of type {wanted}"));
        return;
    }
    if let Some(n) = value.as_f64() {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        let exclusive = |key: &str| schema[key] == true;
        if let Some(max) = bound("maximum")
            && (n > max || exclusive("exclusiveMaximum") && n >= max)
        {
            fail(format!(
                "Invalid value: {value}: {path} in body should be less than or equal to {max}"
            ));
        }
        if let Some(min) = bound("minimum")
            && (n < min || exclusive("exclusiveMinimum") && n <= min)
        {
            fail(format!(
                "Invalid value: {value}: {path} in body should be greater than or equal to {min}"
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            fail(format!("Too long: may not be more than {max} bytes"));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            fail(format!(
                "Invalid value: {value}: should be at least {min} chars long"
            ));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(s) => {}
                Ok(_) => fail(format!("Invalid value: {value}: should match '{pattern}'")),
                Err(e) => fail(format!("pattern {pattern:?} does not compile: {e}")),
            }
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            fail(format!("Too many: {n}: must have at most {max} items"));
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            fail(format!(
                "Invalid value: {n}: should have at least {min} items"
            ));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        check_object(schema, fields, path, out);
    }
}

fn check_object(schema: &Value, fields: &Map<String, Value>, path: &str, out: &mut Vec<Violation>) {
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && fields.len() as u64 > max
    {
        out.push(Violation {
            path: path.to_owned(),
            message: format!("Too many: {}: must have at most {max} items", fields.len()),
        });
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            out.push(Violation {
                path: join(path, name),
                message: "Required value".to_owned(),
            });
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, v) in fields {
        if let Some(s) = properties.and_then(|p| p.get(k)).or(additional) {
            check(s, v, &join(path, k), out);
        }
    }
}

/// Every reason `object` (already pruned) breaks `schema`, the CRD version's
/// `openAPIV3Schema`: the structural rules, then, when those hold, the CEL rules.
/// `old` is the stored object on an update.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<Violation> {
    let mut out = Vec::new();
    // The API server checks metadata itself; the schema covers the rest.
    let Some(fields) = object.as_object() else {
        return vec![Violation {
            path: String::new(),
            message: "must be an object".to_owned(),
        }];
    };
    let mut body = fields.clone();
    body.remove("metadata");
    body.remove("apiVersion");
    body.remove("kind");
    let mut schema_body = schema.clone();
    if let Some(p) = schema_body
        .get_mut("properties")
        .and_then(Value::as_object_mut)
    {
        p.remove("metadata");
        p.remove("apiVersion");
        p.remove("kind");
    }
    check_object(&schema_body, &body, "", &mut out);
    if out.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate(schema, object, old)
    {
        for e in errors.iter() {
            let message = if e.kind == kube_cel::ErrorKind::UnsupportedReference {
                match type_switch(&e.rule, at(object, &e.field_path)) {
                    Some(true) => continue,
                    Some(false) => {
                        rule_message(schema, &e.rule).unwrap_or_else(|| e.message.clone())
                    }
                    None => e.message.clone(),
                }
            } else {
                e.message.clone()
            };
            out.push(Violation {
                path: e.field_path.clone(),
                message: format!("Invalid value: {message}"),
            });
        }
    }
    out
}

/// A rule `type(self) == int ? A : B` (on an int-or-string), which kube-cel cannot
/// evaluate (no `type()`): whether the branch for `value`'s type passes.
fn type_switch(rule: &str, value: Option<&Value>) -> Option<bool> {
    let (int, string) = rule
        .strip_prefix("type(self) == int ? ")?
        .split_once(" : ")?;
    let value = value?;
    let branch = if value.is_string() { string } else { int };
    let schema = json!({"x-kubernetes-validations": [{"rule": branch}]});
    Some(
        kube_cel::Validator::new()
            .validate(&schema, value, None)
            .is_ok(),
    )
}

/// The `message` declared with `rule` somewhere in `schema`.
fn rule_message(schema: &Value, rule: &str) -> Option<String> {
    match schema {
        Value::Object(fields) => {
            if let Some(rules) = fields
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                && let Some(r) = rules.iter().find(|r| r["rule"] == rule)
            {
                return r["message"].as_str().map(str::to_owned);
            }
            fields.values().find_map(|v| rule_message(v, rule))
        }
        Value::Array(items) => items.iter().find_map(|v| rule_message(v, rule)),
        _ => None,
    }
}

/// The value at a field path such as `spec.backends[0].service.port`.
fn at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut value = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part.split_once('[').unwrap_or((part, ""));
        value = value.get(name)?;
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(value)
}

/// `x-kubernetes-list-map-keys` of the list at `path` (field names from the root, list
/// items skipped), when the schema declares it a map.
pub fn list_map_keys(schema: &Value, path: &[&str]) -> Option<Vec<String>> {
    let mut at = schema;
    for field in path {
        at = at.get("properties")?.get(*field)?;
        if at.get("type").and_then(Value::as_str) == Some("array") && field != path.last()? {
            at = at.get("items")?;
        }
    }
    if at.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys = at["x-kubernetes-list-map-keys"]
        .as_array()?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["port"],
                    "properties": {
                        "priority": {"type": "integer", "format": "uint32", "minimum": 0.0},
                        "bounded": {"type": "integer", "format": "uint32", "minimum": 0.0, "maximum": 1000000.0},
                        "port": {"x-kubernetes-int-or-string": true,
                                 "x-kubernetes-validations": [{"rule": "type(self) == int ? self >= 1 && self <= 65535 : true", "message": "port range"}]},
                        "name": {"type": "string", "maxLength": 3, "nullable": true},
                    },
                },
            },
        })
    }

    #[test]
    fn formats_are_ignored_and_declared_ranges_enforced() {
        let object = |spec: Value| json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec});
        let accepted = validate(
            &schema(),
            &object(json!({"priority": 5_000_000_000u64, "port": 80})),
            None,
        );
        assert!(accepted.is_empty(), "{accepted:?}");
        let refused = validate(
            &schema(),
            &object(json!({"bounded": 5_000_000_000u64, "port": 80})),
            None,
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].path, "spec.bounded");
        let refused = validate(&schema(), &object(json!({"port": 3_000_000_000u64})), None);
        assert!(
            refused.iter().any(|v| v.message.contains("port range")),
            "{refused:?}"
        );
        let refused = validate(&schema(), &object(json!({"name": "long"})), None);
        assert!(refused.iter().any(|v| v.path == "spec.port"), "{refused:?}");
        assert!(refused.iter().any(|v| v.path == "spec.name"), "{refused:?}");
    }

    #[test]
    fn unknown_fields_and_disallowed_nulls_are_pruned() {
        let mut v = json!({"metadata": {"name": "a", "labels": {"x": "y"}},
                           "spec": {"port": 1, "extra": true, "name": null, "priority": null}, "other": 1});
        prune(&schema(), &mut v);
        assert_eq!(
            v,
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"port": 1, "name": null}})
        );
    }

    #[test]
    fn list_maps_are_found_by_path() {
        let s = json!({"properties": {"status": {"properties": {"conditions": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "items": {"type": "object"}}}}}});
        assert_eq!(
            list_map_keys(&s, &["status", "conditions"]),
            Some(vec!["type".to_owned()])
        );
        assert_eq!(list_map_keys(&s, &["status"]), None);
    }
}
