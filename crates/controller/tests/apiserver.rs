//! The controller in Kubernetes mode against the stand-in API server
//! (`sluice-fake-apiserver`), through kube's own client, with the CRDs of `crds/` and
//! paused time: kube's watchers, the watch loop, the status writer and its Events, as
//! `sluice controller` wires them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_api::RouteTable;
use sluice_controller::Publisher;
use sluice_controller::events::EventPublisher;
use sluice_controller::status::{
    CONDITION_ACCEPTED, CONDITION_READY, REASON_INVALID, REASON_INVALID_SPEC, REASON_NOT_ACCEPTED,
};
use sluice_controller::status_writer::{StatusBatch, StatusWriter};
use sluice_controller::watch::{Scope, Watch, WatchMetrics, kube_sources};
use sluice_fake_apiserver::FakeApiServer;

const POOLS: &str = "/apis/sluice.dev/v1alpha1/namespaces/agents/agentpools";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/agents/endpointslices";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/agents/events";

/// The CRD of `file` in `crds/`, as JSON.
fn crd(file: &str) -> Value {
    let path = format!("{}/../../crds/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the CRD is there");
    serde_yaml::from_str(&text).expect("the CRD parses")
}

/// `schema` without any `maximum`: the CRD of a release that declared `format: uint32`
/// alone, which the API server does not enforce.
fn unbounded(mut schema: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("maximum");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut schema);
    schema
}

/// A server with the CRDs of this release.
fn server() -> FakeApiServer {
    let server = FakeApiServer::new();
    for file in ["agentpools.sluice.dev.yaml", "ratepolicies.sluice.dev.yaml"] {
        server.install_crd(&crd(file)).expect("installed");
    }
    server
}

/// AgentPool `name` in namespace `agents`, with a static endpoint, and `queue`.
fn pool(name: &str, queue: &Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": "agents"},
        "spec": {
            "matches": [{"pathPrefix": format!("/{name}")}],
            // A queue is only accepted where an endpoint can be full.
            "backends": [{"endpoints": ["10.0.0.1:8080"], "maxConcurrency": 4}],
            "queue": queue,
        },
    })
}

fn create(server: &FakeApiServer, object: Value) -> Value {
    create_in(server, POOLS, object)
}

fn create_in(server: &FakeApiServer, path: &str, object: Value) -> Value {
    let answer = server.call("POST", path, Some(object));
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.body
}

/// The controller of one replica (it holds no Lease: it writes), watching every
/// namespace of `server`.
struct Controller {
    publisher: Publisher,
}

impl Controller {
    fn start(server: &FakeApiServer) -> Self {
        Self::start_in(server, &Scope::default())
    }

    /// A replica watching what `scope` says.
    fn start_in(server: &FakeApiServer, scope: &Scope<'_>) -> Self {
        let client = server.client();
        let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let sources = kube_sources(&client, scope, &metrics);
        let publisher = Publisher::new();
        let (tx, rx) = tokio::sync::watch::channel(StatusBatch::default());
        let writer = StatusWriter::new(client.clone())
            .with_events(EventPublisher::new(client, "sluice-controller-0"));
        let written = writer.last_written();
        tokio::spawn(writer.run(rx));
        let core = Watch::new(
            sources,
            publisher.clone(),
            metrics,
            Duration::from_millis(50),
        )
        .with_statuses(tx)
        .with_last_written(written);
        tokio::spawn(core.run());
        Self { publisher }
    }

    fn table(&self) -> Option<RouteTable> {
        self.publisher.current().map(|p| p.table.clone())
    }
}

/// Runs the loop for `seconds` of paused time.
async fn run_for(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

/// `type → (status, reason, message, lastTransitionTime)` of a stored object.
fn conditions(server: &FakeApiServer, name: &str) -> BTreeMap<String, [String; 4]> {
    conditions_at(server, &format!("{POOLS}/{name}"))
}

/// [`conditions`] of the object at `path`.
fn conditions_at(server: &FakeApiServer, path: &str) -> BTreeMap<String, [String; 4]> {
    let object = server.call("GET", path, None).body;
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (
                s("type"),
                [
                    s("status"),
                    s("reason"),
                    s("message"),
                    s("lastTransitionTime"),
                ],
            )
        })
        .collect()
}

/// The requests of `method` on `path` served so far.
fn requests(server: &FakeApiServer, method: &str, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r["method"] == method && r["path"] == path)
        .count()
}

