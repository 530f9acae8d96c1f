//! The push server over a real socket: a subscriber gets the current table at once,
//! then each new version; `/v1/routes`, `/readyz` and `/metrics` tell the same story.
//! Named subscribers acknowledge tables and the registry knows each one's version.
//! The listener's limits apply, and do not cut a healthy subscription.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use sluice_api::push::{ACK_PATH, PROXIES_PATH, WATCH_PATH};
use sluice_api::testing::one_pool_table as table;
use sluice_controller::Publisher;
use sluice_controller::proxies::ProxyRegistry;
use sluice_controller::push::PushConfig;
use support::push::{HttpClient, PushServer, answer, get, subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ack_json(proxy: &str, table: &RouteTable) -> String {
    serde_json::json!({"proxy": proxy, "version": table.version, "revision": table.revision})
        .to_string()
}

/// Waits, without sleeping blindly, until the registry satisfies `check`.
async fn until(registry: &ProxyRegistry, what: &str, check: impl Fn(&ProxyRegistry) -> bool) {
    let mut changes = registry.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check(registry) {
            changes.changed().await.expect("registry alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn subscribers_get_the_current_table_then_each_new_one() {
    let server = PushServer::start().await;
    let publisher = &server.publisher;

    assert_eq!(server.get("/readyz").await.0, 503);
    assert_eq!(server.get("/v1/routes").await.0, 503);
    publisher.publish(table("/a")).expect("valid");
    assert_eq!(server.get("/readyz").await.0, 200);

    let (status, mut stream) = server.subscribe("").await;
    assert_eq!(status, 200);
    let first = stream.next_table().await;
    assert_eq!(
        (first.version, first.routes[0].path_prefix.as_str()),
        (1, "/a")
    );

    publisher.publish(table("/b")).expect("valid");
    let second = stream.next_table().await;
    assert_eq!(
        (second.version, second.routes[0].path_prefix.as_str()),
        (2, "/b")
    );
    assert_eq!(second.validate(), Ok(()));

    let (status, current) = server.get("/v1/routes").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<RouteTable>(&current).expect("table"),
        second
    );

    let (_, text) = server.get("/metrics").await;
    assert!(
        text.contains("sluice_controller_connected_proxies 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_controller_table_pushes_total 2"),
        "{text}"
    );
    assert!(text.contains("sluice_controller_table_version 2"), "{text}");

    drop(stream);
    let registry = server.metrics.clone();
    server.stop().await;
    assert_eq!(
        registry
            .gather()
            .iter()
            .find(|m| m.name() == "sluice_controller_connected_proxies")
            .map(|m| m.get_metric()[0].get_gauge().get_value()),
        Some(0.0),
        "the gauge falls when the subscriber leaves"
    );
}

#[tokio::test]
async fn named_proxies_acknowledge_and_the_controller_knows_their_versions() {
    let publisher = Publisher::new();
    let proxies_reg = &ProxyRegistry::with_capacity(publisher.clone(), 2);
    let server = PushServer::with_registry(
        proxies_reg.clone(),
        PushConfig {
            // Short, so that the server notices a subscriber that left.
            heartbeat: Duration::from_millis(20),
            ..PushConfig::default()
        },
    )
    .await;

    publisher.publish(table("/a")).expect("valid");
    let (status, mut p1) = server.subscribe("?proxy=p1").await;
    assert_eq!(status, 200);
    let v1 = p1.next_table().await;
    assert_eq!(v1.version, 1);
    until(proxies_reg, "p1 tracked", |r| r.len() == 1).await;
    let listed = server.listed().await;
    assert_eq!(listed["proxies"][0]["id"], "p1");
    assert_eq!(listed["proxies"][0]["version"], serde_json::Value::Null);
    assert_eq!(listed["stale"], 1, "not acknowledged yet: stale");

    // The acknowledgement is recorded with its latency.
    assert_eq!(server.ack(&ack_json("p1", &v1)).await.0, 204);
    let listed = server.listed().await;
    assert_eq!(
        (
            &listed["version"],
            &listed["current"],
            &listed["stale"],
            &listed["proxies"][0]["version"],
            &listed["proxies"][0]["current"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(1),
            &serde_json::json!(true)
        ),
        "{listed}"
    );
    assert!(
        listed["proxies"][0]["pushLatencySeconds"].is_f64(),
        "{listed}"
    );
    let (_, text) = server.get("/metrics").await;
    assert!(
        text.contains(r#"sluice_controller_proxies{state="current"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_controller_proxies{state="stale"} 0"#),
        "{text}"
    );
    assert!(
        text.contains("sluice_controller_push_latency_seconds_count 1"),
        "{text}"
    );

    // Refusals: unknown proxy, unpublished version, wrong revision, bad body.
    let (status, body) = server.ack(&ack_json("ghost", &v1)).await;
    assert_eq!(status, 404, "{body}");
    let mut future = v1.clone();
    future.version = 9;
    assert_eq!(server.ack(&ack_json("p1", &future)).await.0, 409);
    let mut forged = v1.clone();
    forged.revision = "0000".into();
    assert_eq!(server.ack(&ack_json("p1", &forged)).await.0, 409);
    assert_eq!(server.ack("{\"proxy\":").await.0, 400);
    let huge = format!("{{\"proxy\":\"{}\"}}", "x".repeat(10_000));
    assert_eq!(server.ack(&huge).await.0, 413);
    assert_eq!(proxies_reg.count_at(1), 1, "refusals change nothing");

    // A new table makes p1 stale until it acknowledges it.
    publisher.publish(table("/b")).expect("valid");
    let v2 = p1.next_table().await;
    assert_eq!(v2.version, 2);
    let summary = proxies_reg.summary();
    assert_eq!((summary.version, summary.current, summary.stale), (2, 0, 1));
    let (_, text) = server.get("/metrics").await;
    assert!(
        text.contains(r#"sluice_controller_proxies{state="stale"} 1"#),
        "{text}"
    );

    // A second proxy; a third is served but not tracked (capacity 2); a bad name is
    // refused.
    let (_, mut p2) = server.subscribe("?proxy=p2").await;
    assert_eq!(p2.next_table().await, v2);
    let (status, mut p3) = server.subscribe("?proxy=p3").await;
    assert_eq!(status, 200, "served beyond capacity");
    assert_eq!(p3.next_table().await, v2);
    assert_eq!(server.subscribe("?proxy=a%20b").await.0, 400);
    let (status, mut anonymous) = server.subscribe("").await;
    assert_eq!(status, 200, "an unnamed subscriber is served");
    assert_eq!(anonymous.next_table().await, v2);
    until(proxies_reg, "p1 and p2 tracked", |r| r.len() == 2).await;
    let ids: Vec<String> = proxies_reg.snapshot().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["p1", "p2"]);

    assert_eq!(server.ack(&ack_json("p2", &v2)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 1);
    assert_eq!(proxies_reg.count_at(1), 1);
    assert_eq!(server.ack(&ack_json("p1", &v2)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 2);
    assert_eq!(proxies_reg.count_current(), 2);
    assert_eq!(proxies_reg.count_at_revision(&v2.revision), 2);
    assert_eq!(proxies_reg.count_at_revision(&v1.revision), 0);
    // An acknowledgement that arrives late (older version) changes nothing.
    assert_eq!(server.ack(&ack_json("p1", &v1)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 2);

    // When a subscription ends, its proxy leaves the registry.
    drop(p1);
    until(proxies_reg, "p1 to leave", |r| r.len() == 1).await;
    assert_eq!(proxies_reg.snapshot()[0].id, "p2");
    assert_eq!(server.ack(&ack_json("p1", &v2)).await.0, 404);

    drop((p2, p3, anonymous));
    server.stop().await;
    assert!(proxies_reg.is_empty());
}

/// The proxy's way: HTTP/2 with prior knowledge (one pooled connection carries the
/// subscription and the acknowledgements).
#[tokio::test]
async fn a_proxy_speaking_http2_subscribes_and_acknowledges() {
    let publisher = Publisher::new();
    let proxies = ProxyRegistry::new(publisher.clone());
    let server = PushServer::with_registry(proxies.clone(), PushConfig::default()).await;
    publisher.publish(table("/a")).expect("valid");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (status, mut stream) = subscribe(&client, &server.base, "?proxy=h2-proxy").await;
    assert_eq!(status, 200);
    let v1 = stream.next_table().await;
    let req = http::Request::post(server.url(ACK_PATH))
        .body(Full::new(Bytes::from(ack_json("h2-proxy", &v1))))
        .expect("request");
    assert_eq!(answer(&client, req).await.0, 204);
    assert_eq!(proxies.count_current(), 1);
    let (_, listed) = get(&client, &server.url(PROXIES_PATH)).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let peer: SocketAddr = listed["proxies"][0]["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("addr");
    assert!(peer.ip().is_loopback());
    drop(stream);
    drop(client);
    server.stop().await;
}

/// A client that sends half a request head is disconnected after the header-read
/// timeout; subscriptions over HTTP/1.1 and HTTP/2 that stay quiet for much longer
/// than it (and than the HTTP/2 keep-alive interval) still get the next table.
#[tokio::test(start_paused = true)]
async fn the_listener_limits_cut_a_stalled_request_not_a_quiet_subscription() {
    let config = PushConfig {
        heartbeat: Duration::from_secs(3600),
        ..PushConfig::default()
    };
    let header_read_timeout = config.listener.header_read_timeout;
    let server = PushServer::start_config(config).await;
    server.publisher.publish(table("/a")).expect("valid");

    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (_, mut over_h2) = subscribe(&h2, &server.base, "?proxy=h2").await;
    let (_, mut over_h1) = server.subscribe("?proxy=h1").await;
    for stream in [&mut over_h2, &mut over_h1] {
        assert_eq!(stream.next_table().await.version, 1);
    }

    let addr = server.base.trim_start_matches("http://");
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    stalled
        .write_all(format!("GET {WATCH_PATH} HTTP/1.1\r\nhost: x\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer).await;
    assert!(
        started.elapsed() >= header_read_timeout,
        "cut after {:?}",
        started.elapsed()
    );

    tokio::time::sleep(header_read_timeout * 10).await;
    server.publisher.publish(table("/b")).expect("valid");
    for stream in [&mut over_h2, &mut over_h1] {
        assert_eq!(stream.next_table().await.version, 2);
    }
    drop((over_h1, over_h2, h2));
    server.stop().await;
}
