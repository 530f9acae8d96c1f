//! Upstream connections are pooled: requests to one agent reuse one TCP connection,
//! across requests with and without bodies, across table swaps, and once parked.

mod support;

use http::{Request, StatusCode};
use support::{Agent, Proxy, catch_all, client, full, get, pool, route, send};

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let agent = Agent::named("echo").await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;
    let client = client();

    for i in 0..20 {
        let reply = if i % 2 == 0 {
            get(&client, &proxy.url(&format!("/get/{i}"))).await
        } else {
            let req = Request::post(proxy.url(&format!("/post/{i}")))
                .body(full(format!("request body {i}")))
                .expect("request");
            send(&client, req).await
        };
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "echo");
    }
    assert_eq!(agent.requests(), 20);
    assert_eq!(
        agent.connections(),
        1,
        "one upstream connection for 20 requests"
    );
}

#[tokio::test]
async fn a_new_table_keeps_the_idle_upstream_connections() {
    let agent = Agent::named("echo").await;
    let first = catch_all(pool("demo/echo", &[agent.address()], 30_000));
    let proxy = Proxy::with_table(first).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/a")).await.status, StatusCode::OK);
    }

    // Different content (one more route), same endpoint and connect timeout.
    let second = sluice_api::RouteTable::new(
        vec![
            route("demo/echo", None, "/b"),
            route("demo/echo", None, "/"),
        ],
        vec![pool("demo/echo", &[agent.address()], 30_000)],
    );
    assert_eq!(
        proxy.store.apply(second),
        Ok(sluice_proxy::store::Applied::Swapped)
    );
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/b")).await.status, StatusCode::OK);
    }
    assert_eq!(agent.requests(), 6);
    assert_eq!(
        agent.connections(),
        1,
        "the swap kept the pooled connection"
    );
}

#[tokio::test]
async fn an_idle_upstream_connection_is_parked_counted_and_carries_the_next_request() {
    let agent = Agent::named("echo").await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;
    let client = client();
    let series = |name: &str| {
        format!(
            "{name}{{endpoint=\"{}\",pool=\"demo/echo\"}}",
            agent.address()
        )
    };
    let (open, parked) = (
        series("sluice_endpoint_connections"),
        series("sluice_endpoint_connections_parked"),
    );
    assert_eq!(get(&client, &proxy.url("/a")).await.status, StatusCode::OK);
    assert_eq!(proxy.metric(&open), Some(1.0));
    assert_eq!(proxy.metric(&parked), Some(0.0));

    tokio::time::pause();
    tokio::time::sleep(sluice_proxy::pool::PARK_AFTER * 2).await;
    assert_eq!(proxy.metric(&open), Some(1.0));
    assert_eq!(proxy.metric(&parked), Some(1.0), "unused for a second");
    tokio::time::resume();

    assert_eq!(get(&client, &proxy.url("/b")).await.status, StatusCode::OK);
    assert_eq!(agent.requests(), 2);
    assert_eq!(agent.connections(), 1, "the parked connection carried it");
    assert_eq!(proxy.metric(&parked), Some(0.0));
}
