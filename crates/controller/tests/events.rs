//! Events on condition transitions: which flips make an event (pure), and the status
//! writer publishing them through kube's real client against an HTTP stand-in, only
//! while its replica holds the Lease.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::EventType;
use sluice_api::{AgentPool, AgentPoolStatus, RatePolicy, RatePolicyStatus, manifest};
use sluice_controller::events::{
    EventPublisher, MAX_NAME_LEN, MAX_NOTE_LEN, REPORTING_CONTROLLER, Transition, event_name,
    transitions,
};
use sluice_controller::lease::Leadership;
use sluice_controller::object::Parsed;
use sluice_controller::status::{
    CONDITION_ACCEPTED, CONDITION_READY, CONDITION_RESOLVED_REFS, REASON_ACCEPTED, REASON_INVALID,
    REASON_NO_READY_ENDPOINTS, REASON_READY, REASON_REFS_NOT_RESOLVED, REASON_RESOLVED_REFS,
};
use sluice_controller::status_writer::{StatusBatch, StatusWriter, Written};
use tokio::sync::watch;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/agents/events";

const OBJECTS: &str = r"
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: chat, namespace: agents, generation: 3, uid: 0b6a5f0e-1111-4c1e-9d2a-000000000001}
spec:
  matches: [{pathPrefix: /chat}]
  backends: [{service: {name: chat, port: http}}]
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

fn fixture() -> (AgentPool, RatePolicy) {
    let mut objects = sluice_api::Objects::default();
    manifest::parse_into(OBJECTS, "fixture", &mut objects).expect("fixture parses");
    (objects.pools.remove(0), objects.policies.remove(0))
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(3),
        last_transition_time: Time(Timestamp::from_second(1_750_000_000).expect("time")),
    }
}

fn healthy() -> Vec<Condition> {
    vec![
        condition(CONDITION_ACCEPTED, true, REASON_ACCEPTED, "accepted"),
        condition(
            CONDITION_RESOLVED_REFS,
            true,
            REASON_RESOLVED_REFS,
            "all references resolved",
        ),
        condition(CONDITION_READY, true, REASON_READY, "2 ready endpoints"),
    ]
}

fn drained() -> Vec<Condition> {
    vec![
        condition(CONDITION_ACCEPTED, true, REASON_ACCEPTED, "accepted"),
        condition(
            CONDITION_RESOLVED_REFS,
            false,
            REASON_REFS_NOT_RESOLVED,
            "spec.backends[0].service: Service agents/chat has no EndpointSlices",
        ),
        condition(
            CONDITION_READY,
            false,
            REASON_NO_READY_ENDPOINTS,
            "no endpoint of the pool is ready",
        ),
    ]
}

fn pool_status(conditions: Vec<Condition>) -> AgentPoolStatus {
    AgentPoolStatus {
        conditions,
        ready_endpoints: Some(0),
        observed_generation: Some(3),
        ..Default::default()
    }
}

#[test]
fn only_accepted_and_ready_flips_are_events() {
    // The first status: Accepted and Ready appear.
    let first = transitions(&[], &healthy());
    assert_eq!(
        first,
        vec![
            Transition {
                type_: EventType::Normal,
                reason: REASON_ACCEPTED.into(),
                note: "Accepted=True: accepted".into(),
                action: CONDITION_ACCEPTED.into(),
            },
            Transition {
                type_: EventType::Normal,
                reason: REASON_READY.into(),
                note: "Ready=True: 2 ready endpoints".into(),
                action: CONDITION_READY.into(),
            },
        ]
    );
    // Nothing flipped (a message changed): no event.
    let mut fewer = healthy();
    fewer[2].message = "1 ready endpoints".into();
    assert!(transitions(&healthy(), &fewer).is_empty());
    // Ready and ResolvedRefs flip: one event, for Ready.
    assert_eq!(
        transitions(&healthy(), &drained()),
        vec![Transition {
            type_: EventType::Warning,
            reason: REASON_NO_READY_ENDPOINTS.into(),
            note: "Ready=False: no endpoint of the pool is ready".into(),
            action: CONDITION_READY.into(),
        }]
    );
    // An invalid object: Accepted flips, with the message naming the field.
    let mut invalid = healthy();
    invalid[0] = condition(
        CONDITION_ACCEPTED,
        false,
        REASON_INVALID,
        &format!(
            "spec.backends[0].service.name: {}",
            "x".repeat(2 * MAX_NOTE_LEN)
        ),
    );
    let flips = transitions(&healthy(), &invalid);
    assert_eq!(flips.len(), 1);
    assert_eq!(
        (flips[0].type_, flips[0].reason.as_str()),
        (EventType::Warning, REASON_INVALID)
    );
    assert!(
        flips[0]
            .note
            .starts_with("Accepted=False: spec.backends[0].service.name: ")
    );
    assert_eq!(
        flips[0].note.len(),
        MAX_NOTE_LEN,
        "cut to what the API accepts"
    );
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    body: serde_json::Value,
}