/// The Events about AgentPool `name`: `(reason, series count)`.
fn events(server: &FakeApiServer, name: &str) -> Vec<(String, u64)> {
    let list = server.call("GET", EVENTS, None).body;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["series"]["count"].as_u64().unwrap_or(1),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_schema_bounds_every_number_the_controller_decodes() {
    let server = server();
    let answer = server.call(
        "POST",
        POOLS,
        Some(pool("big", &json!({"defaultPriority": 5_000_000_000u64}))),
    );
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.queue.defaultPriority")),
        "{}",
        answer.body
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_the_controller_cannot_decode_is_refused_alone_and_the_others_compile() {
    // Stored by an older CRD that bounded nothing, then the CRD was tightened: the API
    // server keeps the object, and lists it with the others.
    let server = FakeApiServer::new();
    server
        .install_crd(&unbounded(crd("agentpools.sluice.dev.yaml")))
        .expect("installed");
    create(
        &server,
        pool("big", &json!({"defaultPriority": 5_000_000_000u64})),
    );
    for file in ["agentpools.sluice.dev.yaml", "ratepolicies.sluice.dev.yaml"] {
        server.install_crd(&crd(file)).expect("installed");
    }
    create(&server, pool("chat", &json!({"defaultPriority": 10})));

    // A fresh replica syncs, compiles the good pool and reports on the bad one.
    let controller = Controller::start(&server);
    run_for(5).await;
    let table = controller
        .table()
        .expect("the replica synced and published");
    let pools: Vec<&str> = table.pools.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(pools, ["agents/chat"]);

    let big = conditions(&server, "big");
    let [status, reason, message, _] = &big[CONDITION_ACCEPTED];
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", REASON_INVALID_SPEC)
    );
    assert!(
        message.contains("spec.queue.defaultPriority") && message.contains("5000000000"),
        "{message}"
    );
    let [status, reason, ..] = &big[CONDITION_READY];
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", REASON_NOT_ACCEPTED)
    );
    assert_eq!(conditions(&server, "chat")[CONDITION_ACCEPTED][0], "True");

    // Fixed by its owner, it compiles.
    let answer = server.call(
        "PATCH",
        &format!("{POOLS}/big"),
        Some(json!({"spec": {"queue": {"defaultPriority": 7}}})),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    run_for(5).await;
    let table = controller.table().expect("published");
    assert_eq!(table.pools.len(), 2);
    assert_eq!(conditions(&server, "big")[CONDITION_ACCEPTED][0], "True");
}

#[tokio::test(start_paused = true)]
async fn a_lagging_watch_neither_rewrites_a_status_nor_repeats_its_events() {
    let server = server();
    let controller = Controller::start(&server);
    run_for(1).await;
    assert!(controller.table().is_some(), "synced on an empty cluster");
    // A loaded API server: every watch event half a second after its write.
    server.set_watch_delay(Duration::from_millis(500));

    create(&server, pool("chat", &json!({})));
    // The controller sees `chat` at 0.5 s and writes its status at once; it sees
    // `other` at 0.6 s, before its own write to `chat` (1 s), and passes again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    create(&server, pool("other", &json!({})));
    run_for(1).await;
    let first = conditions(&server, "chat");
    assert_eq!(first[CONDITION_ACCEPTED][0], "True");
    run_for(10).await;

    let status = format!("{POOLS}/chat/status");
    assert_eq!(
        requests(&server, "PATCH", &status),
        1,
        "one status write for one change"
    );
    assert_eq!(
        conditions(&server, "chat"),
        first,
        "transition times stay where the first write put them"
    );
    let mut chat = events(&server, "chat");
    chat.sort();
    assert_eq!(
        chat,
        [("Accepted".to_owned(), 1), ("Ready".to_owned(), 1)],
        "each transition is one Event, posted once"
    );
}

#[tokio::test(start_paused = true)]
async fn another_managers_condition_stays_and_is_not_fought_over() {
    let server = server();
    create(&server, pool("chat", &json!({})));
    let controller = Controller::start(&server);
    run_for(2).await;
    assert!(controller.table().is_some());
    let status = format!("{POOLS}/chat/status");
    assert_eq!(requests(&server, "PATCH", &status), 1);

    // A policy engine applies its own condition to the same list map.
    let theirs = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
        "status": {"conditions": [{
            "type": "Compliant", "status": "True", "reason": "Checked", "message": "ok",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    });
    let answer = server.call_with(
        "PATCH",
        &format!("{status}?fieldManager=policy-engine"),
        "application/apply-patch+yaml",
        theirs,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Something else changes, and the controller passes again.
    create(&server, pool("other", &json!({})));
    run_for(5).await;

    assert_eq!(
        requests(&server, "PATCH", &status),
        1,
        "the controller does not rewrite its status over another manager's condition"
    );
    let chat = conditions(&server, "chat");
    assert_eq!(chat["Compliant"][0], "True");
    assert_eq!(chat[CONDITION_ACCEPTED][0], "True");
}

/// AgentPool `name` whose backend is Service `service`, port `http`.
fn service_pool(name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": "agents"},
        "spec": {
            "matches": [{"pathPrefix": format!("/{name}")}],
            "backends": [{"service": {"name": service, "port": "http"}}],
        },
    })
}

/// EndpointSlice `<service>-1` of `service`, one ready endpoint at `address`.
fn slice(service: &str, address: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"), "namespace": "agents",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

#[tokio::test(start_paused = true)]
async fn the_controller_lists_only_the_referenced_services_slices_from_the_watch_cache() {
    let server = server();
    for (service, address) in [
        ("chat", "10.0.0.1"),
        ("other", "10.0.0.2"),
        ("unrelated", "10.0.0.3"),
    ] {
        create_in(&server, SLICES, slice(service, address));
    }
    create(&server, service_pool("chat", "chat"));
    let controller = Controller::start(&server);
    run_for(2).await;
    let table = controller.table().expect("published");
    let endpoints: Vec<String> = table.pools[0]
        .endpoints()
        .map(|e| e.address.clone())
        .collect();
    assert_eq!(endpoints, ["10.0.0.1:8080"]);

    // A pool that names another Service: the slice watchers list again, for both, and
    // the pool is compiled with its endpoints at once (never Ready=False in between).
    create(&server, service_pool("other", "other"));
    run_for(2).await;
    let table = controller.table().expect("published");
    let other = table.pool("agents/other").expect("compiled");
    let endpoints: Vec<String> = other.endpoints().map(|e| e.address.clone()).collect();
    assert_eq!(endpoints, ["10.0.0.2:8080"]);
    let mut other = events(&server, "other");
    other.sort();
    assert_eq!(other, [("Accepted".to_owned(), 1), ("Ready".to_owned(), 1)]);
    assert_eq!(conditions(&server, "other")[CONDITION_READY][0], "True");

    let lists: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["query"].get("watch").is_none())
        .collect();
    let selectors: Vec<&str> = lists
        .iter()
        .filter(|r| r["path"] == "/apis/discovery.k8s.io/v1/endpointslices")
        .map(|r| r["query"]["labelSelector"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        selectors,
        [
            "kubernetes.io/service-name in (chat)",
            "kubernetes.io/service-name in (chat,other)"
        ]
    );
    for list in &lists {
        assert_eq!(
            list["query"]["resourceVersion"], "0",
            "from the watch cache: {list}"
        );
    }
}

/// AgentPool `name` of `namespace`: a backend by URL whose credential is Secret
/// `provider` of its namespace.
fn url_pool(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "matches": [{"pathPrefix": format!("/{namespace}")}],
            "backends": [{
                "url": "http://10.0.0.9:8080",
                "auth": {"secretRef": {"name": "provider"}, "prefix": "Bearer "},
            }],
        },
    })
}

