//! Bodies stream through the proxy in both directions: a chunk the agent sends reaches
//! the client while the agent is still working, and a chunk the client sends reaches
//! the agent before the client has sent the rest.
//!
//! The fake agents wait on signals the test gives only after it has seen the earlier
//! chunk through the proxy; a proxy that buffered would leave the test waiting.

mod support;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{
    Agent, Proxy, TestClient, catch_all, channel_body, client, full, h2_client, next_chunk,
    open_stream, pool, within,
};
use tokio::sync::{Notify, mpsc};

/// Reads from `body` until `expected.len()` bytes have arrived and checks them.
async fn expect_bytes(body: &mut Incoming, expected: &[u8]) {
    let mut got = BytesMut::new();
    while got.len() < expected.len() {
        let chunk = within("next chunk", next_chunk(body))
            .await
            .expect("body ended early");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// An agent that answers with `first`, then sends each of `rest` only when the test
/// calls `release.notify_one()` once more.
async fn gated_agent(
    content_type: &'static str,
    first: &'static str,
    rest: &'static [&'static str],
) -> (Agent, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let agent = Agent::start(move |_req| {
        let gate = gate.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                if tx.send(Bytes::from_static(first.as_bytes())).await.is_err() {
                    return;
                }
                for part in rest {
                    gate.notified().await;
                    if tx.send(Bytes::from_static(part.as_bytes())).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CACHE_CONTROL, "no-cache")
                .body(body)
                .expect("response")
        }
    })
    .await;
    (agent, release)
}

#[tokio::test]
async fn the_first_response_chunk_arrives_before_the_agent_finishes() {
    let (agent, release) = gated_agent("text/plain", "first ", &["second"]).await;
    let proxy = Proxy::with_table(catch_all(pool("demo/stream", &[agent.address()], 30_000))).await;

    let mut body = open_stream(&proxy, "/stream").await;
    // The agent cannot finish until `release`, which only happens below.
    expect_bytes(&mut body, b"first ").await;
    release.notify_one();
    expect_bytes(&mut body, b"second").await;
    assert!(within("end of body", next_chunk(&mut body)).await.is_none());
}

async fn sse_streams_event_by_event(client: TestClient) {
    const FIRST: &str = "data: {\"token\":\"Hel\"}\n\n";
    const EVENTS: &[&str] = &["data: {\"token\":\"lo\"}\n\n", "data: [DONE]\n\n"];
    let (agent, release) = gated_agent("text/event-stream", FIRST, EVENTS).await;
    let proxy = Proxy::with_table(catch_all(pool("demo/chat", &[agent.address()], 30_000))).await;

    let req = Request::post(proxy.url("/v1/chat/completions"))
        .header(header::ACCEPT, "text/event-stream")
        .body(full("{\"stream\":true}"))
        .expect("request");
    let resp = within("response head", client.request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    let mut body = resp.into_body();
    expect_bytes(&mut body, FIRST.as_bytes()).await;
    for event in EVENTS {
        release.notify_one();
        expect_bytes(&mut body, event.as_bytes()).await;
    }
    assert!(
        within("end of stream", next_chunk(&mut body))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn server_sent_events_reach_an_http1_client_event_by_event() {
    sse_streams_event_by_event(client()).await;
}

#[tokio::test]
async fn server_sent_events_reach_an_http2_client_event_by_event() {
    sse_streams_event_by_event(h2_client()).await;
}

#[tokio::test]
async fn the_first_request_chunk_reaches_the_agent_before_the_client_finishes() {
    let (first_seen_tx, mut first_seen) = mpsc::unbounded_channel::<Bytes>();
    let agent = Agent::start(move |req: Request<Incoming>| {
        let first_seen_tx = first_seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let first = next_chunk(&mut body).await.expect("a first chunk");
            first_seen_tx
                .send(first.clone())
                .expect("test is listening");
            let rest = body.collect().await.expect("rest of the body").to_bytes();
            let mut all = BytesMut::from(&first[..]);
            all.extend_from_slice(&rest);
            Response::new(full(all.freeze()))
        }
    })
    .await;
    let proxy = Proxy::with_table(catch_all(pool("demo/upload", &[agent.address()], 30_000))).await;

    let (tx, body) = channel_body();
    let req = Request::post(proxy.url("/upload"))
        .body(body)
        .expect("request");
    let client = client();
    let pending = tokio::spawn(async move { client.request(req).await });

    tx.send(Bytes::from_static(b"part one;"))
        .await
        .expect("send");
    let first = within("agent saw the first chunk", first_seen.recv())
        .await
        .expect("agent reports");
    // Only now does the client send the rest.
    assert_eq!(&first[..], b"part one;");
    tx.send(Bytes::from_static(b"part two"))
        .await
        .expect("send");
    drop(tx);

    let resp = within("response", pending)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&echoed[..], b"part one;part two");
}
