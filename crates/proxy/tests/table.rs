//! Table swaps through real requests: a new table takes effect on the next request,
//! on the same client connection; a table that fails validation is refused and the one
//! in force keeps serving.

mod support;

use http::StatusCode;
use sluice_api::TableError;
use sluice_proxy::store::{Applied, ApplyError};
use support::{Agent, Proxy, catch_all, client, get, pool};

#[tokio::test]
async fn the_next_request_follows_the_new_table_and_bad_tables_are_refused() {
    let one = Agent::named("one").await;
    let two = Agent::named("two").await;
    let three = Agent::named("three").await;
    let mut a = catch_all(pool("demo/agents", &[one.address()], 30_000));
    a.version = 1;
    let proxy = Proxy::with_table(a.clone()).await;
    let client = client();
    let url = proxy.url("/agents/run");

    assert_eq!(get(&client, &url).await.text(), "one");

    let mut b = catch_all(pool("demo/agents", &[two.address()], 30_000));
    b.version = 2;
    assert_eq!(proxy.store.apply(b.clone()), Ok(Applied::Swapped));
    assert_eq!(get(&client, &url).await.text(), "two");

    // A revision that is not the digest of the content.
    let mut bad = catch_all(pool("demo/agents", &[three.address()], 30_000));
    bad.version = 3;
    bad.revision = "0123456789abcdef".into();
    assert!(matches!(
        proxy.store.apply(bad),
        Err(ApplyError::Invalid(TableError::Revision { .. }))
    ));
    // Content changed after the revision was computed.
    let mut tampered = b.clone();
    tampered.version = 4;
    tampered.pools[0].backends[0].endpoints[0].address = three.address();
    assert!(matches!(
        proxy.store.apply(tampered),
        Err(ApplyError::Invalid(TableError::Revision { .. }))
    ));
    let reply = get(&client, &url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "two", "B stays in force");
    assert_eq!(three.requests(), 0);

    // Going back to A's content is a swap like any other.
    a.version = 5;
    assert_eq!(proxy.store.apply(a), Ok(Applied::Swapped));
    assert_eq!(get(&client, &url).await.text(), "one");

    assert_eq!(one.requests(), 2);
    assert_eq!(two.requests(), 2);
    assert_eq!(
        proxy.metric("sluice_route_table_updates_total{result=\"applied\"}"),
        Some(3.0)
    );
    assert_eq!(
        proxy.metric("sluice_route_table_updates_total{result=\"rejected\"}"),
        Some(2.0)
    );
    assert_eq!(proxy.metric("sluice_route_table_version"), Some(5.0));
}

#[tokio::test]
async fn a_resent_table_only_updates_the_version() {
    let one = Agent::named("one").await;
    let mut a = catch_all(pool("demo/agents", &[one.address()], 30_000));
    a.version = 1;
    let proxy = Proxy::with_table(a.clone()).await;
    a.version = 2;
    assert_eq!(proxy.store.apply(a), Ok(Applied::Unchanged));
    assert_eq!(get(&client(), &proxy.url("/")).await.text(), "one");
    assert_eq!(proxy.metric("sluice_route_table_version"), Some(2.0));
    assert_eq!(
        proxy.metric("sluice_route_table_updates_total{result=\"applied\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn endpoints_that_leave_lose_their_metric_series() {
    let one = Agent::named("one").await;
    let two = Agent::named("two").await;
    let proxy = Proxy::with_table(catch_all(pool("demo/agents", &[one.address()], 30_000))).await;
    let client = client();
    assert_eq!(get(&client, &proxy.url("/x")).await.text(), "one");
    let series = format!(
        "sluice_endpoint_requests_total{{endpoint=\"{}\",pool=\"demo/agents\"}}",
        one.address()
    );
    assert_eq!(proxy.metric(&series), Some(1.0));

    let mut b = catch_all(pool("demo/agents", &[two.address()], 30_000));
    b.version = 2;
    assert_eq!(proxy.store.apply(b), Ok(Applied::Swapped));
    assert_eq!(get(&client, &proxy.url("/x")).await.text(), "two");
    assert_eq!(
        proxy.metric(&series),
        None,
        "a departed endpoint's series is dropped"
    );
}
