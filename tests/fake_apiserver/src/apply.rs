//! Server-side apply, as the API server merges an applied configuration: each field
//! manager owns the fields it applied; an apply sets what it names, removes what its
//! manager applied before and no longer names (unless another manager owns it too),
//! and conflicts with another manager's field of a different value unless forced
//! (which takes the field over).
//!
//! Objects are granular (each field on its own), lists are atomic (owned whole) unless
//! the schema declares them `x-kubernetes-list-type: map`: then each item, identified
//! by its `x-kubernetes-list-map-keys`, is owned on its own. That is what lets two
//! managers each write their own `status.conditions` without replacing the other's.
//!
//! Ownership is shown as the API server shows it, in `metadata.managedFields`
//! (`fieldsV1`: `f:<field>`, `k:<key JSON>`, `.` for an item itself).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// A field of an object.
    Field(String),
    /// An item of a list-map, by its keys as JSON (`{"type":"Ready"}`).
    Key(String),
}

/// A path from the object's root.
pub type Path = Vec<Element>;
/// The fields a manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Who owns a field set: `(manager, operation, subresource)`.
pub type Owner = (String, &'static str, String);

/// The schema of the field `name` of an object schema.
fn field_schema<'a>(schema: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(name))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// The keys of a list whose schema is `schema`, when it is a list-map.
fn map_keys(schema: Option<&Value>) -> Option<Vec<String>> {
    let s = schema?;
    if s.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    Some(
        s["x-kubernetes-list-map-keys"]
            .as_array()?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
    )
}

/// The identity of a list-map item: its keys as canonical JSON.
fn item_key(item: &Value, keys: &[String]) -> String {
    let map: BTreeMap<&str, &Value> = keys
        .iter()
        .map(|k| (k.as_str(), item.get(k).unwrap_or(&Value::Null)))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

/// The fields `value` sets, each under `prefix`.
pub fn fields(value: &Value, schema: Option<&Value>, prefix: &Path, out: &mut FieldSet) {
    let Some(object) = value.as_object() else {
        out.insert(prefix.clone());
        return;
    };
    if object.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (name, child) in object {
        let mut path = prefix.clone();
        path.push(Element::Field(name.clone()));
        let child_schema = field_schema(schema, name);
        match (child, map_keys(child_schema)) {
            (Value::Object(_), _) => fields(child, child_schema, &path, out),
            (Value::Array(items), Some(keys)) => {
                let item_schema = child_schema.and_then(|s| s.get("items"));
                if items.is_empty() {
                    out.insert(path.clone());
                }
                for item in items {
                    let mut at = path.clone();
                    at.push(Element::Key(item_key(item, &keys)));
                    out.insert(at.clone());
                    fields(item, item_schema, &at, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The value at `path`, if any.
pub fn get<'a>(value: &'a Value, path: &[Element]) -> Option<&'a Value> {
    let mut at = value;
    for element in path {
        at = match element {
            Element::Field(name) => at.get(name)?,
            Element::Key(key) => {
                let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
                at.as_array()?
                    .iter()
                    .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))?
            }
        };
    }
    Some(at)
}

/// Removes the value at `path` (a field, or a list-map item).
fn remove(value: &mut Value, path: &[Element]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for element in parent {
        let next = match element {
            Element::Field(name) => at.get_mut(name),
            Element::Key(key) => {
                let Ok(wanted) = serde_json::from_str::<Map<String, Value>>(key) else {
                    return;
                };
                at.as_array_mut().and_then(|items| {
                    items
                        .iter_mut()
                        .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))
                })
            }
        };
        match next {
            Some(n) => at = n,
            None => return,
        }
    }
    match last {
        Element::Field(name) => {
            if let Some(o) = at.as_object_mut() {
                o.remove(name);
            }
        }
        Element::Key(key) => {
            let Ok(wanted) = serde_json::from_str::<Map<String, Value>>(key) else {
                return;
            };
            if let Some(items) = at.as_array_mut() {
                items.retain(|item| !wanted.iter().all(|(k, v)| item.get(k) == Some(v)));
            }
        }
    }
}

/// Merges `applied` into `live`: objects field by field, list-maps item by item, other
/// values replaced.
fn merge(live: &mut Value, applied: &Value, schema: Option<&Value>) {
    let (Some(live_fields), Some(applied_fields)) = (live.as_object_mut(), applied.as_object())
    else {
        *live = applied.clone();
        return;
    };
    for (name, value) in applied_fields {
        let child_schema = field_schema(schema, name);
        let slot = live_fields.entry(name.clone()).or_insert(Value::Null);
        if let (Some(keys), Some(applied_items)) = (map_keys(child_schema), value.as_array())
            && let Some(live_items) = slot.as_array_mut()
        {
            let item_schema = child_schema.and_then(|s| s.get("items"));
            for item in applied_items {
                let key = item_key(item, &keys);
                match live_items.iter_mut().find(|i| item_key(i, &keys) == key) {
                    Some(existing) => merge(existing, item, item_schema),
                    None => live_items.push(item.clone()),
                }
            }
        } else if slot.is_object() && value.is_object() {
            merge(slot, value, child_schema);
        } else {
            *slot = value.clone();
        }
    }
}

/// Applies `applied` to `live` as `owner`: the result, or the fields that conflict with
/// other managers' when not `force`d. `managers` is updated with the new ownership.
///
/// # Errors
///
/// The conflicting fields and their owners, as `.status.x (manager)`.
pub fn apply(
    live: &mut Value,
    applied: &Value,
    schema: Option<&Value>,
    owner: &Owner,
    force: bool,
    managers: &mut BTreeMap<Owner, FieldSet>,
) -> Result<(), Vec<String>> {
    let mut wanted = FieldSet::new();
    fields(applied, schema, &Path::new(), &mut wanted);
    let mut conflicts = Vec::new();
    let mut taken: Vec<(Owner, Path)> = Vec::new();
    for (other, set) in managers.iter() {
        if other == owner {
            continue;
        }
        for path in wanted.intersection(set) {
            if matches!(path.last(), Some(Element::Key(_))) {
                continue;
            }
            if get(live, path) != get(applied, path) {
                conflicts.push(format!("{} ({})", describe(path), other.0));
                taken.push((other.clone(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (other, path) in taken {
        if let Some(set) = managers.get_mut(&other) {
            set.remove(&path);
        }
    }
    let before = managers.remove(owner).unwrap_or_default();
    let owned_by_others = |path: &Path, managers: &BTreeMap<Owner, FieldSet>| {
        managers.values().any(|set| {
            set.range(path.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(path))
        })
    };
    // Shortest paths first: an item goes whole, before its fields.
    let mut dropped: Vec<&Path> = before.difference(&wanted).collect();
    dropped.sort_by_key(|p| p.len());
    for path in dropped {
        if !owned_by_others(path, managers) && !wanted.iter().any(|w| w.starts_with(path)) {
            remove(live, path);
        }
    }
    merge(live, applied, schema);
    if !wanted.is_empty() {
        managers.insert(owner.clone(), wanted);
    }
    managers.retain(|_, set| !set.is_empty());
    Ok(())
}

/// `.status.conditions[type="Ready"].status`, for conflict messages.
fn describe(path: &[Element]) -> String {
    path.iter()
        .map(|e| match e {
            Element::Field(name) => format!(".{name}"),
            Element::Key(key) => format!("[{key}]"),
        })
        .collect()
}

/// A field set as `fieldsV1`.
pub fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_path(&mut root, path);
    }
    Value::Object(root)
}

fn insert_path(at: &mut Map<String, Value>, path: &[Element]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let name = match first {
        Element::Field(name) => format!("f:{name}"),
        Element::Key(key) => format!("k:{key}"),
    };
    let next = at.entry(name).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(next) = next else {
        return;
    };
    if rest.is_empty() {
        if matches!(first, Element::Key(_)) {
            next.insert(".".to_owned(), Value::Object(Map::new()));
        }
    } else {
        insert_path(next, rest);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"properties": {"status": {"properties": {
            "ready": {"type": "integer"},
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}},
            "atomic": {"type": "array", "items": {"type": "string"}},
        }}}})
    }

    fn owner(name: &str) -> Owner {
        (name.to_owned(), "Apply", "status".to_owned())
    }

    fn condition(type_: &str, status: &str) -> Value {
        json!({"type": type_, "status": status})
    }

    #[test]
    fn two_managers_keep_their_own_list_map_items() {
        let s = schema();
        let mut live = json!({"metadata": {"name": "a"}});
        let mut managers = BTreeMap::new();
        let theirs = json!({"status": {"conditions": [condition("Compliant", "True")]}});
        apply(
            &mut live,
            &theirs,
            Some(&s),
            &owner("policy"),
            false,
            &mut managers,
        )
        .expect("applied");
        let ours = json!({"status": {"ready": 1, "conditions": [condition("Accepted", "True"), condition("Ready", "True")]}});
        apply(
            &mut live,
            &ours,
            Some(&s),
            &owner("sluice"),
            true,
            &mut managers,
        )
        .expect("applied");
        assert_eq!(
            live["status"]["conditions"].as_array().map(Vec::len),
            Some(3),
            "{live}"
        );
        // Ours again without Ready and without `ready`: only what we owned goes.
        let ours = json!({"status": {"conditions": [condition("Accepted", "False")]}});
        apply(
            &mut live,
            &ours,
            Some(&s),
            &owner("sluice"),
            true,
            &mut managers,
        )
        .expect("applied");
        assert_eq!(
            live["status"],
            json!({"conditions": [condition("Compliant", "True"), condition("Accepted", "False")]})
        );
        let v1 = fields_v1(&managers[&owner("sluice")]);
        assert!(
            v1["f:status"]["f:conditions"]["k:{\"type\":\"Accepted\"}"]
                .get(".")
                .is_some(),
            "{v1}"
        );
    }

    #[test]
    fn an_atomic_list_is_replaced_whole_and_a_changed_field_conflicts() {
        let s = schema();
        let mut live = json!({});
        let mut managers = BTreeMap::new();
        apply(
            &mut live,
            &json!({"status": {"atomic": ["a"], "ready": 1}}),
            Some(&s),
            &owner("one"),
            false,
            &mut managers,
        )
        .expect("applied");
        let conflict = apply(
            &mut live,
            &json!({"status": {"atomic": ["b"]}}),
            Some(&s),
            &owner("two"),
            false,
            &mut managers,
        )
        .expect_err("conflict");
        assert_eq!(conflict, vec![".status.atomic (one)".to_owned()]);
        apply(
            &mut live,
            &json!({"status": {"atomic": ["b"]}}),
            Some(&s),
            &owner("two"),
            true,
            &mut managers,
        )
        .expect("forced");
        assert_eq!(live["status"], json!({"atomic": ["b"], "ready": 1}));
    }
}
