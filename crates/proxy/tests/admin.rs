//! The admin listener on a real socket: health, readiness before and after the first
//! table, the table in force as JSON (its secrets redacted), and the request metrics
//! it exports.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use sluice_api::RouteTable;
use sluice_api::table::{ClientCertificate, Sensitive, UpstreamAuth, UpstreamTls};
use support::{
    Agent, Proxy, catch_all, channel_body, client, empty, full, get, next_chunk, pool, send, within,
};
use tokio::sync::Notify;

#[tokio::test]
async fn routes_shows_the_table_with_its_secrets_redacted() {
    let agent = Agent::named("echo").await;
    let mut table = catch_all(pool("demo/echo", &[agent.address()], 30_000));
    table.pools[0].backends[0].auth = Some(UpstreamAuth {
        header: header::AUTHORIZATION,
        value: Sensitive::new("Bearer sk-not-for-display"),
    });
    table.pools[0].backends[0].tls = Some(UpstreamTls {
        insecure_skip_verify: true,
        client_certificate: Some(ClientCertificate {
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: Sensitive::new("-----BEGIN PRIVATE KEY----- not for display"),
        }),
        ..UpstreamTls::default()
    });
    let table = RouteTable::new(table.routes, table.pools);
    let proxy = Proxy::start().await;
    // Applying builds the client: the certificate above does not parse, so the
    // table is refused; a table without it shows the credential redacted.
    assert!(proxy.store.apply(table.clone()).is_err());
    let mut pools = table.pools.clone();
    pools[0].backends[0].tls = None;
    proxy
        .store
        .apply(RouteTable::new(table.routes.clone(), pools))
        .expect("table applies");
    let admin = proxy.start_admin().await;
    let routes = get(&client(), &format!("http://{admin}/routes")).await;
    assert_eq!(routes.status, StatusCode::OK);
    assert!(
        !routes.text().contains("sk-not-for-display"),
        "{}",
        routes.text()
    );
    assert_eq!(
        routes.json()["pools"][0]["backends"][0]["auth"]["value"],
        "<redacted>"
    );
}

#[tokio::test]
async fn health_readiness_and_routes_follow_the_table() {
    let agent = Agent::named("echo").await;
    let proxy = Proxy::start().await;
    let admin = proxy.start_admin().await;
    let url = |path: &str| format!("http://{admin}{path}");
    let c = client();

    let healthz = get(&c, &url("/healthz")).await;
    assert_eq!(healthz.status, StatusCode::OK);
    assert_eq!(healthz.text(), "ok\n");
    assert_eq!(
        get(&c, &url("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&c, &url("/routes")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let mut table = catch_all(pool("demo/echo", &[agent.address()], 30_000));
    table.version = 7;
    proxy.store.apply(table.clone()).expect("table applies");

    let readyz = get(&c, &url("/readyz")).await;
    assert_eq!(readyz.status, StatusCode::OK);
    assert!(readyz.text().contains("version 7"), "{}", readyz.text());
    let routes = get(&c, &url("/routes")).await;
    assert_eq!(routes.status, StatusCode::OK);
    assert_eq!(routes.headers[header::CONTENT_TYPE], "application/json");
    let json = routes.json();
    assert_eq!(json["version"], 7);
    assert_eq!(json["revision"], table.revision.as_str());
    assert_eq!(json["routes"][0]["pathPrefix"], "/");
    assert_eq!(json["pools"][0]["key"], "demo/echo");
    let served: RouteTable = serde_json::from_value(json).expect("a RouteTable");
    assert_eq!(served, table);

    assert_eq!(
        get(&c, &url("/nothing-here")).await.status,
        StatusCode::NOT_FOUND
    );
    let post = Request::post(url("/healthz"))
        .body(empty())
        .expect("request");
    assert_eq!(send(&c, post).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_requests_and_in_flight_returns_to_zero() {
    // `/stream` answers a first chunk and ends only when released; other paths answer
    // at once, with a known length.
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let agent = Agent::start(move |req: Request<hyper::body::Incoming>| {
        let gate = gate.clone();
        async move {
            if req.uri().path() != "/stream" {
                return Response::new(full("done"));
            }
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                if tx.send(Bytes::from_static(b"first")).await.is_ok() {
                    gate.notified().await;
                    let _ = tx.send(Bytes::from_static(b"last")).await;
                }
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;
    let admin = proxy.start_admin().await;
    let c = client();
    let metric = |text: &str, series: &str| support::metric(text, series);
    let scrape = || async { get(&client(), &format!("http://{admin}/metrics")).await };

    for _ in 0..3 {
        assert_eq!(get(&c, &proxy.url("/quick")).await.text(), "done");
    }
    let req = Request::get(proxy.url("/stream"))
        .body(empty())
        .expect("request");
    let resp = within("response head", c.request(req))
        .await
        .expect("response");
    let mut body = resp.into_body();
    assert_eq!(
        within("first chunk", next_chunk(&mut body))
            .await
            .as_deref(),
        Some(&b"first"[..])
    );

    let during = scrape().await;
    assert_eq!(during.status, StatusCode::OK);
    assert!(
        during.headers[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/plain")),
    );
    assert_eq!(
        metric(
            during.text(),
            "sluice_requests_in_flight{pool=\"demo/echo\"}"
        ),
        Some(1.0),
        "the streaming response is in flight until its body ends"
    );

    release.notify_one();
    assert_eq!(
        within("last chunk", next_chunk(&mut body)).await.as_deref(),
        Some(&b"last"[..])
    );
    assert!(within("end of body", next_chunk(&mut body)).await.is_none());
    assert_eq!(get(&c, &proxy.url("/quick")).await.status, StatusCode::OK);

    let after = scrape().await;
    let text = after.text();
    assert_eq!(
        metric(
            text,
            "sluice_requests_total{code=\"2xx\",pool=\"demo/echo\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(text, "sluice_requests_in_flight{pool=\"demo/echo\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            text,
            "sluice_request_duration_seconds_count{pool=\"demo/echo\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            text,
            &format!(
                "sluice_endpoint_requests_total{{endpoint=\"{}\",pool=\"demo/echo\"}}",
                agent.address()
            )
        ),
        Some(5.0),
        "{text}"
    );
}
