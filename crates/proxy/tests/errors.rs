//! Requests the proxy answers itself: each failure reaches the client with its status,
//! JSON code and `Retry-After` when a retry can help, and is counted by reason.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use support::{
    Agent, Proxy, Reply, catch_all, channel_body, client, dead_address, get, next_chunk,
    open_stream, pool, route, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Checks the shape every proxy error shares, and whether it carries `Retry-After`.
fn assert_proxy_error(reply: &Reply, status: StatusCode, code: &str, retry_after: bool) {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(reply.error_code(), code);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a message explains the error"
    );
    assert_eq!(
        reply.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        retry_after.then_some(&b"1"[..]),
        "Retry-After"
    );
}

/// `sluice_proxy_errors_total{reason}`.
fn errors(proxy: &Proxy, reason: &str) -> Option<f64> {
    proxy.metric(&format!("sluice_proxy_errors_total{{reason=\"{reason}\"}}"))
}

#[tokio::test]
async fn without_a_table_the_proxy_is_not_ready() {
    let proxy = Proxy::start().await;
    let reply = get(&client(), &proxy.url("/agents/echo")).await;
    assert_proxy_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "not_ready", true);
    assert_eq!(errors(&proxy, "not_ready"), Some(1.0));
    assert_eq!(
        proxy.metric("sluice_requests_total{code=\"5xx\",pool=\"\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_request_no_route_matches_is_404() {
    let agent = Agent::named("echo").await;
    let table = sluice_api::RouteTable::new(
        vec![route("demo/echo", None, "/agents/echo")],
        vec![pool("demo/echo", &[agent.address()], 30_000)],
    );
    let proxy = Proxy::with_table(table).await;
    let client = client();

    let reply = get(&client, &proxy.url("/agents/other")).await;
    assert_proxy_error(&reply, StatusCode::NOT_FOUND, "no_route", false);
    let reply = get(&client, &proxy.url("/agents/echoes")).await;
    assert_proxy_error(&reply, StatusCode::NOT_FOUND, "no_route", false);
    assert_eq!(errors(&proxy, "no_route"), Some(2.0));
    assert_eq!(
        proxy.metric("sluice_requests_total{code=\"4xx\",pool=\"\"}"),
        Some(2.0)
    );
    assert_eq!(agent.requests(), 0);
}

#[tokio::test]
async fn a_pool_without_endpoints_is_503_with_retry_after() {
    let proxy = Proxy::with_table(catch_all(pool("demo/empty", &[], 30_000))).await;
    let reply = get(&client(), &proxy.url("/anything")).await;
    assert_proxy_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_endpoints",
        true,
    );
    assert_eq!(errors(&proxy, "no_endpoints"), Some(1.0));
    assert_eq!(
        proxy.metric("sluice_requests_total{code=\"5xx\",pool=\"demo/empty\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_502() {
    let dead = dead_address().await;
    let proxy = Proxy::with_table(catch_all(pool("demo/dead", &[dead], 30_000))).await;
    let reply = get(&client(), &proxy.url("/anything")).await;
    assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_connect", true);
    assert_eq!(errors(&proxy, "upstream_connect"), Some(1.0));
    assert_eq!(
        proxy.metric("sluice_requests_in_flight{pool=\"demo/dead\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn an_endpoint_refusing_connections_reads_unhealthy_until_it_answers() {
    let dead = dead_address().await;
    let proxy = Proxy::with_table(catch_all(pool(
        "demo/dead",
        std::slice::from_ref(&dead),
        30_000,
    )))
    .await;
    let healthy = format!("sluice_endpoint_healthy{{endpoint=\"{dead}\",pool=\"demo/dead\"}}");
    assert_eq!(
        proxy.metric(&healthy),
        Some(1.0),
        "healthy until proven not"
    );
    for _ in 0..2 {
        let reply = get(&client(), &proxy.url("/anything")).await;
        assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_connect", true);
        assert_eq!(proxy.metric(&healthy), Some(0.0));
    }

    // Something listens there now, and answers.
    let listener = tokio::net::TcpListener::bind(&dead)
        .await
        .expect("bind the address again");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    let reply = get(&client(), &proxy.url("/anything")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(proxy.metric(&healthy), Some(1.0));
}

#[tokio::test]
async fn an_agent_closing_the_connection_without_answering_is_502() {
    // A raw socket: read the request head, then hang up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            drop(stream);
        }
    });
    let proxy = Proxy::with_table(catch_all(pool("demo/rude", &[address], 30_000))).await;
    let reply = get(&client(), &proxy.url("/anything")).await;
    assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_error", false);
    assert_eq!(errors(&proxy, "upstream_error"), Some(1.0));
}

#[tokio::test]
async fn an_agent_slower_than_the_request_timeout_is_504() {
    let arrived = Arc::new(Notify::new());
    let signal = arrived.clone();
    // The agent never answers.
    let agent = Agent::start(move |_req| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            std::future::pending::<Response<support::TestBody>>().await
        }
    })
    .await;
    let proxy = Proxy::with_table(catch_all(pool("demo/slow", &[agent.address()], 200))).await;

    let reply = get(&client(), &proxy.url("/think")).await;
    within("the agent got the request", arrived.notified()).await;
    assert_proxy_error(
        &reply,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        false,
    );
    assert!(reply.text().contains("200 ms"), "{}", reply.text());
    assert_eq!(errors(&proxy, "upstream_timeout"), Some(1.0));
    assert_eq!(
        proxy.metric("sluice_requests_in_flight{pool=\"demo/slow\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_response_body_still_streaming_at_the_deadline_is_cut() {
    // The agent answers at once with a first chunk, then goes silent and keeps the
    // body open.
    let agent = Agent::start(|_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first")).await;
            std::future::pending::<()>().await;
            drop(tx);
        });
        Response::new(body)
    })
    .await;
    // Generous for the response head to come back, short enough to keep the test quick.
    let proxy = Proxy::with_table(catch_all(pool("demo/stall", &[agent.address()], 500))).await;

    let mut body = open_stream(&proxy, "/stream").await;
    let first = within("first chunk", next_chunk(&mut body))
        .await
        .expect("a first chunk");
    assert_eq!(&first[..], b"first");

    // The next frame is an error: the client can tell the body was cut short.
    let next = within("the cut", body.frame()).await;
    assert!(
        matches!(next, Some(Err(_))),
        "expected a failed body, got {next:?}"
    );
    assert_eq!(
        proxy.metric("sluice_requests_in_flight{pool=\"demo/stall\"}"),
        Some(0.0)
    );
}