/// A kube client over a stand-in that records requests; it echoes events and answers
/// status patches with `object`.
fn stand_in(object: serde_json::Value) -> (kube::Client, Arc<Mutex<Vec<Recorded>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        let object = object.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let path = parts.uri.path().to_owned();
            let reply = if path.starts_with(EVENTS) {
                body.clone()
            } else {
                object
            };
            log.lock().expect("lock").push(Recorded {
                method: parts.method.to_string(),
                path,
                body,
            });
            let mut resp = Response::new(Full::new(Bytes::from(
                serde_json::to_vec(&reply).unwrap_or_default(),
            )));
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok::<_, kube::Error>(resp)
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn writer(client: kube::Client, leader: bool) -> StatusWriter {
    StatusWriter::new(client.clone())
        .with_leadership(Leadership::fixed(leader))
        .with_events(EventPublisher::new(client, "controller-0"))
}

fn events(seen: &Arc<Mutex<Vec<Recorded>>>) -> Vec<Recorded> {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path.starts_with(EVENTS))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_status_write_that_flips_ready_publishes_one_event() {
    let (mut chat, _) = fixture();
    chat.status = Some(pool_status(healthy()));
    let (client, seen) = stand_in(serde_json::to_value(&chat).expect("json"));
    let writer = writer(client, true);

    let wanted = pool_status(drained());
    assert_eq!(
        writer.apply_pool(&chat, &wanted).await.expect("written"),
        Written::Patched
    );
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        (
            "PATCH",
            "/apis/sluice.dev/v1alpha1/namespaces/agents/agentpools/chat/status"
        )
    );
    let event = &requests[1];
    assert_eq!(
        (event.method.as_str(), event.path.as_str()),
        ("POST", EVENTS)
    );
    let e = &event.body;
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], REASON_NO_READY_ENDPOINTS);
    assert_eq!(e["action"], CONDITION_READY);
    assert_eq!(e["note"], "Ready=False: no endpoint of the pool is ready");
    assert_eq!(e["reportingController"], REPORTING_CONTROLLER);
    assert_eq!(e["reportingInstance"], "controller-0");
    assert_eq!(e["regarding"]["kind"], "AgentPool");
    assert_eq!(e["regarding"]["apiVersion"], "sluice.dev/v1alpha1");
    assert_eq!(e["regarding"]["namespace"], "agents");
    assert_eq!(e["regarding"]["name"], "chat");
    assert_eq!(
        e["regarding"]["uid"],
        "0b6a5f0e-1111-4c1e-9d2a-000000000001"
    );
    assert_eq!(e["metadata"]["namespace"], "agents");

    // Flapping back and forth: the repeat is folded into the first event's series.
    chat.status = Some(wanted);
    writer
        .apply_pool(&chat, &pool_status(healthy()))
        .await
        .expect("written");
    chat.status = Some(pool_status(healthy()));
    writer
        .apply_pool(&chat, &pool_status(drained()))
        .await
        .expect("written");
    let sent: Vec<(String, String)> = events(&seen)
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.body["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            ("POST".to_owned(), REASON_NO_READY_ENDPOINTS.to_owned()),
            ("POST".to_owned(), REASON_READY.to_owned()),
            ("PATCH".to_owned(), REASON_NO_READY_ENDPOINTS.to_owned()),
        ]
    );
    assert_eq!(events(&seen)[2].body["series"]["count"], 2);
}

