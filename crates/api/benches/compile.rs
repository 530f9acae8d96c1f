//! The compile step at the size issue 7 asks for: 1 000 AgentPools backed by Services
//! whose EndpointSlices hold 10 000 endpoints in all, plus an endpoint change.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_api::agent_pool::{Backend, RouteMatch, ServiceBackend};
use sluice_api::{AgentPool, AgentPoolSpec, Objects, compile};

const POOLS: usize = 1_000;
const ENDPOINTS_PER_POOL: usize = 10;

fn objects() -> Objects {
    let mut objects = Objects::default();
    for i in 0..POOLS {
        let name = format!("agent-{i}");
        let mut pool = AgentPool::new(
            &name,
            AgentPoolSpec {
                matches: vec![RouteMatch {
                    path_prefix: Some(format!("/agents/{name}/")),
                    ..RouteMatch::default()
                }],
                backends: vec![Backend {
                    service: Some(ServiceBackend {
                        name: name.clone(),
                        port: IntOrString::String("http".into()),
                    }),
                    endpoints: Vec::new(),
                    weight: 1,
                    capabilities: Vec::new(),
                    max_concurrency: None,
                    protocol: Default::default(),
                    url: None,
                    tls: None,
                    auth: None,
                    model: None,
                }],
                capabilities: Vec::new(),
                load_balancing: Default::default(),
                timeouts: None,
                queue: None,
                retries: None,
                health_check: None,
                outlier_detection: None,
                fallback: None,
                access: None,
                authentication: None,
            },
        );
        pool.metadata.namespace = Some("agents".into());
        objects.pools.push(pool);
        objects.slices.push(slice(i, 0));
    }
    objects
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS_PER_POOL)
        .map(|e| Endpoint {
            addresses: vec![format!("10.{}.{}.{}", i / 250, i % 250, e + 1 + generation)],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("agent-{i}-abcde")),
            namespace: Some("agents".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                format!("agent-{i}"),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8000),
            ..EndpointPort::default()
        }]),
    }
}

fn bench(c: &mut Criterion) {
    let mut objects = objects();
    let (table, diags) = compile(&objects);
    assert!(diags.is_empty(), "{diags}");
    assert_eq!(table.pools.len(), POOLS);
    assert_eq!(
        table
            .pools
            .iter()
            .map(|p| p.endpoints().count())
            .sum::<usize>(),
        POOLS * ENDPOINTS_PER_POOL
    );
    c.bench_function("compile/1000_pools_10000_endpoints", |b| {
        b.iter(|| compile(&objects))
    });
    let mut generation = 0;
    c.bench_function("compile/after_one_endpoint_change", |b| {
        b.iter(|| {
            generation = (generation + 1) % 200;
            objects.slices[500] = slice(500, generation);
            compile(&objects)
        })
    });
    c.bench_function("table/serialise_json", |b| {
        b.iter(|| serde_json::to_vec(&table))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
