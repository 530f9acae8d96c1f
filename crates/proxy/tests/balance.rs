//! Load balancing through real requests: round robin spreads evenly over a pool's
//! endpoints, weighted balancing splits by backend weight, exactly, and every other
//! algorithm honours backend weights too.

mod support;

use http::{Request, StatusCode};
use sluice_api::table::{Algorithm, Balancer, HashOn, Pool};
use support::{Agent, Proxy, backend, catch_all, client, empty, get, pool, send};

#[tokio::test]
async fn round_robin_sends_each_of_three_agents_a_third() {
    let agents = [
        Agent::named("a").await,
        Agent::named("b").await,
        Agent::named("c").await,
    ];
    let addresses: Vec<String> = agents.iter().map(Agent::address).collect();
    let proxy = Proxy::with_table(catch_all(pool("demo/rr", &addresses, 30_000))).await;
    let client = client();

    let mut answered_by = Vec::new();
    for _ in 0..30 {
        let reply = get(&client, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        answered_by.push(reply.text().to_owned());
    }
    for (agent, name) in agents.iter().zip(["a", "b", "c"]) {
        assert_eq!(agent.requests(), 10, "agent {name}");
        assert_eq!(answered_by.iter().filter(|n| *n == name).count(), 10);
        let series = format!(
            "sluice_endpoint_requests_total{{endpoint=\"{}\",pool=\"demo/rr\"}}",
            agent.address()
        );
        assert_eq!(proxy.metric(&series), Some(10.0), "{series}");
    }
    // In turn, not in runs.
    assert!(
        answered_by.windows(2).all(|w| w[0] != w[1]),
        "{answered_by:?}"
    );
}

#[tokio::test]
async fn weighted_backends_split_three_to_one() {
    // The heavy backend has two endpoints, taken in turn within its share.
    let heavy = [Agent::named("heavy-0").await, Agent::named("heavy-1").await];
    let light = Agent::named("light").await;
    let weighted = Pool {
        key: "demo/weighted".into(),
        algorithm: Algorithm::Weighted,
        backends: vec![
            backend("static[0]", 3, &[heavy[0].address(), heavy[1].address()]),
            backend("static[1]", 1, &[light.address()]),
        ],
        ..Default::default()
    };
    let proxy = Proxy::with_table(catch_all(weighted)).await;
    let client = client();

    for _ in 0..40 {
        assert_eq!(get(&client, &proxy.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(heavy[0].requests() + heavy[1].requests(), 30);
    assert_eq!(heavy[0].requests(), 15);
    assert_eq!(light.requests(), 10);
}

/// How many of 400 requests the backend of weight 9 gets, beside one of weight 1,
/// under `algorithm` (with `balancer` settings). Each request carries a different
/// `x-session` header, for consistent hashing.
async fn heavy_share(algorithm: Algorithm, balancer: Balancer) -> usize {
    let heavy = Agent::named("heavy").await;
    let light = Agent::named("light").await;
    let weighted = Pool {
        key: "demo/weighted".into(),
        algorithm,
        balancer,
        backends: vec![
            backend("static[0]", 9, &[heavy.address()]),
            backend("static[1]", 1, &[light.address()]),
        ],
        ..Default::default()
    };
    let proxy = Proxy::with_table(catch_all(weighted)).await;
    let client = client();
    for session in 0..400 {
        let req = Request::get(proxy.url("/"))
            .header("x-session", format!("session-{session}"))
            .body(empty())
            .expect("request");
        assert_eq!(send(&client, req).await.status, StatusCode::OK);
    }
    assert_eq!(heavy.requests() + light.requests(), 400);
    heavy.requests()
}

#[tokio::test]
async fn every_algorithm_honours_backend_weights() {
    // A rotation is exact.
    for algorithm in [Algorithm::RoundRobin, Algorithm::Weighted] {
        assert_eq!(heavy_share(algorithm, Balancer::default()).await, 360);
    }
    // Sequential requests leave both endpoints idle: the power of two choices draws
    // by weight and ties go either way, so the share is the weight's, 90 %.
    let least = heavy_share(Algorithm::LeastRequest, Balancer::default()).await;
    assert!((320..=395).contains(&least), "{least}");
    // Peak EWMA also compares measured latencies, which favour either endpoint by
    // chance: at least 81 % (the picks that drew the heavy endpoint twice).
    let ewma = heavy_share(Algorithm::PeakEwma, Balancer::default()).await;
    assert!(ewma >= 290, "{ewma}");
    // The ring gives the heavy endpoint nine times the points.
    let hashed = Balancer {
        hash_on: Some(HashOn::Header(http::HeaderName::from_static("x-session"))),
        ..Balancer::default()
    };
    let ring = heavy_share(Algorithm::ConsistentHash, hashed).await;
    assert!(ring >= 300, "{ring}");
}
