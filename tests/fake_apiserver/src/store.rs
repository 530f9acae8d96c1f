//! The objects, their history and the CRDs: what the API server keeps in etcd, and
//! what it does on each write (names, resource versions, generations, the status
//! subresource, CRD pruning and validation, server-side apply).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::apply::{self, FieldSet, Owner};
use crate::schema;
use crate::selector::Selector;

/// `(group, resource, namespace, name)`; the namespace is empty for cluster objects.
pub type Key = (String, String, String, String);

/// What a request's path names.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The API group, empty for the core group.
    pub group: String,
    /// The version.
    pub version: String,
    /// The resource (plural).
    pub resource: String,
    /// The namespace, for a namespaced path.
    pub namespace: Option<String>,
    /// The object's name, for an object path.
    pub name: Option<String>,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
}

impl Target {
    /// Parses `/api/v1/...` and `/apis/group/version/...`.
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
            _ => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some((*name).to_owned()), None),
            [resource, name, sub] => (*resource, Some((*name).to_owned()), Some((*sub).to_owned())),
            _ => return None,
        };
        Some(Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
            namespace,
            name,
            subresource,
        })
    }

    fn key(&self, name: &str) -> Key {
        (
            self.group.clone(),
            self.resource.clone(),
            self.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )
    }

    fn in_scope(&self, key: &Key) -> bool {
        key.0 == self.group
            && key.1 == self.resource
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.2)
    }
}

