//! The push server over a real socket: a subscriber gets the current table at once,
//! then each new version; `/v1/routes`, `/readyz` and `/metrics` tell the same story.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use sluice_api::table::{Algorithm, BackendTarget, Endpoint, Pool, Route};
use sluice_controller::Publisher;
use sluice_controller::push::{self, PushConfig, PushMetrics};

fn table(prefix: &str) -> RouteTable {
    let pool = Pool {
        key: "d/p".into(),
        algorithm: Algorithm::RoundRobin,
        backends: vec![BackendTarget {
            name: "static[0]".into(),
            weight: 1,
            endpoints: vec![Endpoint::new("127.0.0.1:9")],
            ..Default::default()
        }],
        connect_timeout_ms: 1,
        request_timeout_ms: 1,
        ..Default::default()
    };
    let route = Route {
        pool: "d/p".into(),
        host: None,
        path_prefix: prefix.into(),
        headers: vec![],
    };
    RouteTable::new(vec![route], vec![pool])
}

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
        .get(format!("{base}{}", push::WATCH_PATH).parse().expect("url"))
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
