//! The field reference in `docs/resources.md` tells the truth: every field it lists is in
//! the CRD schema with the bounds it states, every field of the schema is listed, and
//! every default it states is the schema's default, the one the field's own description
//! states, and the one compile fills in.
//!
//! A reference row reads `` | `spec.path[]` (bounds) | default | meaning | ``; bounds
//! are `a–b`, `≤b` or `≥a`, for the value, the length or the number of entries, and
//! `, each a–b` for the entries of a list or map. A default is the first word of its
//! cell: a value, a duration, or a word for "absent" (`unlimited`, `none`, `any`, or
//! another field whose value it takes).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sluice_api::{Duration, Objects, compile, manifest};

/// One row of the reference.
#[derive(Debug)]
struct Row {
    kind: &'static str,
    path: String,
    bounds: Option<String>,
    default: Option<String>,
}

fn reference() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/resources.md");
    let text = std::fs::read_to_string(path).expect("docs/resources.md");
    let mut kind = "";
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            kind = match heading {
                h if h.starts_with("AgentPool") => "AgentPool",
                h if h.starts_with("RatePolicy") => "RatePolicy",
                _ => "",
            };
            continue;
        }
        let Some(cells) = line.strip_prefix("| `") else {
            continue;
        };
        if kind.is_empty() || !(cells.starts_with("spec.") || cells.starts_with("status.")) {
            continue;
        }
        let cells: Vec<&str> = cells.split(" | ").collect();
        let (path, rest) = cells[0].split_once('`').expect("a closing backtick");
        let bounds = rest
            .trim()
            .strip_prefix('(')
            .and_then(|b| b.strip_suffix(')'))
            .map(str::to_owned);
        // Status tables have no default column.
        let default = (cells.len() == 3)
            .then(|| cells[1].trim())
            .filter(|d| !d.is_empty())
            .map(first_word);
        rows.push(Row {
            kind,
            path: path.to_owned(),
            bounds,
            default,
        });
    }
    rows
}

/// The first word of a cell, without backticks or trailing punctuation.
fn first_word(cell: &str) -> String {
    let word = cell.split_whitespace().next().unwrap_or_default();
    word.trim_matches('`')
        .trim_end_matches([',', '.', ';'])
        .trim_matches('`')
        .to_owned()
}

fn schemas() -> BTreeMap<String, Value> {
    sluice_api::crds()
        .into_iter()
        .map(|(_, yaml)| {
            let crd: Value = serde_yaml::from_str(&yaml).expect("CRD is YAML");
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("kind")
                .to_owned();
            (
                kind,
                crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
            )
        })
        .collect()
}

/// The schema node of a reference path such as `spec.backends[].weight`.
fn node<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = root;
    for part in path.split('.') {
        let (name, arrays) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        at = at.get("properties")?.get(name)?;
        if arrays {
            at = at.get("items")?;
        }
    }
    Some(at)
}

/// Every path of the schema a reference row must list: scalars, lists of scalars and
/// maps under `spec`, and the fields of `status` (not inside its conditions).
fn leaves(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match child.get("items") {
                Some(items) if items.get("properties").is_some() && name != "conditions" => {
                    leaves(items, &format!("{child_path}[]"), out);
                }
                Some(_) => out.push(format!("{child_path}[]")),
                None if child.get("properties").is_some() => leaves(child, &child_path, out),
                None => out.push(child_path),
            }
        }
    }
}

#[test]
fn every_field_is_listed_and_every_listed_field_exists() {
    let schemas = schemas();
    let rows = reference();
    assert!(rows.len() > 80, "found only {} rows", rows.len());
    for row in &rows {
        assert!(
            node(&schemas[row.kind], &row.path).is_some(),
            "docs/resources.md lists {} {}, which the schema does not have",
            row.kind,
            row.path
        );
    }
    for (kind, schema) in &schemas {
        let mut all = Vec::new();
        leaves(schema, "", &mut all);
        for path in all {
            assert!(
                rows.iter().any(|r| r.kind == kind && r.path == path),
                "docs/resources.md does not list {kind} {path}"
            );
        }
    }
}

