//! Status conditions from compile results (named scenarios), and the status writer
//! through kube's real client against an HTTP stand-in that records each request.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use sluice_api::{AgentPool, AgentPoolStatus, Objects, compile, manifest};
use sluice_controller::object::Parsed;
use sluice_controller::status::{
    REASON_ACCEPTED, REASON_INVALID, REASON_NO_READY_ENDPOINTS, REASON_NOT_ACCEPTED, REASON_READY,
    REASON_REFS_NOT_RESOLVED, REASON_RESOLVED_REFS, status_for_policy, status_for_pool,
};
use sluice_controller::status_writer::{
    FIELD_MANAGER, StatusBatch, StatusError, StatusWriter, Written,
};

const POOLS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: ready, namespace: agents, generation: 4}
spec:
  matches: [{pathPrefix: /ready}]
  backends: [{service: {name: chat, port: http}}]
---
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: no-slices, namespace: agents, generation: 1}
spec:
  matches: [{pathPrefix: /no-slices}]
  backends: [{service: {name: summarizer-gpu, port: http}}]
---
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: invalid, namespace: agents, generation: 7}
spec:
  matches: [{pathPrefix: /invalid}]
  backends: [{service: {name: Bad_Name, port: http}}]
---
apiVersion: sluice.dev/v1alpha1
kind: RatePolicy
metadata: {name: limits, namespace: agents, generation: 3}
spec:
  targetRefs: [{kind: AgentPool, name: ready}, {kind: AgentPool, name: missing}]
  key: {type: Consumer}
  tiers: [{name: standard, limits: [{requests: 10, period: 1m}]}]
  defaultTier: standard
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: chat-1
  namespace: agents
  labels: {kubernetes.io/service-name: chat}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.0.1]
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: true}
"#;

fn t(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("timestamp"))
}

fn fixture() -> Objects {
    let mut objects = Objects::default();
    manifest::parse_into(POOLS, "fixture", &mut objects).expect("fixture parses");
    objects
}

fn pool<'a>(objects: &'a Objects, name: &str) -> &'a AgentPool {
    objects
        .pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("pool in fixture")
}

/// `(type, status, reason)` of each condition, and the messages joined.
fn summary(status: &AgentPoolStatus) -> (Vec<(String, String, String)>, String) {
    (
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect(),
        status
            .conditions
            .iter()
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    )
}

fn conds(list: [(&str, &str, &str); 3]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

#[test]
fn pool_status_scenarios() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    struct Scenario {
        pool: &'static str,
        conditions: [(&'static str, &'static str, &'static str); 3],
        ready_endpoints: i32,
        generation: i64,
        message_has: &'static str,
    }
    let scenarios = [
        Scenario {
            pool: "ready",
            conditions: [
                ("Accepted", "True", REASON_ACCEPTED),
                ("ResolvedRefs", "True", REASON_RESOLVED_REFS),
                ("Ready", "True", REASON_READY),
            ],
            ready_endpoints: 1,
            generation: 4,
            message_has: "1 ready endpoints",
        },
        Scenario {
            pool: "no-slices",
            conditions: [
                ("Accepted", "True", REASON_ACCEPTED),
                ("ResolvedRefs", "False", REASON_REFS_NOT_RESOLVED),
                ("Ready", "False", REASON_NO_READY_ENDPOINTS),
            ],
            ready_endpoints: 0,
            generation: 1,
            message_has: "spec.backends[0].service: Service agents/summarizer-gpu has no EndpointSlices",
        },
        Scenario {
            pool: "invalid",
            conditions: [
                ("Accepted", "False", REASON_INVALID),
                ("ResolvedRefs", "True", REASON_RESOLVED_REFS),
                ("Ready", "False", REASON_NOT_ACCEPTED),
            ],
            ready_endpoints: 0,
            generation: 7,
            message_has: "spec.backends[0].service.name: \"Bad_Name\" is not a valid Service name",
        },
    ];
    for s in scenarios {
        let status = status_for_pool(pool(&objects, s.pool), &diags, &table, &t(100));
        let (conditions, messages) = summary(&status);
        assert_eq!(conditions, conds(s.conditions), "{}", s.pool);
        assert!(messages.contains(s.message_has), "{}: {messages}", s.pool);
        assert_eq!(
            status.ready_endpoints,
            Some(s.ready_endpoints),
            "{}",
            s.pool
        );
        assert_eq!(status.observed_generation, Some(s.generation), "{}", s.pool);
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(s.generation)
                    && c.last_transition_time == t(100)),
            "{}",
            s.pool
        );
    }
}

