//! The stand-in through kube's own client, as the controller uses it: pages of a list,
//! set-based selectors, watches delayed on demand (paused time), server-side apply with
//! two field managers on a list map, a schema that bounds what it declares only, a
//! resource granted in some namespaces only, and Events validated as the API server
//! does.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use sluice_fake_apiserver::FakeApiServer;

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
    }))
    .expect("a ConfigMap")
}

fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 10},
                    }},
                    "status": {"type": "object", "properties": {
                        "conditions": {
                            "type": "array", "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["type"],
                            "items": {"type": "object", "required": ["type", "status"], "properties": {
                                "type": {"type": "string"}, "status": {"type": "string"},
                            }},
                        },
                    }},
                }}},
            }],
        },
    })
}

fn widgets(server: &FakeApiServer) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    Api::namespaced_with(server.client(), "ns", &ApiResource::from_gvk(&gvk))
}

fn widget(name: &str, size: u64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name, "namespace": "ns"}, "spec": {"size": size},
    }))
    .expect("a Widget")
}

#[tokio::test]
async fn a_list_comes_in_pages_and_a_set_selector_filters_it() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    for (i, app) in ["a", "b", "c", "a", "d"].iter().enumerate() {
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), json!({"app": app})),
        )
        .await
        .expect("created");
    }
    let config = watcher::Config::default()
        .labels("app in (a,b,c)")
        .page_size(2);
    let mut events = watcher::watcher(api, config).boxed();
    let mut listed = Vec::new();
    while let Some(event) = events.next().await {
        match event.expect("no error") {
            Event::InitApply(cm) => listed.push(cm.metadata.name.expect("name")),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, ["cm-0", "cm-1", "cm-2", "cm-3"]);
    let lists: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|r| r["query"].get("watch").is_none())
        .filter(|r| r["path"] == "/api/v1/namespaces/ns/configmaps" && r["method"] == "GET")
        .collect();
    assert_eq!(lists.len(), 2, "two pages: {lists:?}");
    assert_eq!(lists[1]["query"]["continue"], "6:ns/cm-1");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_watch_delivers_each_event_late_and_in_order() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    while !matches!(
        events.next().await.expect("the watcher runs"),
        Ok(Event::InitDone)
    ) {}
    server.set_watch_delay(Duration::from_millis(500));

    let start = tokio::time::Instant::now();
    api.create(&PostParams::default(), &config_map("one", json!({})))
        .await
        .expect("created at once");
    assert!(
        start.elapsed() < Duration::from_millis(10),
        "writes are not delayed"
    );
    api.create(&PostParams::default(), &config_map("two", json!({})))
        .await
        .expect("created");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match events.next().await {
            Some(Ok(Event::Apply(cm))) => {
                seen.push((cm.metadata.name.expect("name"), start.elapsed()))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen[0].0, "one");
    assert_eq!(seen[1].0, "two");
    assert!(seen[0].1 >= Duration::from_millis(500), "{seen:?}");
}

#[tokio::test]
async fn two_managers_apply_their_own_conditions() {
    let server = FakeApiServer::new();
    server.install_crd(&crd()).expect("installed");
    let api = widgets(&server);
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .expect("created");
    let status = |conditions: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"conditions": conditions}});
    let theirs = status(json!([{"type": "Compliant", "status": "True"}]));
    api.patch_status(
        "w",
        &PatchParams::apply("policy-engine"),
        &Patch::Apply(&theirs),
    )
    .await
    .expect("applied");
    let ours = status(
        json!([{"type": "Ready", "status": "True"}, {"type": "Accepted", "status": "True"}]),
    );
    let forced = PatchParams::apply("sluice-controller").force();
    api.patch_status("w", &forced, &Patch::Apply(&ours))
        .await
        .expect("applied");
    let ours = status(json!([{"type": "Ready", "status": "False"}]));
    let w = api
        .patch_status("w", &forced, &Patch::Apply(&ours))
        .await
        .expect("applied");
    let types: Vec<(String, String)> = w.data["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().expect("type").to_owned(),
                c["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("Compliant".to_owned(), "True".to_owned()),
            ("Ready".to_owned(), "False".to_owned())
        ],
        "the other manager's condition stays; ours that we no longer apply goes"
    );
    let managers: Vec<&str> = w
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert!(
        managers.contains(&"policy-engine") && managers.contains(&"sluice-controller"),
        "{managers:?}"
    );
    // Without force, taking another manager's field is a conflict.
    let err = api
        .patch_status(
            "w",
            &PatchParams::apply("policy-engine"),
            &Patch::Apply(&status(json!([{"type": "Ready", "status": "True"}]))),
        )
        .await
        .expect_err("conflict");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
}

#[tokio::test]
async fn a_schema_bounds_what_it_declares_and_keeps_what_it_stored() {
    let server = FakeApiServer::new();
    let mut loose = crd();
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["size"] = json!({"type": "integer", "format": "uint32", "minimum": 0});
    server.install_crd(&loose).expect("installed");
    let api = widgets(&server);
    // `format: uint32` bounds nothing: the API server does not know the format.
    api.create(&PostParams::default(), &widget("huge", 5_000_000_000))
        .await
        .expect("accepted");
    // A tightened schema refuses new objects out of range, and keeps the stored one.
    server.install_crd(&crd()).expect("replaced");
    let err = api
        .create(&PostParams::default(), &widget("big", 11))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.size")),
        "{err}"
    );
    let raw = server.call(
        "GET",
        "/apis/example.com/v1/namespaces/ns/widgets/huge",
        None,
    );
    assert_eq!(raw.body["spec"]["size"], 5_000_000_000u64);
}

#[tokio::test]
async fn a_resource_granted_in_some_namespaces_is_forbidden_elsewhere_and_cluster_wide() {
    let server = FakeApiServer::new();
    server.grant_only_in("", "configmaps", &["ns"]);
    let client = server.client();
    let here: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    here.create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .expect("granted here");
    assert_eq!(
        here.list(&Default::default())
            .await
            .expect("listed")
            .items
            .len(),
        1
    );
    let forbidden = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code == 403,
        _ => false,
    };
    let all: Api<ConfigMap> = Api::all(client.clone());
    let err = all
        .list(&Default::default())
        .await
        .expect_err("cluster-wide");
    assert!(forbidden(err));
    let other: Api<ConfigMap> = Api::namespaced(client, "other");
    let err = other
        .list(&Default::default())
        .await
        .expect_err("elsewhere");
    assert!(forbidden(err));
    // A test acting as kubectl is not restricted.
    assert_eq!(server.call("GET", "/api/v1/configmaps", None).status, 200);
}

#[tokio::test]
async fn events_are_validated_as_the_api_server_does() {
    let server = FakeApiServer::new();
    let path = "/apis/events.k8s.io/v1/namespaces/ns/events";
    let event = |name: &str, reason: &str| {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "ns"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "sluice.dev/controller", "reportingInstance": "c-0",
            "action": "Ready", "reason": reason, "type": "Normal", "note": "ok",
        })
    };
    assert_eq!(
        server
            .call("POST", path, Some(event("a.1", "Ready")))
            .status,
        201
    );
    let too_long = format!("{}.1", "a".repeat(252));
    let answer = server.call("POST", path, Some(event(&too_long, "Ready")));
    assert_eq!(answer.status, 422, "{}", answer.body);
    let answer = server.call("POST", path, Some(event("a.2", &"R".repeat(129))));
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("reason")),
        "{}",
        answer.body
    );
}