#[tokio::test]
async fn a_write_that_flips_nothing_watched_publishes_no_event() {
    let (mut chat, policy) = fixture();
    chat.status = Some(pool_status(healthy()));
    let (client, seen) = stand_in(serde_json::to_value(&chat).expect("json"));
    let pools = writer(client.clone(), true);
    // ResolvedRefs flips, Accepted and Ready do not.
    let mut wanted = healthy();
    wanted[1] = drained()[1].clone();
    assert_eq!(
        pools
            .apply_pool(&chat, &pool_status(wanted))
            .await
            .expect("written"),
        Written::Patched
    );
    assert!(events(&seen).is_empty());

    // A RatePolicy has Accepted: its first status is one event.
    let (client, seen) = stand_in(serde_json::to_value(&policy).expect("json"));
    let status = RatePolicyStatus {
        conditions: healthy()[..2].to_vec(),
        observed_generation: Some(1),
    };
    writer(client, true)
        .apply_policy(&policy, &status)
        .await
        .expect("written");
    let sent = events(&seen);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["reason"], REASON_ACCEPTED);
    assert_eq!(sent[0].body["regarding"]["kind"], "RatePolicy");
}

#[tokio::test]
async fn a_standby_writes_no_status_and_publishes_no_event() {
    let (chat, _) = fixture();
    let (client, seen) = stand_in(serde_json::to_value(&chat).expect("json"));
    let wanted = pool_status(drained());
    assert_eq!(
        writer(client.clone(), false)
            .apply_pool(&chat, &wanted)
            .await
            .expect("nothing to fail"),
        Written::Standby
    );
    assert!(seen.lock().expect("lock").is_empty());

    // A running writer drops the batches that come while it is standby, and writes
    // those that come once it leads.
    let (leader, leadership) = watch::channel(false);
    let writer = StatusWriter::new(client.clone())
        .with_leadership(Leadership::from(leadership))
        .with_events(EventPublisher::new(client, "controller-1"));
    let (batches, rx) = watch::channel(StatusBatch::default());
    let task = tokio::spawn(writer.run(rx));
    let batch = StatusBatch {
        pools: vec![(Parsed::Valid(chat), wanted)],
        policies: Vec::new(),
    };
    batches.send(batch.clone()).expect("send");
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert!(seen.lock().expect("lock").is_empty(), "standby: dropped");

    leader.send(true).expect("send");
    batches.send(batch).expect("send");
    drop(batches);
    task.await.expect("writer ends with its sender");
    let methods: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        methods,
        vec![
            "PATCH /apis/sluice.dev/v1alpha1/namespaces/agents/agentpools/chat/status".to_owned(),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ],
        "the status, then Accepted and Ready, set for the first time"
    );
}

#[test]
fn event_names_are_dns_subdomains_within_the_length_limit() {
    assert_eq!(event_name("chat", 0xabc), "chat.abc");
    let suffix = u64::MAX;
    for object in [
        "a".repeat(253),
        format!("{}-{}", "a".repeat(235), "b".repeat(17)),
        format!("{}.{}", "a".repeat(235), "b".repeat(17)),
        format!("{}-.-{}", "a".repeat(233), "b".repeat(17)),
    ] {
        let name = event_name(&object, suffix);
        assert!(name.len() <= MAX_NAME_LEN, "{name}");
        assert!(name.ends_with(".ffffffffffffffff"), "{name}");
        let valid = name.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with('-')
                && !part.ends_with('-')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        assert!(valid, "{name}");
    }
    assert_eq!(event_name("", 1), "sluice.1");
    assert_eq!(event_name("---", 1), "sluice.1");
}

#[tokio::test(start_paused = true)]
async fn a_repeat_of_an_event_the_api_server_no_longer_has_is_a_new_event() {
    let server = sluice_fake_apiserver::FakeApiServer::new();
    let publisher = EventPublisher::new(server.client(), "controller-0");
    let (chat, _) = fixture();
    let regarding = kube::Resource::object_ref(&chat, &());
    let flip = &transitions(&healthy(), &drained())[0];
    publisher.publish(&regarding, flip).await.expect("created");
    publisher.publish(&regarding, flip).await.expect("patched");
    let names = || -> Vec<(String, u64)> {
        server.call("GET", EVENTS, None).body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    e["series"]["count"].as_u64().unwrap_or(1),
                )
            })
            .collect()
    };
    let first = names();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, 2, "folded into the series");
    // Gone (the API server's TTL): the next repeat creates a new event.
    let answer = server.call("DELETE", &format!("{EVENTS}/{}", first[0].0), None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    publisher
        .publish(&regarding, flip)
        .await
        .expect("created again");
    let second = names();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].1, 1);
    assert_ne!(second[0].0, first[0].0);
    // Past the series window, a repeat is a new event too.
    tokio::time::advance(std::time::Duration::from_secs(7 * 60)).await;
    publisher.publish(&regarding, flip).await.expect("created");
    assert_eq!(names().len(), 2);
}
