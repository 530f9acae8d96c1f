//! The RBAC rules each module declares (`RBAC` next to the code) are exactly the API
//! calls it makes: the watchers, the status writer, the event publisher and the leader
//! elector run through kube's real client against a stand-in that records every
//! request as `(group, resource, verb)`. The chart's ClusterRole and Role are compared
//! with the same rules (`sluice controller --print-rbac`) by
//! `scripts/validate-manifests.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::client::Body;
use kube::runtime::events::EventType;
use kube::runtime::watcher::Event;
use sluice_api::{AgentPoolStatus, Objects, RatePolicyStatus, manifest};
use sluice_controller::events::{self, EventPublisher, Transition};
use sluice_controller::lease::{self, LeaderElector, LeaseConfig, Observed};
use sluice_controller::status_writer::{self, StatusWriter, Written};
use sluice_controller::watch::{self, Scope, SliceLabel, WatchMetrics, kube_sources};
use sluice_controller::{
    Rule, cluster_rbac, consumer_rbac, lease_rbac, rbac_json, upstream_secret_rbac,
};

/// What RBAC checks for one request.
type Access = (String, String, String);

/// A stand-in API server: lists are empty, watches stay open, a Lease is kept once
/// created, writes are echoed; every request is recorded.
#[derive(Clone)]
struct ApiServer {
    log: Arc<Mutex<Vec<Access>>>,
    /// `(resource, labelSelector)` of every request that had one.
    selectors: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// `(resource, namespace, labelSelector)` of every request, `*` for a cluster-wide
    /// one.
    scopes: Arc<Mutex<BTreeSet<(String, String, String)>>>,
    lease: Arc<Mutex<Option<serde_json::Value>>>,
    objects: Objects,
}

/// The `(group, resource[/subresource], verb)` of a request, as the API server's
/// authorizer sees it.
fn access(method: &Method, path: &str, query: &str) -> Access {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => panic!("unexpected path {path}"),
    };
    let watch = query.split('&').any(|kv| kv == "watch=true");
    let verb = match *method {
        Method::GET if name.is_some() => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => panic!("unexpected method {method}"),
    };
    let resource = sub.map_or_else(|| resource.to_owned(), |s| format!("{resource}/{s}"));
    (group.to_owned(), resource, verb.to_owned())
}

type StandInBody = Either<
    Full<Bytes>,
    StreamBody<
        futures_util::stream::Pending<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

impl ApiServer {
    fn new() -> Self {
        let mut objects = Objects::default();
        manifest::parse_into(FIXTURE, "fixture", &mut objects).expect("fixture parses");
        Self {
            log: Arc::default(),
            selectors: Arc::default(),
            scopes: Arc::default(),
            lease: Arc::default(),
            objects,
        }
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (StatusCode, Option<serde_json::Value>) {
        let (group, resource, verb) = access(method, path, query);
        let namespace = path
            .split_once("/namespaces/")
            .map_or("*", |(_, rest)| rest.split('/').next().unwrap_or_default());
        let selector = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "labelSelector")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        self.scopes.lock().expect("lock").insert((
            resource.clone(),
            namespace.to_owned(),
            selector,
        ));
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == "labelSelector" {
                self.selectors
                    .lock()
                    .expect("lock")
                    .insert((resource.clone(), value.into_owned()));
            }
        }
        self.log
            .lock()
            .expect("lock")
            .push((group, resource.clone(), verb.clone()));
        let body: serde_json::Value =
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        match (verb.as_str(), resource.as_str()) {
            ("watch", _) => (StatusCode::OK, None),
            ("list", _) => (
                StatusCode::OK,
                Some(serde_json::json!({
                    "apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "1"}, "items": [],
                })),
            ),
            ("get", "leases") => match self.lease.lock().expect("lock").clone() {
                Some(lease) => (StatusCode::OK, Some(lease)),
                None => (
                    StatusCode::NOT_FOUND,
                    Some(serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found",
                    })),
                ),
            },
            ("create" | "update", "leases") => {
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = "2".into();
                *self.lease.lock().expect("lock") = Some(lease.clone());
                (StatusCode::OK, Some(lease))
            }
            ("patch", "agentpools/status") => (
                StatusCode::OK,
                Some(serde_json::to_value(&self.objects.pools[0]).expect("json")),
            ),
            ("patch", "ratepolicies/status") => (
                StatusCode::OK,
                Some(serde_json::to_value(&self.objects.policies[0]).expect("json")),
            ),
            _ => (StatusCode::OK, Some(body)),
        }
    }

    fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let server = server.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let (code, reply) = server.handle(
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query().unwrap_or_default(),
                    &bytes,
                );
                let body: StandInBody = match reply {
                    Some(json) => Either::Left(Full::new(Bytes::from(
                        serde_json::to_vec(&json).expect("json"),
                    ))),
                    // A watch that stays open with nothing to say.
                    None => Either::Right(StreamBody::new(futures_util::stream::pending())),
                };
                let mut resp = Response::new(body);
                *resp.status_mut() = code;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, kube::Error>(resp)
            }
        });
        kube::Client::new(service, "default")
    }

    /// The requests since the last call, as `(group, resource) -> verbs`.
    fn take(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (group, resource, verb) in self.log.lock().expect("lock").drain(..) {
            out.entry((group, resource)).or_default().insert(verb);
        }
        out
    }
}