/// `(min, max)` of a bound such as `1–16`, `≤1024` or `≥1`.
fn range(text: &str) -> (Option<f64>, Option<f64>) {
    let text = text.split_whitespace().next().unwrap_or_default();
    let number = |s: &str| s.parse::<f64>().unwrap_or_else(|_| panic!("bound {s:?}"));
    if let Some(max) = text.strip_prefix('≤') {
        (None, Some(number(max)))
    } else if let Some(min) = text.strip_prefix('≥') {
        (Some(number(min)), None)
    } else {
        let (min, max) = text.split_once('–').expect("a–b, ≤b or ≥a");
        (Some(number(min)), Some(number(max)))
    }
}

/// The schema's `(min, max)` of a value, a length or a number of entries.
fn schema_range(node: &Value) -> (Option<f64>, Option<f64>) {
    let get = |k: &str| node.get(k).and_then(Value::as_f64);
    match node.get("type").and_then(Value::as_str) {
        Some("array") => (get("minItems"), get("maxItems")),
        Some("string") => (get("minLength"), get("maxLength")),
        Some("object") => (None, get("maxProperties")),
        _ => (get("minimum"), get("maximum")),
    }
}

#[test]
fn listed_bounds_are_the_schemas() {
    let schemas = schemas();
    for row in reference() {
        let Some(bounds) = &row.bounds else { continue };
        let field = node(&schemas[row.kind], &row.path).expect("listed field");
        // A list path ends in `[]` and names its entries; the bounds are the list's.
        let list = row
            .path
            .strip_suffix("[]")
            .and_then(|p| node(&schemas[row.kind], p));
        let (outer, each) = match bounds.split_once(", each ") {
            Some((outer, each)) => (outer, Some(each)),
            None => (bounds.as_str(), None),
        };
        let mut checks = vec![(list.unwrap_or(field), outer)];
        if let Some(each) = each {
            let entries = match list {
                Some(_) => field,
                None => field.get("additionalProperties").expect("a map"),
            };
            checks.push((entries, each));
        }
        for (at, text) in checks {
            let (min, max) = range(text);
            let (schema_min, schema_max) = schema_range(at);
            let unsigned_max = (at.get("format").and_then(Value::as_str) == Some("uint32"))
                .then_some(f64::from(u32::MAX));
            assert!(
                min.unwrap_or(0.0) == schema_min.unwrap_or(0.0)
                    && (max == schema_max || (max.is_none() && schema_max == unsigned_max)),
                "{} {}: docs say ({bounds}), the schema {schema_min:?}..{schema_max:?}",
                row.kind,
                row.path
            );
        }
    }
}

