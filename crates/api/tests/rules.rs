//! The CEL rules of the CRDs (`x-kubernetes-validations`) and the compile step refuse
//! the same objects.
//!
//! `kubectl apply` is the first line: the API server evaluates the rules and refuses an
//! invalid combination before the controller sees it. Compile is the second, and the
//! only one in file mode. There is no API server here, so the rules are evaluated with
//! `kube-cel` (the Kubernetes CEL libraries for the `cel` crate) against the generated
//! CRDs, and for every rule:
//!
//! * it parses, uses only the variables a CRD rule may use, and stays within the API
//!   server's cost budget by the schema's bounds;
//! * a case below breaks it, and compile refuses that case with an error on the field
//!   the rule is about.
//!
//! Every object of the compile fixtures the rules refuse, compile refuses too.
//!
//! One form is beyond `kube-cel`: `type(self) == int ? A : B`, the way the Kubernetes
//! documentation checks an int-or-string field, since the `cel` crate has no `type()`.
//! For a rule of that form the test runs `A` on an integer and `B` on a string.

use std::collections::BTreeSet;
use std::path::Path;

use kube_cel::{ErrorKind, ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde::Deserialize as _;
use serde_json::Value;
use sluice_api::{Diagnostics, ObjectRef, Objects, Severity, compile, manifest};

const POOL: &str = "apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: p, namespace: demo}
spec:
  matches: [{pathPrefix: /p}]
  backends: [{endpoints: [\"127.0.0.1:9001\"]}]
";

const POLICY: &str = "apiVersion: sluice.dev/v1alpha1
kind: RatePolicy
metadata: {name: r, namespace: demo}
spec:
  targetRefs: [{kind: AgentPool, name: p}]
  key: {type: Consumer}
  tiers: [{name: standard, limits: [{requests: 10, period: 1s}]}]
";

/// One object that breaks one rule: the rule's message, and the field compile's
/// error names.
struct Case {
    name: &'static str,
    base: &'static str,
    /// `spec` fields that replace the base's.
    spec: &'static str,
    message: &'static str,
    field: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "a queue no endpoint ever fills",
        base: POOL,
        spec: "queue: {maxDepth: 10}",
        message: "queue is only used with backends[].maxConcurrency: without it no endpoint is ever full",
        field: "spec.queue",
    },
    Case {
        name: "a fallback on a queue no endpoint ever fills",
        base: POOL,
        spec: "fallback: {name: other, when: [QueueFull]}",
        message: "fallback.when QueueFull and QueueTimeout are only used with backends[].maxConcurrency",
        field: "spec.fallback.when",
    },
    Case {
        name: "retried statuses without retries",
        base: POOL,
        spec: "retries: {attempts: 0, statuses: [503]}",
        message: "statuses are only retried with attempts above 0",
        field: "spec.retries.statuses",
    },
    Case {
        name: "a token estimate without token limits",
        base: POLICY,
        spec: "tokenEstimate: 500",
        message: "tokenEstimate is only used with tokenLimits",
        field: "spec.tokenEstimate",
    },
    Case {
        name: "a match on both a model and a model prefix",
        base: POOL,
        spec: "matches: [{pathPrefix: /v1, model: gpt-4o, modelPrefix: gpt-4}]",
        message: "set at most one of model and modelPrefix",
        field: "spec.matches[0].modelPrefix",
    },
    Case {
        name: "backend with neither service nor endpoints",
        base: POOL,
        spec: "backends: [{weight: 2}]",
        message: "set exactly one of service, endpoints or url",
        field: "spec.backends[0]",
    },
    Case {
        name: "backend with both service and endpoints",
        base: POOL,
        spec: "backends: [{service: {name: a, port: 80}, endpoints: [\"127.0.0.1:1\"]}]",
        message: "set exactly one of service, endpoints or url",
        field: "spec.backends[0]",
    },
    Case {
        name: "backend with endpoints and a url",
        base: POOL,
        spec: "backends: [{url: \"https://api.example.com\", endpoints: [\"127.0.0.1:1\"]}]",
        message: "set exactly one of service, endpoints or url",
        field: "spec.backends[0]",
    },
    Case {
        name: "tls with a cleartext url",
        base: POOL,
        spec: "backends: [{url: \"http://api.example.com\", tls: {sni: api.example.com}}]",
        message: "tls is only used with an https url",
        field: "spec.backends[0].tls",
    },
    Case {
        name: "insecureSkipVerify with a CA",
        base: POOL,
        spec: "backends: [{url: \"https://api.example.com\", tls: {insecureSkipVerify: true, caSecretRef: {name: ca}}}]",
        message: "insecureSkipVerify verifies nothing: it cannot be combined with caSecretRef",
        field: "spec.backends[0].tls.insecureSkipVerify",
    },
    Case {
        name: "a wildcard client certificate subject",
        base: POOL,
        spec: "access: {clientCertificates: {caSecretRef: {name: ca}, subjects: [a.example.com, \"*.example.com\"]}}",
        message: "subjects are matched exactly: no wildcards, list each subject",
        field: "spec.access.clientCertificates.subjects[1]",
    },
    Case {
        name: "port 0",
        base: POOL,
        spec: "backends: [{service: {name: a, port: 0}}]",
        message: "must be a port number (1-65535) or a port name (1-63 characters)",
        field: "spec.backends[0].service.port",
    },
    Case {
        name: "port above 65535",
        base: POOL,
        spec: "backends: [{service: {name: a, port: 70000}}]",
        message: "must be a port number (1-65535) or a port name (1-63 characters)",
        field: "spec.backends[0].service.port",
    },
    Case {
        name: "port name too long",
        base: POOL,
        spec: "backends: [{service: {name: a, port: a-port-name-that-is-much-longer-than-the-sixty-three-characters-allowed}}]",
        message: "must be a port number (1-65535) or a port name (1-63 characters)",
        field: "spec.backends[0].service.port",
    },
    Case {
        name: "ConsistentHash without its settings",
        base: POOL,
        spec: "loadBalancing: {algorithm: ConsistentHash}",
        message: "consistentHash is required with algorithm ConsistentHash: set header, cookie or clientIp",
        field: "spec.loadBalancing.consistentHash",
    },
    Case {
        name: "consistentHash settings with another algorithm",
        base: POOL,
        spec: "loadBalancing: {algorithm: Weighted, consistentHash: {header: x-session}}",
        message: "consistentHash is only used with algorithm ConsistentHash",
        field: "spec.loadBalancing.consistentHash",
    },
    Case {
        name: "peakEwma settings with another algorithm",
        base: POOL,
        spec: "loadBalancing: {peakEwma: {decay: 1s}}",
        message: "peakEwma is only used with algorithm PeakEwma",
        field: "spec.loadBalancing.peakEwma",
    },
    Case {
        name: "ConsistentHash on a header and a cookie",
        base: POOL,
        spec: "loadBalancing: {algorithm: ConsistentHash, consistentHash: {header: x-session, cookie: session}}",
        message: "set exactly one of header, cookie or clientIp: true",
        field: "spec.loadBalancing.consistentHash",
    },
    Case {
        name: "ConsistentHash on nothing",
        base: POOL,
        spec: "loadBalancing: {algorithm: ConsistentHash, consistentHash: {clientIp: false}}",
        message: "set exactly one of header, cookie or clientIp: true",
        field: "spec.loadBalancing.consistentHash",
    },
    Case {
        name: "JWT keys given twice",
        base: POOL,
        spec: "authentication: {jwt: {issuer: i, audiences: [a], jwksUri: \"https://i/keys\", jwks: '{\"keys\": []}'}}",
        message: "set exactly one of jwksUri or jwks",
        field: "spec.authentication.jwt",
    },
    Case {
        name: "JWT without keys",
        base: POOL,
        spec: "authentication: {jwt: {issuer: i, audiences: [a]}}",
        message: "set exactly one of jwksUri or jwks",
        field: "spec.authentication.jwt",
    },
    Case {
        name: "ejection time ceiling below the base",
        base: POOL,
        spec: "outlierDetection: {baseEjectionTime: 10m}",
        message: "maxEjectionTime (default 5m) must not be shorter than baseEjectionTime (default 30s)",
        field: "spec.outlierDetection.maxEjectionTime",
    },
    Case {
        name: "target that is not an AgentPool",
        base: POLICY,
        spec: "targetRefs: [{kind: Service, name: p}]",
        message: "must be AgentPool: a RatePolicy targets AgentPools",
        field: "spec.targetRefs[0].kind",
    },
    Case {
        name: "Header key without a header",
        base: POLICY,
        spec: "key: {type: Header}",
        message: "header is required with type Header",
        field: "spec.key.header",
    },
    Case {
        name: "header with another key type",
        base: POLICY,
        spec: "key: {type: Pool, header: x-team}",
        message: "header is only used with type Header",
        field: "spec.key.header",
    },
    Case {
        name: "burst with a sliding window",
        base: POLICY,
        spec: "algorithm: SlidingWindow\n  tiers: [{name: standard, limits: [{requests: 10, period: 1s, burst: 20}]}]",
        message: "burst is only used with algorithm TokenBucket; a sliding window admits requests per period",
        field: "spec.tiers[0].limits[0].burst",
    },
    Case {
        name: "two tiers of one name",
        base: POLICY,
        spec: "tiers: [{name: a, limits: [{requests: 1, period: 1s}]}, {name: a, limits: [{requests: 2, period: 1s}]}]",
        message: "tier names must be unique",
        field: "spec.tiers[1].name",
    },
    Case {
        name: "default tier that is not a tier",
        base: POLICY,
        spec: "defaultTier: premium",
        message: "defaultTier must name one of the tiers",
        field: "spec.defaultTier",
    },
    Case {
        name: "failure mode for local counters",
        base: POLICY,
        spec: "failureMode: Closed",
        message: "failureMode Closed is only used with scope Global: local counters need no store",
        field: "spec.failureMode",
    },
    Case {
        name: "tier without limits",
        base: POLICY,
        spec: "tiers: [{name: standard}]",
        message: "needs at least one of limits or tokenLimits",
        field: "spec.tiers[0]",
    },
];

/// The `openAPIV3Schema` of each CRD, by kind.
fn schemas() -> Vec<(String, Value)> {
    sluice_api::crds()
        .into_iter()
        .map(|(_, yaml)| {
            let crd: Value = serde_yaml::from_str(&yaml).expect("CRD is YAML");
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("kind")
                .to_owned();
            let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            (kind, schema)
        })
        .collect()
}

/// Every rule with the schema node it is scoped to.
fn rules(schema: &Value, path: &str, out: &mut Vec<(String, Value, String, String)>) {
    if let Some(Value::Array(list)) = schema.get("x-kubernetes-validations") {
        for rule in list {
            out.push((
                path.to_owned(),
                schema.clone(),
                rule["rule"].as_str().expect("rule").to_owned(),
                rule["message"]
                    .as_str()
                    .expect("every rule has a message")
                    .to_owned(),
            ));
        }
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, child) in properties {
            rules(child, &format!("{path}.{name}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            rules(child, &format!("{path}[]"), out);
        }
    }
}

fn document(case: &Case) -> String {
    let mut lines: Vec<String> = case.base.lines().map(str::to_owned).collect();
    for field in case.spec.lines().map(str::trim) {
        let key = field.split(':').next().expect("a field");
        let line = format!("  {field}");
        match lines
            .iter()
            .position(|l| l.starts_with(&format!("  {key}:")))
        {
            Some(i) => lines[i] = line,
            None => lines.push(line),
        }
    }
    lines.join("\n") + "\n"
}

/// The start of a rule that switches on the type of an int-or-string value.
const TYPE_SWITCH: &str = "type(self) == int ? ";

/// The two branches of a [`TYPE_SWITCH`] rule: for integers, for strings.
fn type_branches(rule: &str) -> Option<(&str, &str)> {
    let rest = rule.strip_prefix(TYPE_SWITCH)?;
    let (int, string) = rest.split_once(" : ")?;
    Some((int, string))
}

/// The value at a field path such as `spec.backends[0].service.port`.
fn at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut value = object;
    for part in path.split('.') {
        let (name, indexes) = part.split_once('[').unwrap_or((part, ""));
        value = value.get(name)?;
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(value)
}

/// Runs one rule on `value` alone.
fn passes(rule: &str, value: &Value) -> bool {
    let schema = serde_json::json!({"x-kubernetes-validations": [{"rule": rule}]});
    Validator::new().validate(&schema, value, None).is_ok()
}

/// The messages of the rules the object breaks.
fn cel_errors(schemas: &[(String, Value)], object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("kind");
    let (_, schema) = schemas
        .iter()
        .find(|(k, _)| k == kind)
        .expect("a Sluice kind");
    let Err(errors) = Validator::new().validate(schema, object, None) else {
        return Vec::new();
    };
    let mut messages = Vec::new();
    for e in errors.iter() {
        if e.kind != ErrorKind::UnsupportedReference {
            messages.push(e.message.clone());
            continue;
        }
        let (int, string) = type_branches(&e.rule)
            .unwrap_or_else(|| panic!("kube-cel cannot evaluate {:?}: {}", e.rule, e.message));
        let value = at(object, &e.field_path).expect("the field the rule is on");
        let branch = if value.is_string() { string } else { int };
        if !passes(branch, value) {
            let mut all = Vec::new();
            rules(schema, kind, &mut all);
            let (_, _, _, message) = all
                .into_iter()
                .find(|(_, _, rule, _)| *rule == e.rule)
                .expect("the rule is in the schema");
            messages.push(message);
        }
    }
    messages
}

fn compiled(text: &str) -> Diagnostics {
    let mut objects = Objects::default();
    manifest::parse_into(text, "case.yaml", &mut objects).expect("case parses");
    compile(&objects).1
}

/// Whether `warning` is about a variable the rule binds itself in a macro such as
/// `list.all(x, ...)`, which `kube-cel`'s scope check takes for a free variable.
fn bound_variable_warning(rule: &str, warning: &kube_cel::AnalysisWarning) -> bool {
    warning.kind == WarningKind::WrongScope
        && ["all", "exists", "exists_one", "filter", "map"]
            .iter()
            .any(|m| {
                rule.split(&format!(".{m}(")).skip(1).any(|rest| {
                    rest.split_once(',').is_some_and(|(var, _)| {
                        warning
                            .message
                            .starts_with(&format!("variable '{}' ", var.trim()))
                    })
                })
            })
}

#[test]
fn every_rule_parses_is_in_scope_and_within_the_cost_budget() {
    let mut all = Vec::new();
    for (kind, schema) in schemas() {
        rules(&schema, &kind, &mut all);
    }
    assert!(all.len() >= 15, "expected the rules, found {}", all.len());
    for (path, node, rule, _) in &all {
        if let Err(e) = kube_cel::cel::Program::compile(rule) {
            panic!("{path}: rule {rule:?} is not valid CEL: {e}");
        }
        let compiled = compile_schema(node);
        let parts = match type_branches(rule) {
            Some((int, string)) => vec![int, string],
            None => vec![rule.as_str()],
        };
        for part in parts {
            let warnings: Vec<_> = analyze_rule(part, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| !bound_variable_warning(part, w))
                .collect();
            assert!(warnings.is_empty(), "{path}: {part:?}: {warnings:?}");
        }
    }
}

#[test]
fn every_rule_is_broken_by_a_case_that_compile_refuses_too() {
    let schemas = schemas();
    let mut all = Vec::new();
    for (kind, schema) in &schemas {
        rules(schema, kind, &mut all);
    }
    let mut broken = BTreeSet::new();
    for case in CASES {
        let text = document(case);
        let object: Value = serde_yaml::from_str(&text).expect("case is YAML");
        let errors = cel_errors(&schemas, &object);
        assert_eq!(
            errors,
            [case.message],
            "{}: the rules give {errors:?}\n{text}",
            case.name
        );
        broken.insert(case.message);

        let diags = compiled(&text);
        assert!(
            diags
                .iter()
                .any(|d| d.severity == Severity::Error && d.field == case.field),
            "{}: compile gives no error on {}:\n{diags}",
            case.name,
            case.field
        );
    }
    for (path, _, rule, message) in &all {
        assert!(
            broken.contains(message.as_str()),
            "{path}: no case breaks {rule:?}"
        );
    }
}

#[test]
fn the_base_objects_and_the_examples_pass_the_rules() {
    let schemas = schemas();
    for text in [POOL, POLICY] {
        let object: Value = serde_yaml::from_str(text).expect("YAML");
        assert_eq!(cel_errors(&schemas, &object), Vec::<String>::new());
        assert!(!compiled(text).has_errors(), "{text}");
    }
    // Every example in deploy/examples: each object passes the rules, and each folder
    // (what `kubectl apply -f` takes at once) compiles without an error.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut folders = 0;
    for folder in std::fs::read_dir(&examples).expect("deploy/examples") {
        let folder = folder.expect("entry").path();
        if !folder.is_dir() {
            continue;
        }
        let mut objects = Objects::default();
        let mut files = 0;
        for file in std::fs::read_dir(&folder).expect("example folder") {
            let file = file.expect("entry").path();
            let text = std::fs::read_to_string(&file).expect("example");
            if file.extension().is_none_or(|e| e != "yaml") || !text.contains("sluice.dev/") {
                continue;
            }
            files += 1;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let object = Value::deserialize(doc).expect("YAML");
                if object["apiVersion"].as_str() == Some("sluice.dev/v1alpha1") {
                    let errors = cel_errors(&schemas, &object);
                    assert!(errors.is_empty(), "{}: {errors:?}", file.display());
                }
            }
            manifest::parse_into(&text, &file.to_string_lossy(), &mut objects)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        if files > 0 {
            folders += 1;
            let (_, diags) = compile(&objects);
            assert!(!diags.has_errors(), "{}: {diags}", folder.display());
        }
    }
    assert!(folders >= 5, "the seed's examples are all there");
}

/// Over every compile fixture: an object the rules refuse is one compile refuses.
#[test]
fn compile_refuses_what_the_rules_refuse_in_the_fixtures() {
    let schemas = schemas();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compile");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let diags = compiled(&text);
        let refused: BTreeSet<&ObjectRef> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| &d.object)
            .collect();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).expect("YAML");
            let Some(kind @ ("AgentPool" | "RatePolicy")) = object["kind"].as_str() else {
                continue;
            };
            let errors = cel_errors(&schemas, &object);
            if errors.is_empty() {
                continue;
            }
            let name = ObjectRef::new(
                kind,
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default"),
                object["metadata"]["name"].as_str().unwrap_or_default(),
            );
            assert!(
                refused.contains(&name),
                "{}: {name} breaks {errors:?} but compiles",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} fixture objects break a rule");
}