/// Secret `provider` of `namespace`, labelled `sluice.dev/upstream`.
fn upstream_secret(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "provider", "namespace": namespace,
            "labels": {"sluice.dev/upstream": ""},
        },
        "stringData": {"api-key": format!("sk-{namespace}-0123456789")},
    })
}

#[tokio::test(start_paused = true)]
async fn secrets_are_read_only_where_a_role_grants_them_and_a_pool_elsewhere_is_refused() {
    let server = server();
    // RBAC as the chart sets it: Roles on Secrets in the consumer namespace and in the
    // one upstream Secret namespace, nothing cluster-wide.
    server.grant_only_in("", "secrets", &["sluice", "agents"]);
    for ns in ["agents", "teams"] {
        create_in(
            &server,
            &format!("/api/v1/namespaces/{ns}/secrets"),
            upstream_secret(ns),
        );
        create_in(
            &server,
            &format!("/apis/sluice.dev/v1alpha1/namespaces/{ns}/agentpools"),
            url_pool(ns, "provider"),
        );
    }
    let (consumers, upstream) = (["sluice".to_owned()], ["agents".to_owned()]);
    let controller = Controller::start_in(
        &server,
        &Scope {
            consumer_namespaces: &consumers,
            upstream_secret_namespaces: &upstream,
            ..Scope::default()
        },
    );
    run_for(5).await;

    // It synced with only the namespaced Secret permissions: no request was refused.
    let table = controller.table().expect("synced and published");
    let secrets: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/secrets")))
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!secrets.is_empty());
    for path in &secrets {
        assert!(
            path == "/api/v1/namespaces/sluice/secrets"
                || path == "/api/v1/namespaces/agents/secrets",
            "{path}"
        );
    }
    // The pool of the upstream Secret namespace has its credential.
    let pools: Vec<&str> = table.pools.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(pools, ["agents/provider"]);
    let auth = table.pools[0].backends[0]
        .auth
        .as_ref()
        .expect("the credential");
    assert_eq!(
        auth.header_value().expect("a header value"),
        "Bearer sk-agents-0123456789"
    );
    // The other one names a Secret the controller does not read: refused, naming the
    // field and the flag.
    let teams = conditions_at(
        &server,
        "/apis/sluice.dev/v1alpha1/namespaces/teams/agentpools/provider",
    );
    let [status, reason, message, _] = &teams[CONDITION_ACCEPTED];
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", REASON_INVALID)
    );
    assert!(
        message.contains("spec.backends[0].auth.secretRef")
            && message.contains("teams/provider")
            && message.contains("--upstream-secret-namespace"),
        "{message}"
    );

    // The stand-in refuses what RBAC would: a replica that lists upstream Secrets
    // cluster-wide (no --upstream-secret-namespace, every namespace watched) never syncs.
    let everywhere = Controller::start_in(
        &server,
        &Scope {
            consumer_namespaces: &consumers,
            ..Scope::default()
        },
    );
    run_for(5).await;
    assert!(everywhere.table().is_none(), "refused, never synced");
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r["path"] == "/api/v1/secrets"),
        "it asked cluster-wide"
    );
}

