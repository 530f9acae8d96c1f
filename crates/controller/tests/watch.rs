//! The watch loop driven by `watcher::Event` streams from channels, with paused time:
//! bursts coalesce into one compile, invalid objects are isolated with their
//! condition, terminating endpoints and consumer Secrets reach the published table.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use sluice_api::compile::{CONSUMER_LABEL, hash_api_key};
use sluice_api::{Objects, RouteTable};
use sluice_controller::status::{
    CONDITION_ACCEPTED, CONDITION_READY, CONDITION_RESOLVED_REFS, REASON_INVALID,
};
use support::watch::{Harness, chat, pool, settle, slice};

fn addresses(table: &RouteTable, pool: &str) -> Vec<(String, bool)> {
    table
        .pools
        .iter()
        .find(|p| p.key == pool)
        .map(|p| {
            p.endpoints()
                .map(|e| (e.address.clone(), e.terminating))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn nothing_is_compiled_before_every_watcher_has_listed() {
    let h = Harness::start();
    h.pools.send(Event::Init).expect("send");
    h.pools
        .send(Event::InitApply(pool("chat", "chat")))
        .expect("send");
    h.pools.send(Event::InitDone).expect("send");
    settle().await;
    assert_eq!(h.compiles(), 0, "slices are not listed yet");
    assert!(h.publisher.current().is_none());

    h.slices.send(Event::Init).expect("send");
    h.slices
        .send(Event::InitApply(slice(
            "chat-1",
            "chat",
            &[("10.0.0.1", true, false)],
        )))
        .expect("send");
    h.slices.send(Event::InitDone).expect("send");
    h.policies.send(Event::Init).expect("send");
    h.policies.send(Event::InitDone).expect("send");
    h.secrets.send(Event::Init).expect("send");
    h.secrets.send(Event::InitDone).expect("send");
    settle().await;
    assert_eq!(h.compiles(), 1);
    assert_eq!(
        addresses(&h.table(), "agents/chat"),
        vec![("10.0.0.1:8080".to_owned(), false)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_slice_events_is_compiled_once_at_once_and_once_after_the_debounce() {
    let h = Harness::start();
    h.sync(chat());
    settle().await;
    assert_eq!((h.compiles(), h.table().version), (1, 1));

    // A rollout: 100 updates of the slice, one more pod each time.
    let mut pods = Vec::new();
    for i in 0..100 {
        pods.push(format!("10.0.1.{i}"));
        let eps: Vec<(&str, bool, bool)> = pods.iter().map(|a| (a.as_str(), true, false)).collect();
        h.slices
            .send(Event::Apply(slice("chat-1", "chat", &eps)))
            .expect("send");
        // Spread over 25ms (timers tick in milliseconds), within one debounce window.
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(
        h.compiles(),
        2,
        "the first change after a quiet spell is compiled at once, the rest wait"
    );
    // The four events sent before the test first yielded were compiled together.
    assert_eq!(addresses(&h.table(), "agents/chat").len(), 4);
    settle().await;
    assert_eq!(h.compiles(), 3, "100 events, two compiles");
    let table = h.table();
    assert_eq!(table.version, 3, "two new versions");
    assert_eq!(addresses(&table, "agents/chat").len(), 100);

    // Slices of a Service no pool names do not even compile.
    for i in 0..20 {
        h.slices
            .send(Event::Apply(slice(
                "other-1",
                "other",
                &[(&format!("10.0.2.{i}"), true, false)],
            )))
            .expect("send");
    }
    settle().await;
    assert_eq!(h.compiles(), 3);

    // A change that does not change the table compiles but publishes nothing new.
    let eps: Vec<(&str, bool, bool)> = pods.iter().map(|a| (a.as_str(), true, false)).collect();
    let mut same = slice("chat-1", "chat", &eps);
    same.metadata.resource_version = Some("42".into());
    h.slices.send(Event::Apply(same)).expect("send");
    settle().await;
    assert_eq!(h.table().version, 3);
}

#[tokio::test(start_paused = true)]
async fn events_already_waiting_join_one_compile() {
    let h = Harness::start();
    h.sync(chat());
    settle().await;

    // Sent before the controller runs again: all of them are waiting when it does.
    let mut pods = Vec::new();
    for i in 0..50 {
        pods.push(format!("10.0.1.{i}"));
        let eps: Vec<(&str, bool, bool)> = pods.iter().map(|a| (a.as_str(), true, false)).collect();
        h.slices
            .send(Event::Apply(slice("chat-1", "chat", &eps)))
            .expect("send");
    }
    settle().await;
    assert_eq!(h.compiles(), 2, "one compile for the whole batch");
    assert_eq!(addresses(&h.table(), "agents/chat").len(), 50);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_pool_is_rejected_with_its_condition_and_the_valid_one_is_published() {
    let h = Harness::start();
    let mut objects = Objects::default();
    objects.pools.push(pool("good", "chat"));
    objects.pools.push(pool("bad", "Not_A_Service"));
    objects
        .slices
        .push(slice("chat-1", "chat", &[("10.0.0.1", true, false)]));
    h.sync(objects);
    settle().await;

    let table = h.table();
    let keys: Vec<&str> = table.pools.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["agents/good"]);

    let bad = h.pool_status("bad").expect("status for the invalid pool");
    let accepted = bad
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ACCEPTED)
        .expect("Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", REASON_INVALID)
    );
    assert!(
        accepted.message.contains(
            "spec.backends[0].service.name: \"Not_A_Service\" is not a valid Service name"
        ),
        "{}",
        accepted.message
    );
    assert_eq!(accepted.observed_generation, Some(2));
    assert_eq!(bad.observed_generation, Some(2));

    let good = h.pool_status("good").expect("status for the valid pool");
    let summary: Vec<(&str, &str)> = good
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (CONDITION_ACCEPTED, "True"),
            (CONDITION_RESOLVED_REFS, "True"),
            (CONDITION_READY, "True")
        ]
    );
    assert_eq!(good.ready_endpoints, Some(1));

    // Fixing the pool brings it in; breaking the good one takes it out alone: a pool
    // that becomes invalid is dropped, not kept in its last good form.
    h.pools
        .send(Event::Apply(pool("bad", "chat")))
        .expect("send");
    settle().await;
    assert_eq!(h.table().pools.len(), 2);
    h.pools
        .send(Event::Apply(pool("good", "Not_A_Service")))
        .expect("send");
    settle().await;
    let table = h.table();
    let keys: Vec<&str> = table.pools.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["agents/bad"]);
    let good = h.pool_status("good").expect("status for the broken pool");
    let accepted = good
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ACCEPTED)
        .expect("Accepted");
    assert_eq!(accepted.status, "False");
    assert_eq!(good.ready_endpoints, Some(0));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_turning_terminating_reaches_the_table_and_the_status() {
    let h = Harness::start();
    let mut objects = Objects::default();
    objects.pools.push(pool("chat", "chat"));
    objects.slices.push(slice(
        "chat-1",
        "chat",
        &[("10.0.0.1", true, false), ("10.0.0.2", true, false)],
    ));
    h.sync(objects);
    settle().await;
    assert_eq!(
        h.pool_status("chat").and_then(|s| s.ready_endpoints),
        Some(2)
    );

    h.slices
        .send(Event::Apply(slice(
            "chat-1",
            "chat",
            &[("10.0.0.1", true, false), ("10.0.0.2", false, true)],
        )))
        .expect("send");
    settle().await;
    let table = h.table();
    assert_eq!(table.version, 2);
    assert_eq!(
        addresses(&table, "agents/chat"),
        vec![
            ("10.0.0.1:8080".to_owned(), false),
            ("10.0.0.2:8080".to_owned(), true)
        ]
    );
    let zone = table.pools[0]
        .endpoints()
        .next()
        .and_then(|e| e.zone.clone());
    assert_eq!(zone.as_deref(), Some("zone-a"));
    assert_eq!(
        h.pool_status("chat").and_then(|s| s.ready_endpoints),
        Some(1)
    );

    // The slice goes away: the pool stays, with no endpoints.
    h.slices
        .send(Event::Delete(slice("chat-1", "chat", &[])))
        .expect("send");
    settle().await;
    assert!(addresses(&h.table(), "agents/chat").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_consumer_secret_feeds_the_consumers_of_the_table() {
    let h = Harness::start();
    let mut objects = Objects::default();
    objects.pools.push(pool("chat", "chat"));
    h.sync(objects);
    settle().await;
    assert!(h.table().consumers.is_empty());

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("acme-key".into()),
            namespace: Some("agents".into()),
            labels: Some(BTreeMap::from([(CONSUMER_LABEL.into(), "acme".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "api-key".into(),
                ByteString(b"a-long-random-api-key-0123456789".to_vec()),
            ),
            ("tier".into(), ByteString(b"premium".to_vec())),
        ])),
        ..Default::default()
    };
    h.secrets.send(Event::Apply(secret.clone())).expect("send");
    settle().await;
    let table = h.table();
    assert_eq!(table.version, 2);
    let acme = table
        .consumers
        .iter()
        .find(|c| c.name == "agents/acme")
        .expect("consumer acme");
    assert_eq!(
        acme.key_hashes
            .iter()
            .map(|h| h.to_hex())
            .collect::<Vec<_>>(),
        vec![hash_api_key("a-long-random-api-key-0123456789")]
    );
    assert_eq!(acme.tier.as_deref(), Some("premium"));

    h.secrets.send(Event::Delete(secret)).expect("send");
    settle().await;
    assert!(h.table().consumers.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_status_change_alone_does_not_compile() {
    let h = Harness::start();
    h.sync(chat());
    settle().await;
    assert_eq!(h.compiles(), 1);
    let wanted = h.pool_status("chat").expect("status wanted");

    // The API server echoes the controller's own status write.
    let mut written = pool("chat", "chat");
    written.status = Some(wanted);
    written.metadata.resource_version = Some("7".into());
    h.pools.send(Event::Apply(written)).expect("send");
    settle().await;
    assert_eq!(h.compiles(), 1, "no compile for a status change");

    // A re-list that finds the same objects compiles nothing either.
    h.policies.send(Event::Init).expect("send");
    h.policies.send(Event::InitDone).expect("send");
    settle().await;
    assert_eq!(h.compiles(), 1);
}