/// A refusal, as a `Status` object.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub code: u16,
    /// `NotFound`, `Conflict`, `Invalid`, ...
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` body.
    pub fn body(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": self.reason, "message": self.message, "code": self.code,
        })
    }
}

/// One change, as a watch reports it.
pub struct Change {
    /// The resource version of the write.
    pub rv: u64,
    /// When it happened (a delayed watch reports it later).
    pub at: Instant,
    /// The object's API group.
    pub group: String,
    /// Its resource.
    pub resource: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object as written.
    pub object: Value,
    /// The labels before a modification: a watch with a label selector sees an object
    /// that starts or stops matching as ADDED or DELETED.
    pub before: Option<Value>,
}

/// A CRD's served version.
struct Crd {
    kind: String,
    schema: Value,
    status: bool,
}

/// An object and who owns which of its fields.
struct Stored {
    object: Value,
    managers: BTreeMap<Owner, FieldSet>,
}

/// Everything the server keeps.
#[derive(Default)]
pub struct Store {
    /// The newest resource version.
    pub rv: u64,
    objects: BTreeMap<Key, Stored>,
    /// Every change, oldest first.
    pub history: Vec<Change>,
    /// Every request served: `{"method", "path", "query"}`.
    pub requests: Vec<Value>,
    crds: BTreeMap<(String, String), Crd>,
    /// How long after a write its watch event is delivered.
    pub watch_delay: Duration,
    /// `(group, resource)` served to HTTP clients only in these namespaces.
    pub grants: BTreeMap<(String, String), BTreeSet<String>>,
    generated: u64,
}

const CRDS: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

/// `metadata.name` rules of every kind: a DNS subdomain of at most 253 characters.
fn check_name(name: &str) -> Result<(), ApiError> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(part_ok) {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain of at most 253 characters"
            ),
        ));
    }
    Ok(())
}

/// What the API server's validation of an `events.k8s.io/v1` Event checks besides its
/// name: `eventTime`, `reportingController`, `reportingInstance`, `action` and `reason`
/// present, the last four of at most 128 characters, `note` of at most 1 KiB, `type`
/// `Normal` or `Warning`.
fn check_event(event: &Value) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    if event["eventTime"].as_str().is_none_or(str::is_empty) {
        violations.push("eventTime: Required value".to_owned());
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        match event[field].as_str() {
            None | Some("") => violations.push(format!("{field}: Required value")),
            Some(v) if v.len() > 128 => {
                violations.push(format!("{field}: Too long: may not be more than 128 bytes"))
            }
            Some(_) => {}
        }
    }
    if event["note"].as_str().is_some_and(|n| n.len() > 1024) {
        violations.push("note: Too long: may not be more than 1024 bytes".to_owned());
    }
    if !matches!(event["type"].as_str(), Some("Normal" | "Warning")) {
        violations
            .push("type: Unsupported value: supported values: \"Normal\", \"Warning\"".to_owned());
    }
    if violations.is_empty() {
        return Ok(());
    }
    let name = event["metadata"]["name"].as_str().unwrap_or_default();
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "Event.events.k8s.io {name:?} is invalid: {}",
            violations.join(", ")
        ),
    ))
}

/// The object without metadata and status: what `generation` counts changes of.
fn spec_of(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl Store {
    /// Adds or replaces a CRD's first served version (with `schema`, pruning and
    /// validation of its objects). Objects already stored are kept as they are, as the
    /// API server keeps them when a schema is tightened.
    pub fn install_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_owned();
        let plural = spec["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = spec["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let version = spec["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["served"] == true))
            .ok_or_else(|| ApiError::new(422, "Invalid", "spec.versions: none served"))?;
        if group.is_empty() || plural.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "spec.group and spec.names are required",
            ));
        }
        self.crds.insert(
            (group, plural),
            Crd {
                kind,
                schema: version["schema"]["openAPIV3Schema"].clone(),
                status: version["subresources"].get("status").is_some(),
            },
        );
        Ok(())
    }

    fn crd(&self, target: &Target) -> Option<&Crd> {
        self.crds
            .get(&(target.group.clone(), target.resource.clone()))
    }

    fn record(
        &mut self,
        key: &Key,
        kind: &'static str,
        object: &mut Value,
        before: Option<&Value>,
    ) -> u64 {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.history.push(Change {
            rv: self.rv,
            at: Instant::now(),
            group: key.0.clone(),
            resource: key.1.clone(),
            kind,
            object: object.clone(),
            before: before.map(|b| json!({"metadata": {"labels": b["metadata"]["labels"]}})),
        });
        self.rv
    }

    /// Prunes and validates a custom resource being written; `old` on an update.
    fn admit(
        &self,
        target: &Target,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if (target.group.as_str(), target.resource.as_str()) == ("events.k8s.io", "events") {
            return check_event(object);
        }
        let Some(crd) = self.crd(target) else {
            return Ok(());
        };
        schema::prune(&crd.schema, object);
        let (schema, checked) = if target.subresource.as_deref() == Some("status") {
            // A status write is validated on its status alone.
            let status_schema = json!({"type": "object", "properties": {
                "status": crd.schema["properties"]["status"].clone()}});
            let status = json!({"status": object.get("status").cloned().unwrap_or(Value::Null)});
            (status_schema, status)
        } else {
            (crd.schema.clone(), object.clone())
        };
        let old = if target.subresource.is_some() {
            None
        } else {
            old
        };
        let violations = schema::validate(&schema, &checked, old);
        if violations.is_empty() {
            return Ok(());
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "{}.{} {name:?} is invalid: {}",
                crd.kind,
                target.group,
                violations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Writes `managedFields` from the owners of `stored`.
    fn show_managers(stored: &mut Stored, api_version: &Value) {
        let entries: Vec<Value> = stored
            .managers
            .iter()
            .map(|((manager, operation, subresource), set)| {
                let mut e = json!({
                    "manager": manager, "operation": operation, "apiVersion": api_version,
                    "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": apply::fields_v1(set),
                });
                if !subresource.is_empty() {
                    e["subresource"] = Value::String(subresource.clone());
                }
                e
            })
            .collect();
        stored.object["metadata"]["managedFields"] = Value::Array(entries);
    }

    /// `GET` one object.
    pub fn get(&self, target: &Target) -> Result<Value, ApiError> {
        let key = target.key(target.name.as_deref().unwrap_or_default());
        self.objects
            .get(&key)
            .map(|s| s.object.clone())
            .ok_or_else(|| not_found(&key))
    }

    /// `GET` a collection: `(items, resource version, continue token)`.
    pub fn list(
        &self,
        target: &Target,
        selector: &Selector,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> (Vec<Value>, u64, Option<String>) {
        let (rv, after) = match after.and_then(|c| c.split_once(':')) {
            Some((rv, key)) => (rv.parse().unwrap_or(self.rv), Some(key)),
            None => (self.rv, None),
        };
        let mut items = Vec::new();
        let mut next = None;
        for (key, stored) in &self.objects {
            if !target.in_scope(key) || !selector.matches(&stored.object) {
                continue;
            }
            let position = format!("{}/{}", key.2, key.3);
            if after.is_some_and(|a| position.as_str() <= a) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = Some(format!("{rv}:{}", after_of(&items)));
                break;
            }
            items.push(stored.object.clone());
        }
        (items, rv, next)
    }

    /// `POST` to a collection.
    pub fn create(
        &mut self,
        target: &Target,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if (target.group.as_str(), target.resource.as_str()) == CRDS {
            self.install_crd(&body)?;
        }
        let name = match body["metadata"]["name"].as_str() {
            Some(n) => n.to_owned(),
            None => match body["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    self.generated += 1;
                    format!("{prefix}{:05x}", self.generated)
                }
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value",
                    ));
                }
            },
        };
        check_name(&name)?;
        let key = target.key(&name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", target.resource),
            ));
        }
        if self.crd(target).is_some_and(|c| c.status)
            && let Some(o) = body.as_object_mut()
        {
            o.remove("status");
        }
        self.admit(target, &mut body, None)?;
        let meta = &mut body["metadata"];
        meta["name"] = Value::String(name);
        if let Some(ns) = &target.namespace {
            meta["namespace"] = Value::String(ns.clone());
        }
        meta["uid"] = Value::String(format!("uid-{}", self.rv + 1));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let mut stored = Stored {
            object: body,
            managers: BTreeMap::new(),
        };
        let mut set = FieldSet::new();
        apply::fields(&spec_of(&stored.object), None, &Vec::new(), &mut set);
        stored
            .managers
            .insert((manager.to_owned(), "Update", String::new()), set);
        let api_version = stored.object["apiVersion"].clone();
        Self::show_managers(&mut stored, &api_version);
        self.record(&key, "ADDED", &mut stored.object, None);
        let out = stored.object.clone();
        self.objects.insert(key, stored);
        Ok(out)
    }

    /// `PUT` an object (or its status), with optimistic concurrency on
    /// `metadata.resourceVersion`.
    pub fn replace(&mut self, target: &Target, mut body: Value) -> Result<Value, ApiError> {
        let key = target.key(target.name.as_deref().unwrap_or_default());
        let old = self
            .objects
            .get(&key)
            .map(|s| s.object.clone())
            .ok_or_else(|| not_found(&key))?;
        let asked = body["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned);
        if asked.is_some_and(|rv| Some(rv.as_str()) != old["metadata"]["resourceVersion"].as_str())
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let status_only = target.subresource.as_deref() == Some("status");
        let has_status = self.crd(target).is_some_and(|c| c.status);
        let mut new = if status_only {
            let mut o = old.clone();
            o["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            o
        } else {
            body["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
            if has_status {
                match old.get("status") {
                    Some(s) => body["status"] = s.clone(),
                    None => {
                        if let Some(o) = body.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            body
        };
        self.admit(target, &mut new, Some(&old))?;
        self.store_update(&key, old, new)
    }

    /// Stores `new` over `old`: keeps what the server owns in metadata, bumps
    /// `generation` when the spec changed, records the change (none when nothing
    /// changed).
    fn store_update(&mut self, key: &Key, old: Value, mut new: Value) -> Result<Value, ApiError> {
        for field in ["namespace", "uid", "creationTimestamp", "name"] {
            new["metadata"][field] = old["metadata"][field].clone();
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = spec_of(&old) != spec_of(&new);
        new["metadata"]["generation"] = json!(generation + i64::from(bumped));
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(old);
        }
        self.record(key, "MODIFIED", &mut new, Some(&old));
        if let Some(stored) = self.objects.get_mut(key) {
            stored.object = new.clone();
        }
        Ok(new)
    }

    /// `PATCH`: server-side apply (`application/apply-patch+yaml`, as `manager`, taking
    /// conflicting fields over when `force`d) or a JSON merge patch.
    pub fn patch(
        &mut self,
        target: &Target,
        body: &Value,
        content_type: &str,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let key = target.key(target.name.as_deref().unwrap_or_default());
        let Some(old) = self.objects.get(&key).map(|s| s.object.clone()) else {
            return Err(not_found(&key));
        };
        let status_only = target.subresource.as_deref() == Some("status");
        let schema = self.crd(target).map(|c| c.schema.clone());
        let mut new = old.clone();
        if content_type.starts_with("application/apply-patch") {
            if manager.is_empty() {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "fieldManager is required for apply",
                ));
            }
            let applied = if status_only {
                json!({"status": body.get("status").cloned().unwrap_or(Value::Null)})
            } else {
                let mut b = spec_of(body);
                for field in ["labels", "annotations"] {
                    if let Some(v) = body["metadata"].get(field) {
                        b["metadata"][field] = v.clone();
                    }
                }
                b
            };
            let owner: Owner = (
                manager.to_owned(),
                "Apply",
                target.subresource.clone().unwrap_or_default(),
            );
            let stored = self.objects.get_mut(&key).ok_or_else(|| not_found(&key))?;
            let mut managers = stored.managers.clone();
            apply::apply(
                &mut new,
                &applied,
                schema.as_ref(),
                &owner,
                force,
                &mut managers,
            )
            .map_err(|conflicts| {
                ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflicts: {}",
                        conflicts.len(),
                        conflicts.join(", ")
                    ),
                )
            })?;
            self.admit(target, &mut new, Some(&old))?;
            let stored = self.objects.get_mut(&key).ok_or_else(|| not_found(&key))?;
            stored.managers = managers;
            let api_version = new["apiVersion"].clone();
            let mut shown = Stored {
                object: new,
                managers: stored.managers.clone(),
            };
            Self::show_managers(&mut shown, &api_version);
            new = shown.object;
        } else if content_type.starts_with("application/merge-patch")
            || content_type.starts_with("application/strategic-merge-patch")
        {
            if status_only {
                let status = json!({"status": body.get("status").cloned().unwrap_or(Value::Null)});
                merge_patch(&mut new, &status);
            } else {
                merge_patch(&mut new, body);
            }
            self.admit(target, &mut new, Some(&old))?;
        } else {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("patch type {content_type:?}"),
            ));
        }
        self.store_update(&key, old, new)
    }

    /// `DELETE` one object.
    pub fn delete(&mut self, target: &Target) -> Result<Value, ApiError> {
        let key = target.key(target.name.as_deref().unwrap_or_default());
        let mut stored = self.objects.remove(&key).ok_or_else(|| not_found(&key))?;
        self.record(&key, "DELETED", &mut stored.object, None);
        Ok(stored.object)
    }
}

fn after_of(items: &[Value]) -> String {
    items.last().map_or_else(String::new, |o| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    })
}

fn not_found(key: &Key) -> ApiError {
    let group = if key.0.is_empty() {
        String::new()
    } else {
        format!(".{}", key.0)
    };
    ApiError::new(
        404,
        "NotFound",
        format!("{}{group} {:?} not found", key.1, key.3),
    )
}