#[tokio::test(start_paused = true)]
async fn events_about_a_pool_named_at_the_length_limit_are_published_and_folded_into_series() {
    let server = server();
    // 253 characters, the most a name may have; the event name keeps 236 of them, and
    // the `-` at the cut is dropped (a DNS subdomain's parts end alphanumeric).
    let name = format!("{}-{}", "a".repeat(235), "b".repeat(17));
    assert_eq!(name.len(), 253);
    let mut object = url_pool("agents", &name);
    object["spec"]["matches"][0]["pathPrefix"] = json!("/long");
    create(&server, object);
    let _controller = Controller::start(&server);
    let secret = "/api/v1/namespaces/agents/secrets";
    // No Secret yet: refused. The Secret comes: accepted. It goes: refused again.
    run_for(2).await;
    assert_eq!(conditions(&server, &name)[CONDITION_ACCEPTED][0], "False");
    create_in(&server, secret, upstream_secret("agents"));
    run_for(2).await;
    assert_eq!(conditions(&server, &name)[CONDITION_ACCEPTED][0], "True");
    let answer = server.call("DELETE", &format!("{secret}/provider"), None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    run_for(2).await;
    assert_eq!(conditions(&server, &name)[CONDITION_ACCEPTED][0], "False");

    let mut seen = events(&server, &name);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Accepted".to_owned(), 1),
            (REASON_INVALID.to_owned(), 2),
            (REASON_NOT_ACCEPTED.to_owned(), 2),
            ("Ready".to_owned(), 1),
        ],
        "every transition published; the repeats folded into their series"
    );
    let list = server.call("GET", EVENTS, None).body;
    for event in list["items"].as_array().into_iter().flatten() {
        let event_name = event["metadata"]["name"].as_str().unwrap_or_default();
        let (prefix, suffix) = event_name.rsplit_once('.').expect("a suffix");
        assert!(event_name.len() <= 253, "{event_name}");
        assert_eq!(prefix, "a".repeat(235));
        assert!(
            !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{suffix}"
        );
        assert_eq!(event["regarding"]["name"], name.as_str());
    }
    let invalid = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["reason"] == REASON_INVALID)
        .and_then(|e| e["metadata"]["name"].as_str())
        .expect("the Invalid event");
    assert_eq!(
        requests(&server, "PATCH", &format!("{EVENTS}/{invalid}")),
        1,
        "the repeat is a PATCH of the first event"
    );
}