/// How compile's default for a field shows in the table of [`DEFAULTS`].
enum Compiled {
    /// The value at this pointer.
    Value(&'static str),
    /// Milliseconds at this pointer, a duration in the reference.
    Millis(&'static str),
    /// Nothing at this pointer: no limit, no filter, or the value of another field.
    Absent(&'static str),
    /// The same as the value at the second pointer (`burst` takes `requests`).
    SameAs(&'static str, &'static str),
}

/// Objects that leave every optional field out, each block present.
const DEFAULTS: &str = "apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: defaults, namespace: demo}
spec:
  matches: [{}]
  backends: [{endpoints: [\"127.0.0.1:1\"], maxConcurrency: 1}, {endpoints: [\"127.0.0.1:2\"]}]
  timeouts: {}
  retries: {}
  healthCheck: {}
  outlierDetection: {}
  authentication: {jwt: {issuer: i, audiences: [a], jwks: '{\"keys\": []}'}}
  fallback: {name: other}
---
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: other, namespace: demo}
spec:
  matches: [{}]
  backends: [{endpoints: [\"127.0.0.1:3\"]}]
---
apiVersion: sluice.dev/v1alpha1
kind: RatePolicy
metadata: {name: defaults, namespace: demo}
spec:
  targetRefs: [{kind: AgentPool, name: defaults}]
  key: {type: Consumer}
  tiers: [{name: standard, limits: [{requests: 10, period: 1s}]}]
";

/// Where each documented default shows in the table compiled from [`DEFAULTS`]; the
/// schema's own defaults (`default:`) are checked against the schema instead.
const TABLE: &[(&str, Compiled)] = &[
    (
        "spec.matches[].pathPrefix",
        Compiled::Value("/routes/0/pathPrefix"),
    ),
    ("spec.matches[].host", Compiled::Absent("/routes/0/host")),
    (
        "spec.matches[].method",
        Compiled::Absent("/routes/0/method"),
    ),
    ("spec.matches[].model", Compiled::Absent("/routes/0/model")),
    (
        "spec.matches[].modelPrefix",
        Compiled::Absent("/routes/0/model"),
    ),
    (
        "spec.backends[].maxConcurrency",
        Compiled::Absent("/pools/0/backends/1/maxConcurrency"),
    ),
    (
        "spec.loadBalancing.peakEwma.decay",
        Compiled::Millis("/pools/0/balancer/ewmaDecayMs"),
    ),
    (
        "spec.loadBalancing.peakEwma.defaultLatency",
        Compiled::Millis("/pools/0/balancer/ewmaDefaultLatencyMs"),
    ),
    (
        "spec.loadBalancing.consistentHash.boundedLoad",
        Compiled::Value("/pools/0/balancer/boundedLoad"),
    ),
    (
        "spec.queue.maxDepth",
        Compiled::Value("/pools/0/queue/maxDepth"),
    ),
    (
        "spec.queue.timeout",
        Compiled::Millis("/pools/0/queue/timeoutMs"),
    ),
    (
        "spec.queue.defaultPriority",
        Compiled::Value("/pools/0/queue/defaultPriority"),
    ),
    (
        "spec.timeouts.connect",
        Compiled::Millis("/pools/0/connectTimeoutMs"),
    ),
    (
        "spec.timeouts.request",
        Compiled::Millis("/pools/0/requestTimeoutMs"),
    ),
    // The proxy waits for the first byte until the request deadline.
    (
        "spec.timeouts.firstByte",
        Compiled::Absent("/pools/0/firstByteTimeoutMs"),
    ),
    // The proxy applies its DEFAULT_IDLE_TIMEOUT (60s) when the table has none.
    (
        "spec.timeouts.idle",
        Compiled::Absent("/pools/0/idleTimeoutMs"),
    ),
    (
        "spec.timeouts.streamMaxDuration",
        Compiled::Absent("/pools/0/streamMaxDurationMs"),
    ),
    (
        "spec.fallback.when[]",
        Compiled::Value("/pools/0/fallbackWhen/0"),
    ),
    (
        "spec.fallback.statuses[]",
        Compiled::Absent("/pools/0/fallbackStatuses"),
    ),
    (
        "spec.retries.attempts",
        Compiled::Value("/pools/0/retries/attempts"),
    ),
    (
        "spec.retries.statuses[]",
        Compiled::Absent("/pools/0/retries/statuses"),
    ),
    (
        "spec.retries.budgetRatio",
        Compiled::Value("/pools/0/retries/budgetRatio"),
    ),
    (
        "spec.retries.minRetriesPerSecond",
        Compiled::Value("/pools/0/retries/minRetriesPerSecond"),
    ),
    (
        "spec.healthCheck.path",
        Compiled::Value("/pools/0/healthCheck/path"),
    ),
    (
        "spec.healthCheck.interval",
        Compiled::Millis("/pools/0/healthCheck/intervalMs"),
    ),
    (
        "spec.healthCheck.timeout",
        Compiled::Millis("/pools/0/healthCheck/timeoutMs"),
    ),
    (
        "spec.healthCheck.healthyThreshold",
        Compiled::Value("/pools/0/healthCheck/healthyThreshold"),
    ),
    (
        "spec.healthCheck.unhealthyThreshold",
        Compiled::Value("/pools/0/healthCheck/unhealthyThreshold"),
    ),
    (
        "spec.outlierDetection.consecutiveFailures",
        Compiled::Value("/pools/0/outlier/consecutiveFailures"),
    ),
    (
        "spec.outlierDetection.baseEjectionTime",
        Compiled::Millis("/pools/0/outlier/baseEjectionMs"),
    ),
    (
        "spec.outlierDetection.maxEjectionTime",
        Compiled::Millis("/pools/0/outlier/maxEjectionMs"),
    ),
    (
        "spec.outlierDetection.maxEjectionPercent",
        Compiled::Value("/pools/0/outlier/maxEjectionPercent"),
    ),
    (
        "spec.authentication.jwt.consumerClaim",
        Compiled::Value("/pools/0/jwt/consumerClaim"),
    ),
    (
        "spec.authentication.jwt.tierClaim",
        Compiled::Value("/pools/0/jwt/tierClaim"),
    ),
    (
        "spec.authentication.jwt.leeway",
        Compiled::Millis("/pools/0/jwt/leewayMs"),
    ),
    ("spec.key.perPool", Compiled::Value("/policies/0/perPool")),
    (
        "spec.tiers[].limits[].burst",
        Compiled::SameAs(
            "/policies/0/tiers/standard/requests/0/burst",
            "/policies/0/tiers/standard/requests/0/requests",
        ),
    ),
    (
        "spec.defaultTier",
        Compiled::Value("/policies/0/defaultTier"),
    ),
    (
        "spec.tokenEstimate",
        Compiled::Value("/policies/0/tokenEstimate"),
    ),
];

/// Whether a documented default (a word) means the value `actual` (absent: `None`).
fn means(documented: &str, actual: Option<&Value>) -> bool {
    match actual {
        None => documented == "false",
        Some(Value::Bool(b)) => documented == b.to_string(),
        Some(Value::Number(n)) => documented.parse::<f64>().ok() == n.as_f64(),
        Some(Value::String(s)) => documented == s,
        Some(_) => false,
    }
}

fn millis(documented: &str) -> u64 {
    let d: Duration = documented
        .parse()
        .unwrap_or_else(|e| panic!("default {documented:?}: {e}"));
    u64::try_from(d.get().as_millis()).expect("fits")
}

#[test]
fn listed_defaults_are_the_schemas_and_compiles() {
    let schemas = schemas();
    let mut objects = Objects::default();
    manifest::parse_into(DEFAULTS, "defaults.yaml", &mut objects).expect("parses");
    let (table, diags) = compile(&objects);
    assert!(!diags.has_errors(), "{diags}");
    let table = serde_json::to_value(&table).expect("table is JSON");

    let rows = reference();
    for row in &rows {
        let Some(documented) = &row.default else {
            continue;
        };
        let field = node(&schemas[row.kind], &row.path).expect("listed field");
        let name = format!("{} {}", row.kind, row.path);

        // The field's description, from the Rust docs, states the same default.
        if let Some(stated) = stated_default(field) {
            assert_eq!(
                &stated, documented,
                "{name}: the description says otherwise"
            );
        }
        if let Some(default) = field.get("default") {
            assert!(
                means(documented, Some(default)),
                "{name}: docs say {documented}, the schema's default is {default}"
            );
            continue;
        }
        let (_, compiled) = TABLE
            .iter()
            .find(|(path, _)| *path == row.path)
            .unwrap_or_else(|| panic!("{name}: no check of its default {documented:?}"));
        match compiled {
            Compiled::Value(at) => assert!(
                means(documented, table.pointer(at)),
                "{name}: docs say {documented}, compile gives {:?}",
                table.pointer(at)
            ),
            Compiled::Millis(at) => assert_eq!(
                table.pointer(at).and_then(Value::as_u64),
                Some(millis(documented)),
                "{name}: docs say {documented}"
            ),
            Compiled::Absent(at) => assert_eq!(
                table.pointer(at),
                None,
                "{name}: docs say {documented}, compile fills in a value"
            ),
            Compiled::SameAs(at, other) => {
                assert_eq!(table.pointer(at), table.pointer(other), "{name}");
                assert!(other.ends_with(documented), "{name}: docs say {documented}");
            }
        }
    }
    for (path, _) in TABLE {
        assert!(
            rows.iter().any(|r| r.path == *path && r.default.is_some()),
            "{path} is checked here but the docs state no default for it"
        );
    }
}

/// The default a schema description states ("Default 30s.", "defaults to `requests`").
fn stated_default(field: &Value) -> Option<String> {
    let description = field.get("description")?.as_str()?;
    let lower = description.to_lowercase();
    let at = lower.find("default")?;
    let rest = &description[at + "default".len()..];
    let rest = rest.strip_prefix("s to").unwrap_or(rest);
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    if !rest.starts_with(' ') {
        return None;
    }
    Some(first_word(rest)).filter(|w| !w.is_empty())
}