#[test]
fn transition_time_moves_only_when_a_condition_flips() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let mut ready = pool(&objects, "ready").clone();
    let first = status_for_pool(&ready, &diags, &table, &t(100));
    ready.status = Some(first.clone());
    let again = status_for_pool(&ready, &diags, &table, &t(200));
    assert_eq!(again, first, "nothing flipped: times are kept");

    // The endpoints go away: Ready flips, the others keep their time.
    let mut drained = objects.clone();
    drained.slices.clear();
    let (table, diags) = compile(&drained);
    let later = status_for_pool(&ready, &diags, &table, &t(300));
    let times: Vec<(&str, &Time)> = later
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), &c.last_transition_time))
        .collect();
    assert_eq!(
        times,
        vec![
            ("Accepted", &t(100)),
            ("ResolvedRefs", &t(300)),
            ("Ready", &t(300))
        ]
    );
}

#[test]
fn policy_status_names_the_missing_target() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let status = status_for_policy(&objects.policies[0], &diags, &table, &t(5));
    let summary: Vec<(&str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![("Accepted", "True"), ("ResolvedRefs", "False")]
    );
    assert!(
        status.conditions[1]
            .message
            .contains("AgentPool agents/missing is not in the table"),
        "{}",
        status.conditions[1].message
    );
    assert_eq!(status.observed_generation, Some(3));
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path_and_query: String,
    content_type: String,
    body: serde_json::Value,
}

/// A kube client over a `tower::service_fn` that records requests and answers
/// `status` with `reply` as the body.
fn stand_in(
    status: StatusCode,
    reply: serde_json::Value,
) -> (kube::Client, Arc<Mutex<Vec<Recorded>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        let reply = reply.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let recorded = Recorded {
                method: parts.method.to_string(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            };
            log.lock().expect("lock").push(recorded);
            let body = Full::new(Bytes::from(serde_json::to_vec(&reply).unwrap_or_default()));
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok::<_, kube::Error>(resp)
        }
    });
    (kube::Client::new(service, "default"), seen)
}

#[tokio::test]
async fn the_writer_applies_a_changed_status_and_skips_an_unchanged_one() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let mut invalid = pool(&objects, "invalid").clone();
    let wanted = status_for_pool(&invalid, &diags, &table, &t(100));

    let mut reply = invalid.clone();
    reply.status = Some(wanted.clone());
    let (client, seen) = stand_in(StatusCode::OK, serde_json::to_value(&reply).expect("json"));
    let writer = StatusWriter::new(client);

    assert_eq!(
        writer.apply_pool(&invalid, &wanted).await.expect("patched"),
        Written::Patched
    );
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "PATCH");
    let (path, query) = r.path_and_query.split_once('?').expect("query");
    assert_eq!(
        path,
        "/apis/sluice.dev/v1alpha1/namespaces/agents/agentpools/invalid/status"
    );
    assert!(
        query.contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{query}"
    );
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(r.content_type, "application/apply-patch+yaml");
    assert_eq!(r.body["apiVersion"], "sluice.dev/v1alpha1");
    assert_eq!(r.body["kind"], "AgentPool");
    assert_eq!(r.body["status"]["observedGeneration"], 7);
    assert_eq!(r.body["status"]["readyEndpoints"], 0);
    let accepted = &r.body["status"]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], REASON_INVALID);
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.backends[0].service.name")),
        "{accepted}"
    );
    assert!(r.body.get("spec").is_none(), "only status is applied");

    // The object now has that status; the same status stamped later is not sent.
    invalid.status = Some(wanted);
    let later = status_for_pool(&invalid, &diags, &table, &t(999));
    let mut retimed = later.clone();
    for c in &mut retimed.conditions {
        c.last_transition_time = t(999);
    }
    assert_eq!(
        writer
            .apply_pool(&invalid, &retimed)
            .await
            .expect("skipped"),
        Written::Unchanged
    );
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "no request for an unchanged status"
    );
}