fn declared(rules: &[Rule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (group, resource, verbs) in rules {
        let entry = out
            .entry(((*group).to_owned(), (*resource).to_owned()))
            .or_default();
        for verb in *verbs {
            assert!(
                entry.insert((*verb).to_owned()),
                "{verb} on {resource} declared twice"
            );
        }
    }
    out
}

const FIXTURE: &str = r"
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: chat, namespace: agents, generation: 1}
spec:
  matches: [{pathPrefix: /chat}]
  backends: [{endpoints: ['10.0.0.1:8080']}]
---
apiVersion: sluice.dev/v1alpha1
kind: RatePolicy
metadata: {name: limits, namespace: agents, generation: 1}
spec:
  targetRefs: [{kind: AgentPool, name: chat}]
  key: {type: Consumer}
  tiers: [{name: standard, limits: [{requests: 10, period: 1m}]}]
  defaultTier: standard
";

/// Lists, then opens the watch (which stays open: the poll times out).
async fn list_and_watch<K>(mut stream: watch::EventStream<K>) {
    loop {
        match stream.next().await.expect("the watcher runs") {
            Event::InitDone => break,
            Event::Init | Event::InitApply(_) => {}
            Event::Apply(_) | Event::Delete(_) => panic!("nothing to watch yet"),
        }
    }
    let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    assert!(next.is_err(), "the watch stays open");
}

