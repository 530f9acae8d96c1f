//! Forwarding through real sockets: what reaches the agent, what comes back, which
//! headers are added or dropped on the way, and HTTP/2 clients in front of HTTP/1.1
//! agents.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    Agent, Proxy, TestBody, catch_all, channel_body, client, empty, full, get, h2_client, pool,
    route, send, within,
};
use tokio::sync::mpsc;

/// `len` bytes of a pattern that is unlikely to survive reordering or truncation.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| u8::try_from((i * 7 + i / 251) % 251).expect("below 251"))
        .collect()
}

/// What a fake agent saw of one request.
struct Seen {
    parts: http::request::Parts,
    body: Bytes,
}

/// An agent that reports every request it receives on the returned channel and
/// answers with `respond`.
async fn recording_agent(
    respond: fn() -> Response<TestBody>,
) -> (Agent, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = Agent::start(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            tx.send(Seen { parts, body }).expect("test is listening");
            respond()
        }
    })
    .await;
    (agent, rx)
}

const RESPONSE_LEN: usize = 200 * 1024;

fn big_response_with_hop_by_hop_headers() -> Response<TestBody> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header("x-agent", "echo")
        .header(header::CONNECTION, "x-bar")
        .header("x-bar", "connection-scoped")
        .header("keep-alive", "timeout=5")
        .header(header::PROXY_AUTHENTICATE, "Basic realm=agent")
        .header(header::UPGRADE, "h2c")
        .body(full(pattern(RESPONSE_LEN)))
        .expect("response")
}

#[tokio::test]
async fn forwards_method_target_headers_and_bodies_and_strips_hop_by_hop() {
    let (agent, mut seen) = recording_agent(big_response_with_hop_by_hop_headers).await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;
    let client = client();

    // A request body of a few hundred KB, streamed in chunks with no length.
    let request_body = pattern(300 * 1024 + 17);
    let (tx, body) = channel_body();
    let chunks = request_body.clone();
    tokio::spawn(async move {
        for chunk in chunks.chunks(16 * 1024) {
            if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post(proxy.url("/agents/echo/run?x=1&y=two%20words"))
        .header("x-forwarded-for", "203.0.113.7")
        .header(header::CONNECTION, "keep-alive, x-foo")
        .header("keep-alive", "timeout=5")
        .header(header::TE, "trailers")
        .header(header::UPGRADE, "websocket")
        .header(header::PROXY_AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .header("x-foo", "connection-scoped")
        .header("x-end-to-end", "kept")
        .body(body)
        .expect("request");
    let reply = send(&client, req).await;

    let got = within("agent saw the request", seen.recv())
        .await
        .expect("one request");
    assert_eq!(got.parts.method, http::Method::POST);
    assert_eq!(
        got.parts.uri.path_and_query().map(|pq| pq.as_str()),
        Some("/agents/echo/run?x=1&y=two%20words")
    );
    assert_eq!(got.parts.version, Version::HTTP_11);
    assert_eq!(got.body.len(), request_body.len());
    assert!(got.body == request_body, "request body arrived altered");
    let h = &got.parts.headers;
    assert_eq!(h[header::HOST], proxy.addr.to_string(), "Host is preserved");
    // The test client is not a trusted proxy: the hops it claims are dropped.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-end-to-end"], "kept");
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-foo",
    ] {
        assert!(
            !h.contains_key(hop),
            "agent received hop-by-hop {hop}: {h:?}"
        );
    }

    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.headers["x-agent"], "echo");
    assert!(reply.body == pattern(RESPONSE_LEN), "response body altered");
    for hop in ["x-bar", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(
            !reply.headers.contains_key(hop),
            "client received hop-by-hop {hop}: {:?}",
            reply.headers
        );
    }
    assert!(
        reply
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .all(|v| !v.as_bytes().eq_ignore_ascii_case(b"x-bar")),
        "the agent's Connection header reached the client"
    );

    // Without a client-sent value, the header holds the peer alone.
    let reply = get(&client, &proxy.url("/second")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let got = within("agent saw the request", seen.recv())
        .await
        .expect("a second request");
    assert_eq!(got.parts.method, http::Method::GET);
    assert_eq!(got.parts.headers["x-forwarded-for"], "127.0.0.1");
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_replaced_by_the_peer() {
    let (agent, mut seen) = recording_agent(small_response).await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;
    let req = Request::get(proxy.url("/"))
        .header("x-forwarded-for", "198.51.100.1, 198.51.100.2")
        .header("x-forwarded-for", "203.0.113.7")
        .body(empty())
        .expect("request");
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    let got = within("agent saw the request", seen.recv())
        .await
        .expect("one request");
    let values: Vec<_> = got
        .parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .collect();
    assert_eq!(
        values,
        ["127.0.0.1"],
        "hops claimed by an untrusted peer are not passed on, whatever their lines"
    );
}

fn small_response() -> Response<TestBody> {
    Response::new(full("from the agent"))
}

#[tokio::test]
async fn http2_requests_reach_http1_agents_with_the_authority_as_host() {
    let (agent, mut seen) = recording_agent(small_response).await;
    let proxy = Proxy::with_table(catch_all(pool("demo/echo", &[agent.address()], 30_000))).await;

    // The hyper-util client with prior knowledge: the proxy answers HTTP/2.
    let req = Request::post(proxy.url("/h2/path?q=1"))
        .body(full("hello over h2"))
        .expect("request");
    let resp = within("h2 response", h2_client().request(req))
        .await
        .expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"from the agent");

    let got = within("agent saw the request", seen.recv())
        .await
        .expect("one request");
    assert_eq!(got.parts.version, Version::HTTP_11);
    assert_eq!(got.parts.method, http::Method::POST);
    assert_eq!(
        got.parts.uri.path_and_query().map(|pq| pq.as_str()),
        Some("/h2/path?q=1")
    );
    assert_eq!(got.parts.headers[header::HOST], proxy.addr.to_string());
    assert_eq!(&got.body[..], b"hello over h2");
    assert_eq!(got.parts.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn http2_authority_routes_and_becomes_the_host_header() {
    let (named_host, mut seen) = recording_agent(small_response).await;
    let other = Agent::named("generic").await;
    let table = sluice_api::RouteTable::new(
        vec![
            route("demo/host", Some("agents.example"), "/"),
            route("demo/generic", None, "/"),
        ],
        vec![
            pool("demo/generic", &[other.address()], 30_000),
            pool("demo/host", &[named_host.address()], 30_000),
        ],
    );
    let proxy = Proxy::with_table(table).await;

    // A raw h2c connection, so the authority can name a host other than the socket's.
    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://Agents.Example:8080/by-authority")
        .body(empty())
        .expect("request");
    let resp = within("h2 response", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"from the agent");

    let got = within("agent saw the request", seen.recv())
        .await
        .expect("one request");
    assert_eq!(got.parts.version, Version::HTTP_11);
    assert_eq!(got.parts.headers[header::HOST], "Agents.Example:8080");
    assert_eq!(got.parts.uri.path(), "/by-authority");
    assert_eq!(other.requests(), 0);
}