#[tokio::test]
async fn a_refused_patch_is_an_error_naming_the_object() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let ready = pool(&objects, "ready");
    let wanted = status_for_pool(ready, &diags, &table, &t(1));
    let refusal = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "agentpools.sluice.dev \"ready\" is forbidden", "reason": "Forbidden", "code": 403
    });
    let (client, seen) = stand_in(StatusCode::FORBIDDEN, refusal);
    let err = StatusWriter::new(client)
        .apply_pool(ready, &wanted)
        .await
        .expect_err("refused");
    assert!(matches!(err, StatusError::Patch { .. }));
    assert!(err.to_string().contains("AgentPool agents/ready"), "{err}");
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn fields_an_older_crd_drops_are_not_written_again_and_again() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let mut pool = pool(&objects, "invalid").clone();
    let mut wanted = status_for_pool(&pool, &diags, &table, &t(100));
    wanted.proxies = Some(3);
    wanted.updated_proxies = Some(2);
    // The API server answers with the status it kept: an older schema pruned the counts.
    let mut kept = wanted.clone();
    kept.proxies = None;
    kept.updated_proxies = None;
    let mut reply = pool.clone();
    reply.status = Some(kept.clone());
    let (client, seen) = stand_in(StatusCode::OK, serde_json::to_value(&reply).expect("json"));
    let writer = StatusWriter::new(client);

    assert_eq!(
        writer.apply_pool(&pool, &wanted).await.expect("patched"),
        Written::Patched
    );
    // The watch sees the object as the server kept it and asks for the counts again.
    pool.status = Some(kept);
    assert_eq!(
        writer.apply_pool(&pool, &wanted).await.expect("compared"),
        Written::Unchanged
    );
    assert_eq!(seen.lock().expect("lock").len(), 1, "no second patch");
    // A change the old schema keeps is still written.
    let mut changed = wanted.clone();
    changed.ready_endpoints = Some(5);
    assert_eq!(
        writer.apply_pool(&pool, &changed).await.expect("patched"),
        Written::Patched
    );
}

#[tokio::test(start_paused = true)]
async fn status_patches_are_paced() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let pool = pool(&objects, "invalid").clone();
    let wanted = status_for_pool(&pool, &diags, &table, &t(100));
    let (client, seen) = stand_in(StatusCode::OK, serde_json::to_value(&pool).expect("json"));
    let two = NonZeroU32::new(2).expect("non-zero");
    let writer = StatusWriter::new(client).with_write_rate(two, two);
    let batch = StatusBatch {
        pools: vec![(Parsed::Valid(pool), wanted); 6],
        policies: Vec::new(),
    };
    let start = tokio::time::Instant::now();
    assert_eq!(writer.apply_batch(&batch).await, 6);
    assert_eq!(seen.lock().expect("lock").len(), 6);
    // Two at once, then one every half second.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2000) && elapsed < Duration::from_millis(2100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_batch_replaces_the_one_being_written() {
    let objects = fixture();
    let (table, diags) = compile(&objects);
    let first = pool(&objects, "invalid").clone();
    let wanted = status_for_pool(&first, &diags, &table, &t(100));
    let mut other = first.clone();
    other.metadata.name = Some("other".into());
    let (client, seen) = stand_in(StatusCode::OK, serde_json::to_value(&first).expect("json"));
    let two = NonZeroU32::new(2).expect("non-zero");
    let writer = StatusWriter::new(client).with_write_rate(two, two);
    let (tx, rx) = tokio::sync::watch::channel(StatusBatch::default());
    let running = tokio::spawn(writer.run(rx));

    tx.send_replace(StatusBatch {
        pools: vec![(Parsed::Valid(first), wanted.clone()); 6],
        policies: Vec::new(),
    });
    // Two patches go at once, the third waits for the pace; meanwhile a newer batch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send_replace(StatusBatch {
        pools: vec![(Parsed::Valid(other), wanted)],
        policies: Vec::new(),
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    let paths: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths.len(),
        4,
        "three of the first batch, then the newer: {paths:?}"
    );
    assert!(paths[3].contains("/agentpools/other/status"), "{paths:?}");
    drop(tx);
    running.await.expect("writer ends with the sender");
}