fn condition(type_: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

#[tokio::test(start_paused = true)]
async fn each_module_declares_exactly_the_api_calls_it_makes() {
    let server = ApiServer::new();
    let client = server.client();

    // The watchers, over every namespace and over one.
    for namespaces in [Vec::new(), vec!["agents".to_owned()]] {
        let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let scope = Scope {
            namespaces: &namespaces,
            ..Scope::default()
        };
        let sources = kube_sources(&client, &scope, &metrics);
        let services = sources.slice_services.expect("slices selected by Service");
        services.send_replace(BTreeSet::from([("agents".to_owned(), "chat".to_owned())]));
        for s in sources.pools {
            list_and_watch(s).await;
        }
        for s in sources.policies {
            list_and_watch(s).await;
        }
        for s in sources.slices {
            list_and_watch(s).await;
        }
        for s in sources.secrets {
            list_and_watch(s).await;
        }
        // Secrets: the consumer watchers' (CONSUMER_RBAC) and the upstream ones'
        // (UPSTREAM_SECRET_RBAC) calls are the same, and granted apart from the rest.
        assert_eq!(
            server.take(),
            declared(&[watch::RBAC, watch::CONSUMER_RBAC].concat()),
            "watch::RBAC and watch::CONSUMER_RBAC"
        );
        assert_eq!(
            declared(watch::UPSTREAM_SECRET_RBAC),
            declared(watch::CONSUMER_RBAC),
            "watch::UPSTREAM_SECRET_RBAC"
        );
    }

    // The status writer.
    let writer = StatusWriter::new(client.clone());
    let pool = &server.objects.pools[0];
    let status = AgentPoolStatus {
        conditions: vec![condition("Accepted", "Accepted")],
        ready_endpoints: Some(1),
        proxies: Some(2),
        updated_proxies: Some(1),
        observed_generation: Some(1),
    };
    assert_eq!(
        writer.apply_pool(pool, &status).await.expect("patched"),
        Written::Patched
    );
    let policy = &server.objects.policies[0];
    let status = RatePolicyStatus {
        conditions: vec![condition("Accepted", "Accepted")],
        observed_generation: Some(1),
    };
    assert_eq!(
        writer.apply_policy(policy, &status).await.expect("patched"),
        Written::Patched
    );
    assert_eq!(
        server.take(),
        declared(status_writer::RBAC),
        "status_writer::RBAC"
    );

    // The event publisher: a new event, then a repeat folded into its series.
    let publisher = EventPublisher::new(client.clone(), "controller-0");
    let flip = Transition {
        type_: EventType::Warning,
        reason: "NoReadyEndpoints".into(),
        note: "Ready=False: no endpoint of the pool is ready".into(),
        action: "Ready".into(),
    };
    let regarding = pool.object_ref(&());
    publisher.publish(&regarding, &flip).await.expect("created");
    publisher.publish(&regarding, &flip).await.expect("patched");
    assert_eq!(server.take(), declared(events::RBAC), "events::RBAC");

    // The leader elector: create, renew, release.
    let config = LeaseConfig::new(
        "sluice-controller",
        "sluice",
        "controller-0",
        Duration::from_secs(15),
    )
    .expect("config");
    let elector = LeaderElector::new(client, config);
    assert_eq!(
        elector.try_acquire_or_renew().await.expect("round"),
        Observed::Acquired
    );
    assert_eq!(
        elector.try_acquire_or_renew().await.expect("round"),
        Observed::Renewed
    );
    elector.release().await.expect("released");
    assert_eq!(server.take(), declared(lease::RBAC), "lease::RBAC");
}

#[test]
fn the_printed_rules_are_the_declared_ones() {
    let json = rbac_json();
    let rules = |key: &str| -> BTreeMap<(String, String), BTreeSet<String>> {
        let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for rule in json[key].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().expect("apiGroups") {
                for resource in rule["resources"].as_array().expect("resources") {
                    let verbs = rule["verbs"].as_array().expect("verbs");
                    out.entry((
                        group.as_str().expect("group").to_owned(),
                        resource.as_str().expect("resource").to_owned(),
                    ))
                    .or_default()
                    .extend(verbs.iter().map(|v| v.as_str().expect("verb").to_owned()));
                }
            }
        }
        out
    };
    assert_eq!(rules("clusterRole"), declared(&cluster_rbac()));
    assert_eq!(rules("leaseRole"), declared(&lease_rbac()));
    assert_eq!(rules("consumerRole"), declared(&consumer_rbac()));
    assert_eq!(
        rules("upstreamSecretRole"),
        declared(&upstream_secret_rbac())
    );
    // Secrets are read only where a Role grants it, never cluster-wide.
    assert!(
        !rules("clusterRole").keys().any(|(_, r)| r == "secrets"),
        "the ClusterRole grants no Secret"
    );
    // Nothing the controller does needs more than reading and writing its own objects.
    let all = declared(&[cluster_rbac(), lease_rbac(), consumer_rbac()].concat());
    for ((group, resource), verbs) in &all {
        assert!(
            !verbs.contains("delete") && !verbs.contains("deletecollection"),
            "{group}/{resource}: the controller deletes nothing"
        );
        if resource == "secrets" {
            assert_eq!(
                verbs.iter().map(String::as_str).collect::<Vec<_>>(),
                vec!["list", "watch"],
                "Secrets are only listed and watched"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_watchers_ask_only_for_the_referenced_services_slices_and_labelled_secrets() {
    let server = ApiServer::new();
    let client = server.client();
    let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let labels: Vec<SliceLabel> = ["sluice.dev/agent=true", "team"]
        .iter()
        .map(|l| l.parse().expect("valid label"))
        .collect();
    let scope = Scope {
        slice_labels: &labels,
        ..Scope::default()
    };
    let sources = kube_sources(&client, &scope, &metrics);
    let services = sources.slice_services.expect("slices selected by Service");
    services.send_replace(BTreeSet::from([
        ("agents".to_owned(), "chat".to_owned()),
        ("other".to_owned(), "chat".to_owned()),
        ("agents".to_owned(), "search".to_owned()),
    ]));
    for s in sources.slices {
        list_and_watch(s).await;
    }
    for s in sources.secrets {
        list_and_watch(s).await;
    }
    let selectors = server.selectors.lock().expect("lock").clone();
    assert_eq!(
        selectors,
        BTreeSet::from([
            (
                "endpointslices".to_owned(),
                "kubernetes.io/service-name in (chat,search),sluice.dev/agent=true,team".to_owned()
            ),
            ("secrets".to_owned(), "sluice.dev/consumer".to_owned()),
            ("secrets".to_owned(), "sluice.dev/upstream".to_owned()),
        ])
    );
}

#[test]
fn endpointslice_labels_must_be_kubernetes_labels() {
    for good in [
        "app",
        "sluice.dev/agent",
        "sluice.dev/agent=true",
        "a=",
        "x_y.z=A-1",
    ] {
        assert!(good.parse::<SliceLabel>().is_ok(), "{good}");
    }
    for bad in [
        "",
        "=x",
        "Sluice.Dev/agent",
        "a/b/c",
        "/agent",
        "agent=-x",
        "agent=a b",
        "agent=a,b",
        "-agent",
    ] {
        let err = bad.parse::<SliceLabel>().expect_err(bad);
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }
    let long = format!("agent={}", "v".repeat(64));
    assert!(long.parse::<SliceLabel>().is_err());
}

#[tokio::test(start_paused = true)]
async fn secrets_are_read_in_the_consumer_and_upstream_secret_namespaces_only() {
    let server = ApiServer::new();
    let client = server.client();
    let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let consumers = ["consumers".to_owned(), "partners".to_owned()];
    let upstream = ["agents".to_owned()];
    let scope = Scope {
        consumer_namespaces: &consumers,
        upstream_secret_namespaces: &upstream,
        ..Scope::default()
    };
    let sources = kube_sources(&client, &scope, &metrics);
    assert_eq!(
        sources.upstream_secret_namespaces,
        Some(BTreeSet::from(["agents".to_owned()])),
        "the compile step is told where pools may name Secrets"
    );
    for s in sources.pools {
        list_and_watch(s).await;
    }
    for s in sources.secrets {
        list_and_watch(s).await;
    }
    let scopes = server.scopes.lock().expect("lock").clone();
    let secrets = |label: &str| -> BTreeSet<&str> {
        scopes
            .iter()
            .filter(|(r, _, selector)| r == "secrets" && selector == label)
            .map(|(_, ns, _)| ns.as_str())
            .collect()
    };
    assert_eq!(
        secrets("sluice.dev/consumer"),
        BTreeSet::from(["consumers", "partners"])
    );
    assert_eq!(secrets("sluice.dev/upstream"), BTreeSet::from(["agents"]));
    assert!(
        !scopes.iter().any(|(r, ns, _)| r == "secrets" && ns == "*"),
        "no cluster-wide Secret request: {scopes:?}"
    );
    // The pools are still watched everywhere.
    assert!(
        scopes.contains(&("agentpools".to_owned(), "*".to_owned(), String::new())),
        "{scopes:?}"
    );

    // Without --upstream-secret-namespace: where the pools are, and any pool may.
    let server = ApiServer::new();
    let sources = kube_sources(&server.client(), &Scope::default(), &metrics);
    assert_eq!(sources.upstream_secret_namespaces, None);
    for s in sources.secrets {
        list_and_watch(s).await;
    }
    let scopes = server.scopes.lock().expect("lock").clone();
    assert!(
        scopes.contains(&(
            "secrets".to_owned(),
            "*".to_owned(),
            "sluice.dev/upstream".to_owned()
        )),
        "{scopes:?}"
    );
}
