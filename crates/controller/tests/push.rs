//! The push server over a real socket: a subscriber gets the current table at once,
//! then each new version; `/v1/routes`, `/readyz` and `/metrics` tell the same story.
//! Named subscribers acknowledge tables; the registry knows each one's version, and
//! another replica learns them from `/v1/proxies`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use sluice_api::push::{self as protocol, Ack};
use sluice_api::testing::one_pool_table as table;
use sluice_controller::Publisher;
use sluice_controller::peers::{self, PeerConfig, ProxyRevisions};
use sluice_controller::proxies::{AckError, Acked, ProxyRegistry, RegisterError};
use sluice_controller::push::{self, PushConfig, PushMetrics};

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> (u16, String) {
    let resp = client
        .get(url.parse().expect("url"))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn subscribers_get_the_current_table_then_each_new_one() {
    let publisher = Publisher::new();
    let registry = prometheus::Registry::new();
    let metrics = PushMetrics::new(&registry).expect("metrics");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(push::serve(
        listener,
        publisher.clone(),
        metrics,
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    assert_eq!(get(&client, &format!("{base}/readyz")).await.0, 503);
    assert_eq!(get(&client, &format!("{base}/v1/routes")).await.0, 503);
    publisher.publish(table("/a")).expect("valid");
    assert_eq!(get(&client, &format!("{base}/readyz")).await.0, 200);

    let resp = client
        .get(
            format!("{base}{}", protocol::WATCH_PATH)
                .parse()
                .expect("url"),
        )
        .await
        .expect("subscribe");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let mut next_table = async || -> RouteTable {
        loop {
            let frame = body.frame().await.expect("open").expect("frame");
            let data = frame.into_data().expect("data");
            if data.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            assert!(data.ends_with(b"\n"), "one table per line");
            return serde_json::from_slice(&data).expect("a table");
        }
    };
    let first = next_table().await;
    assert_eq!(
        (first.version, first.routes[0].path_prefix.as_str()),
        (1, "/a")
    );

    publisher.publish(table("/b")).expect("valid");
    let second = next_table().await;
    assert_eq!(
        (second.version, second.routes[0].path_prefix.as_str()),
        (2, "/b")
    );
    assert_eq!(second.validate(), Ok(()));

    let (status, current) = get(&client, &format!("{base}/v1/routes")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<RouteTable>(&current).expect("table"),
        second
    );

    let (_, text) = get(&client, &format!("{base}/metrics")).await;
    assert!(
        text.contains("sluice_controller_connected_proxies 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_controller_table_pushes_total 2"),
        "{text}"
    );
    assert!(text.contains("sluice_controller_table_version 2"), "{text}");

    drop(body);
    let _ = stop_tx.send(());
    server.await.expect("server stops");
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

type PostClient = Client<HttpConnector, Full<Bytes>>;

async fn post(client: &PostClient, url: &str, body: &str) -> (u16, String) {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reads table lines from a subscription, skipping heartbeats.
struct Stream {
    body: Incoming,
    buf: Vec<u8>,
}

impl Stream {
    async fn next_table(&mut self) -> RouteTable {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).expect("a table");
            }
            let frame = self.body.frame().await.expect("open").expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

async fn subscribe(client: &PostClient, base: &str, query: &str) -> (u16, Stream) {
    let req = http::Request::get(format!("{base}{}{query}", protocol::WATCH_PATH))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("subscribe");
    let status = resp.status().as_u16();
    (
        status,
        Stream {
            body: resp.into_body(),
            buf: Vec::new(),
        },
    )
}

fn ack_json(proxy: &str, table: &RouteTable) -> String {
    serde_json::json!({"proxy": proxy, "version": table.version, "revision": table.revision})
        .to_string()
}

async fn proxies(client: &PostClient, base: &str) -> serde_json::Value {
    let req = http::Request::get(format!("{base}{}", protocol::PROXIES_PATH))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("request");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("json")
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
async fn named_proxies_acknowledge_and_the_controller_knows_their_versions() {
    let publisher = Publisher::new();
    let registry = prometheus::Registry::new();
    let metrics = PushMetrics::new(&registry).expect("metrics");
    let proxies_reg = ProxyRegistry::with_capacity(publisher.clone(), 2);
    proxies_reg.register_metrics(&registry).expect("metrics");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(push::serve_with(
        listener,
        proxies_reg.clone(),
        metrics,
        PushConfig {
            // Short, so that the server notices a subscriber that left.
            heartbeat: Duration::from_millis(20),
            ..PushConfig::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let client: PostClient = Client::builder(TokioExecutor::new()).build_http();
    let ack_url = format!("{base}{}", protocol::ACK_PATH);

    publisher.publish(table("/a")).expect("valid");
    let (status, mut p1) = subscribe(&client, &base, "?proxy=p1").await;
    assert_eq!(status, 200);
    let v1 = p1.next_table().await;
    assert_eq!(v1.version, 1);
    until(&proxies_reg, "p1 tracked", |r| r.len() == 1).await;
    let listed = proxies(&client, &base).await;
    assert_eq!(listed["proxies"][0]["id"], "p1");
    assert_eq!(listed["proxies"][0]["version"], serde_json::Value::Null);
    assert_eq!(listed["stale"], 1, "not acknowledged yet: stale");

    // The acknowledgement is recorded with its latency.
    assert_eq!(post(&client, &ack_url, &ack_json("p1", &v1)).await.0, 204);
    let listed = proxies(&client, &base).await;
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
    let (_, text) = post_less_get(&base, "/metrics").await;
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
    let (status, body) = post(&client, &ack_url, &ack_json("ghost", &v1)).await;
    assert_eq!(status, 404, "{body}");
    let mut future = v1.clone();
    future.version = 9;
    assert_eq!(
        post(&client, &ack_url, &ack_json("p1", &future)).await.0,
        409
    );
    let mut forged = v1.clone();
    forged.revision = "0000".into();
    assert_eq!(
        post(&client, &ack_url, &ack_json("p1", &forged)).await.0,
        409
    );
    assert_eq!(post(&client, &ack_url, "{\"proxy\":").await.0, 400);
    let huge = format!("{{\"proxy\":\"{}\"}}", "x".repeat(10_000));
    assert_eq!(post(&client, &ack_url, &huge).await.0, 413);
    assert_eq!(proxies_reg.count_at(1), 1, "refusals change nothing");

    // A new table makes p1 stale until it acknowledges it.
    publisher.publish(table("/b")).expect("valid");
    let v2 = p1.next_table().await;
    assert_eq!(v2.version, 2);
    let summary = proxies_reg.summary();
    assert_eq!((summary.version, summary.current, summary.stale), (2, 0, 1));
    let (_, text) = post_less_get(&base, "/metrics").await;
    assert!(
        text.contains(r#"sluice_controller_proxies{state="stale"} 1"#),
        "{text}"
    );

    // A second proxy; a third is served but not tracked (capacity 2); a bad name is
    // refused.
    let (_, mut p2) = subscribe(&client, &base, "?proxy=p2").await;
    assert_eq!(p2.next_table().await, v2);
    let (status, mut p3) = subscribe(&client, &base, "?proxy=p3").await;
    assert_eq!(status, 200, "served beyond capacity");
    assert_eq!(p3.next_table().await, v2);
    assert_eq!(subscribe(&client, &base, "?proxy=a%20b").await.0, 400);
    let (status, mut anonymous) = subscribe(&client, &base, "").await;
    assert_eq!(status, 200, "an unnamed subscriber is served");
    assert_eq!(anonymous.next_table().await, v2);
    until(&proxies_reg, "p1 and p2 tracked", |r| r.len() == 2).await;
    let ids: Vec<String> = proxies_reg.snapshot().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["p1", "p2"]);

    assert_eq!(post(&client, &ack_url, &ack_json("p2", &v2)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 1);
    assert_eq!(proxies_reg.count_at(1), 1);
    assert_eq!(post(&client, &ack_url, &ack_json("p1", &v2)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 2);
    assert_eq!(proxies_reg.count_current(), 2);
    assert_eq!(proxies_reg.count_at_revision(&v2.revision), 2);
    assert_eq!(proxies_reg.count_at_revision(&v1.revision), 0);
    // An acknowledgement that arrives late (older version) changes nothing.
    assert_eq!(post(&client, &ack_url, &ack_json("p1", &v1)).await.0, 204);
    assert_eq!(proxies_reg.count_at(2), 2);

    // When a subscription ends, its proxy leaves the registry.
    drop(p1);
    until(&proxies_reg, "p1 to leave", |r| r.len() == 1).await;
    assert_eq!(proxies_reg.snapshot()[0].id, "p2");
    assert_eq!(post(&client, &ack_url, &ack_json("p1", &v2)).await.0, 404);

    drop((p2, p3, anonymous));
    let _ = stop_tx.send(());
    server.await.expect("server stops");
    assert!(proxies_reg.is_empty());
}

async fn post_less_get(base: &str, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    get(&client, &format!("{base}{path}")).await
}

/// The proxy's way: HTTP/2 with prior knowledge (one pooled connection carries the
/// subscription and the acknowledgements).
#[tokio::test]
async fn a_proxy_speaking_http2_subscribes_and_acknowledges() {
    let publisher = Publisher::new();
    let registry = prometheus::Registry::new();
    let metrics = PushMetrics::new(&registry).expect("metrics");
    let proxies_reg = ProxyRegistry::new(publisher.clone());
    proxies_reg.register_metrics(&registry).expect("metrics");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(push::serve_with(
        listener,
        proxies_reg.clone(),
        metrics,
        PushConfig::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    publisher.publish(table("/a")).expect("valid");
    let client: PostClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (status, mut stream) = subscribe(&client, &base, "?proxy=h2-proxy").await;
    assert_eq!(status, 200);
    let v1 = stream.next_table().await;
    let ack_url = format!("{base}{}", protocol::ACK_PATH);
    assert_eq!(
        post(&client, &ack_url, &ack_json("h2-proxy", &v1)).await.0,
        204
    );
    assert_eq!(proxies_reg.count_current(), 1);
    let listed = proxies(&client, &base).await;
    let peer: SocketAddr = listed["proxies"][0]["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("addr");
    assert!(peer.ip().is_loopback());
    drop(stream);
    drop(client);
    let _ = stop_tx.send(());
    server.await.expect("server stops");
}

#[tokio::test(start_paused = true)]
async fn push_latency_runs_from_publication_or_subscription_to_acknowledgement() {
    let publisher = Publisher::new();
    let registry = ProxyRegistry::new(publisher.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let early = registry.register("early", peer).expect("registered");
    publisher.publish(table("/a")).expect("valid");
    let v1 = publisher.current().expect("published").table.clone();
    tokio::time::advance(Duration::from_millis(30)).await;
    let late = registry.register("late", peer).expect("registered");
    tokio::time::advance(Duration::from_millis(10)).await;
    let ack = |proxy: &str| Ack {
        proxy: proxy.parse().expect("a proxy name"),
        version: v1.version,
        revision: v1.revision.clone(),
    };
    assert_eq!(
        registry.ack(&ack("early")),
        Ok(Acked::Recorded(Some(Duration::from_millis(40))))
    );
    assert_eq!(
        registry.ack(&ack("late")),
        Ok(Acked::Recorded(Some(Duration::from_millis(10)))),
        "measured from the subscription, which came after the publication"
    );
    assert_eq!(registry.ack(&ack("late")), Ok(Acked::Ignored));
    assert_eq!(
        registry.ack(&ack("nobody")),
        Err(AckError::UnknownProxy("nobody".into()))
    );

    // After a new publication, acknowledging the old version records it without a
    // latency (it was not the current table any more).
    publisher.publish(table("/b")).expect("valid");
    let summary = registry.summary();
    assert_eq!((summary.version, summary.current, summary.stale), (2, 0, 2));
    let third = registry.register("third", peer).expect("registered");
    assert_eq!(registry.ack(&ack("third")), Ok(Acked::Recorded(None)));
    assert_eq!(registry.count_at(1), 3);
    assert_eq!(registry.count_current(), 0);
    let mut unpublished = ack("third");
    unpublished.version = 3;
    assert_eq!(registry.ack(&unpublished), Err(AckError::Unpublished(3)));
    drop((early, late, third));
    assert!(registry.is_empty());
}

#[test]
fn a_name_subscribed_again_replaces_its_entry_and_the_registry_is_bounded() {
    let publisher = Publisher::new();
    let registry = ProxyRegistry::with_capacity(publisher, 1);
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let first = registry.register("p", peer).expect("registered");
    assert_eq!(
        registry.register("q", peer).map(|_| ()),
        Err(RegisterError::Full(1))
    );
    let second = registry.register("p", peer).expect("same name replaces");
    assert_eq!(registry.len(), 1);
    drop(first);
    assert_eq!(
        registry.len(),
        1,
        "the old subscription does not remove the new"
    );
    drop(second);
    assert!(registry.is_empty());
    assert_eq!(
        registry.register("bad name", peer).map(|_| ()),
        Err(RegisterError::InvalidId)
    );
}

#[tokio::test]
async fn a_replica_learns_the_proxies_of_its_peers_and_forgets_a_silent_one() {
    let publisher = Publisher::new();
    publisher.publish(table("/a")).expect("valid table");
    let current = publisher.current().expect("published");
    // The peer: a replica with two proxies, one of which acknowledged the table.
    let proxies = ProxyRegistry::new(publisher.clone());
    let from: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let _acked = proxies.register("remote-1", from).expect("register");
    let _fresh = proxies.register("remote-2", from).expect("register");
    proxies
        .ack(&Ack {
            proxy: "remote-1".parse().expect("a proxy name"),
            version: current.table.version,
            revision: current.table.revision.clone(),
        })
        .expect("ack");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(push::serve_with(
        listener,
        proxies,
        PushMetrics::new(&prometheus::Registry::new()).expect("metrics"),
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));

    let (tx, mut rx) = tokio::sync::watch::channel(ProxyRevisions::new());
    let poller = tokio::spawn(peers::run(
        PeerConfig {
            target,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
        },
        tx,
    ));
    let expected: ProxyRevisions = [
        ("remote-1".to_owned(), Some(current.table.revision.clone())),
        ("remote-2".to_owned(), None),
    ]
    .into();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v == expected))
        .await
        .expect("the peer's proxies within 10 s")
        .expect("poller running");

    // The peer goes away: once it has missed a few polls, its proxies are dropped.
    let _ = stop_tx.send(());
    server.await.expect("server stopped");
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(ProxyRevisions::is_empty),
    )
    .await
    .expect("a silent peer forgotten within 10 s")
    .expect("poller running");
    poller.abort();
}
