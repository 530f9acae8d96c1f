//! What 100 000 EndpointSlices cost the watch loop, counted by a global allocator: the
//! slices as the API server sends them (with `managedFields`, owners, annotations,
//! target references), then what the loop keeps of them when pools reference them all
//! and when pools reference none.
//!
//! `cargo test -p sluice-controller --test slice_memory -- --nocapture` prints the
//! numbers.

mod support;

use std::alloc::System;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use sluice_api::compile::SERVICE_NAME_LABEL;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use support::watch::{Harness, pool, settle};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed.
fn live() -> isize {
    let s = ALLOCATOR.stats();
    (s.bytes_allocated.cast_signed() - s.bytes_deallocated.cast_signed()) + s.bytes_reallocated
}

const SLICES: usize = 100_000;
const SERVICES: usize = 100;

/// Slice `i` of Service `svc-<i % SERVICES>`, as kube-controller-manager writes it:
/// two endpoints, the usual labels, owner, annotation and managedFields.
fn slice(i: usize) -> EndpointSlice {
    let service = format!("svc-{}", i % SERVICES);
    let endpoint = |n: usize| Endpoint {
        addresses: vec![format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, n)],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(format!("node-{}", i % 500)),
        zone: Some("zone-a".into()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(format!("{service}-7d9c8b6f5-{i:05}{n}")),
            namespace: Some("agents".into()),
            uid: Some(format!("0b6a5f0e-1111-4c1e-9d2a-{i:010}{n:02}")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let fields = serde_json::json!({
        "f:addressType": {}, "f:endpoints": {}, "f:ports": {},
        "f:metadata": {
            "f:annotations": {".": {}, "f:endpoints.kubernetes.io/last-change-trigger-time": {}},
            "f:generateName": {},
            "f:labels": {".": {}, "f:endpointslice.kubernetes.io/managed-by": {},
                "f:kubernetes.io/service-name": {}, "f:app": {}},
            "f:ownerReferences": {".": {}, "k:{\"uid\":\"4c3b2a19-0000-4000-8000-000000000000\"}": {}},
        },
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-{i:06}")),
            generate_name: Some(format!("{service}-")),
            namespace: Some("agents".into()),
            uid: Some(format!("5d1e2f3a-2222-4c1e-9d2a-{i:012}")),
            resource_version: Some(format!("{}", 1_000_000 + i)),
            generation: Some(3),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.into(), service.clone()),
                (
                    "endpointslice.kubernetes.io/managed-by".into(),
                    "endpointslice-controller.k8s.io".into(),
                ),
                ("app".into(), service.clone()),
            ])),
            annotations: Some(BTreeMap::from([(
                "endpoints.kubernetes.io/last-change-trigger-time".into(),
                "2026-01-01T00:00:00Z".into(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.clone(),
                uid: "4c3b2a19-0000-4000-8000-000000000000".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            managed_fields: Some(vec![ManagedFieldsEntry {
                api_version: Some("discovery.k8s.io/v1".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(FieldsV1(fields)),
                manager: Some("kube-controller-manager".into()),
                operation: Some("Update".into()),
                time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![endpoint(1), endpoint(2)],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// Bytes the watch loop keeps after listing [`SLICES`] slices, with pools naming
/// `referenced` of the [`SERVICES`] Services; and the bytes of the slices as sent. (The
/// list holds every slice: the Service selector's fallback beyond
/// `MAX_SELECTED_SERVICES`.)
async fn kept(referenced: usize) -> (isize, isize) {
    let (h, services) = Harness::start_selecting();
    let pools: Vec<_> = (0..referenced)
        .map(|i| pool(&format!("pool-{i}"), &format!("svc-{i}")))
        .collect();
    h.pools.send(Event::Init).expect("send");
    for p in pools {
        h.pools.send(Event::InitApply(p)).expect("send");
    }
    h.pools.send(Event::InitDone).expect("send");
    h.policies.send(Event::Init).expect("send");
    h.policies.send(Event::InitDone).expect("send");
    h.secrets.send(Event::Init).expect("send");
    h.secrets.send(Event::InitDone).expect("send");
    settle().await;
    assert_eq!(services.borrow().len(), referenced);
    let compiled_before = h.compiles();

    let before = live();
    let slices: Vec<EndpointSlice> = (0..SLICES).map(slice).collect();
    let sent = live() - before;
    h.slices.send(Event::Init).expect("send");
    for s in slices {
        h.slices.send(Event::InitApply(s)).expect("send");
    }
    h.slices.send(Event::InitDone).expect("send");
    settle().await;
    assert!(h.compiles() > compiled_before, "the slices were compiled");
    let endpoints: usize = h.table().pools.iter().map(|p| p.endpoints().count()).sum();
    assert_eq!(endpoints, 2 * SLICES * referenced / SERVICES);
    (live() - before, sent)
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_slices_cost_what_the_pools_need() {
    let mib = |b: isize| b as f64 / (1024.0 * 1024.0);
    let (all, sent) = kept(SERVICES).await;
    let (none, _) = kept(0).await;
    println!(
        "{SLICES} EndpointSlices of 2 endpoints: {:.1} MiB as sent; kept when every one is referenced: {:.1} MiB ({} bytes a slice, with the compiled table); when none is: {:.2} MiB",
        mib(sent),
        mib(all),
        all / SLICES as isize,
        mib(none),
    );
    assert!(
        all < sent / 3,
        "kept {all} bytes of {sent}: the slices are not kept compact"
    );
    assert!(
        none < sent / 50,
        "kept {none} bytes of {sent}: slices no pool references are kept"
    );
}
