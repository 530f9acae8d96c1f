//! Cleartext HTTP/1.1 connections parked between requests (at once, or after
//! `PARK_AFTER` for a client that came back quickly): the client sees an ordinary
//! keep-alive connection (one request after another, pipelined requests, a request
//! head in pieces after a parked wait, HTTP/1.0 keep-alive, an upgrade after a parked
//! wait), the parked connections are counted, closed on time and at once when the
//! listener drains (as is one that has sent nothing yet), and a client that asks to
//! close is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_listener::{PARK_AFTER, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::Server;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const PARKED: &str = "sluice_listener_connections_parked";
const LABELS: &str = "listener=\"park\"";

/// Answers with the request's path; `/upgrade` switches to an echo of raw bytes.
async fn handler(mut req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    if req.uri().path() == "/upgrade" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "echo")
            .body(Empty::new().boxed())
            .expect("response");
    }
    let path = req.uri().path().to_owned();
    Response::new(Full::new(Bytes::from(path)).boxed())
}

async fn start(config: ServerConfig) -> Server {
    Server::start(config, "park", handler).await
}

/// Lets the server's tasks run until they all wait (time is paused: the sleep ends
/// only once nothing else can run).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Reads one response whose body is `body`, as its last bytes.
async fn read_response(conn: &mut TcpStream, body: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(body.as_bytes()) {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).expect("text")
}

/// In real time: a request head in pieces leaves the server waiting on the socket
/// while the test waits on its own, and paused time would jump to the server's
/// deadline meanwhile. The server parks in the same turn as it answers, so a client
/// that has read the answer sees the connection parked.
#[tokio::test]
async fn a_parked_connection_serves_what_comes_next() {
    let server = start(ServerConfig::default()).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        read_response(&mut conn, "/one")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(
        server.metric(PARKED, LABELS),
        1.0,
        "parked after its answer"
    );

    // Three requests in one write: answered in order.
    conn.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .expect("write");
    let answers = read_response(&mut conn, "/c").await;
    let (a, b) = (answers.find("/a"), answers.find("/b"));
    assert!(a.is_some() && a < b, "{answers}");
    assert_eq!(
        server.metric(PARKED, LABELS),
        0.0,
        "back at once: left with hyper for a while"
    );

    // A head in two pieces: hyper holds the first while it waits for the rest (a
    // connection is parked only once its hyper connection has answered a request).
    conn.write_all(b"GET /pieces HTTP/1.1\r\nho")
        .await
        .expect("write");
    tokio::task::yield_now().await;
    conn.write_all(b"st: x\r\n\r\n").await.expect("write");
    assert!(
        read_response(&mut conn, "/pieces")
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.stop().await;
}

/// A client that comes back within `PARK_AFTER` of being parked is parked again only
/// once it has waited that long (within twice it); one that comes back later is
/// parked as soon as it is answered.
#[tokio::test(start_paused = true)]
async fn a_client_that_comes_back_soon_is_parked_after_a_while() {
    let server = start(ServerConfig::default()).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let mut ask = async |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        read_response(&mut conn, path).await;
        server.metric(PARKED, LABELS)
    };
    assert_eq!(ask("/first").await, 1.0, "a first wait is parked at once");
    assert_eq!(ask("/soon").await, 0.0, "back at once");
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(server.metric(PARKED, LABELS), 1.0, "parked after a while");
    tokio::time::sleep(PARK_AFTER).await;
    assert_eq!(ask("/later").await, 1.0, "back late: parked at once");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn http_1_0_keep_alive_survives_parking_and_close_is_honoured() {
    let server = start(ServerConfig::default()).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    for path in ["/first", "/second"] {
        let req = format!("GET {path} HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        let answer = read_response(&mut conn, path).await;
        assert!(answer.contains("connection: keep-alive"), "{answer}");
        settle().await;
    }
    conn.write_all(b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut rest = String::new();
    conn.read_to_string(&mut rest)
        .await
        .expect("read to the end");
    assert!(rest.ends_with("/last"), "answered, then closed: {rest}");
    assert_eq!(server.metric(PARKED, LABELS), 0.0);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_after_a_parked_wait_gets_the_stream() {
    let server = start(ServerConfig::default()).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /before HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(&mut conn, "/before").await;
    settle().await;
    assert_eq!(server.metric(PARKED, LABELS), 1.0);
    conn.write_all(
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let answer = read_response(&mut conn, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    conn.write_all(b"raw bytes").await.expect("write");
    let mut echoed = [0u8; 9];
    conn.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"raw bytes");
    assert_eq!(
        server.metric(PARKED, LABELS),
        0.0,
        "an upgraded stream is not parked"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn parked_connections_close_on_time_and_when_the_listener_drains() {
    let header_read = Duration::from_secs(10);
    let server = start(ServerConfig {
        header_read_timeout: header_read,
        idle_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let mut early = TcpStream::connect(server.addr).await.expect("connect");
    early
        .write_all(b"GET /early HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(&mut early, "/early").await;
    let answered = tokio::time::Instant::now();
    let mut rest = Vec::new();
    early.read_to_end(&mut rest).await.expect("closed");
    assert!(rest.is_empty());
    assert!(
        answered.elapsed() >= header_read && answered.elapsed() < header_read * 2,
        "closed after the header-read timeout, the shorter: {:?}",
        answered.elapsed()
    );
    let idle = "listener=\"park\",phase=\"idle\"";
    assert_eq!(
        server.metric("sluice_listener_connections_timed_out_total", idle),
        1.0
    );

    let mut late = TcpStream::connect(server.addr).await.expect("connect");
    late.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(&mut late, "/late").await;
    settle().await;
    assert_eq!(server.metric(PARKED, LABELS), 1.0);
    // A connection that has sent nothing yet goes the same way.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    settle().await;
    let drained = tokio::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    for conn in [&mut late, &mut silent] {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.expect("closed");
    }
    assert_eq!(
        drained.elapsed(),
        Duration::ZERO,
        "closed at once, not drained"
    );
    stopping.await.expect("stopped");
}

/// A connection with hyper (its client came back at once with half a head, which
/// hyper holds while it waits for the rest) is held to the configured header-read
/// timeout, not to hyper's own default of 30 seconds.
#[tokio::test(start_paused = true)]
async fn half_a_head_waits_out_the_configured_header_read_timeout() {
    let header_read = Duration::from_secs(60);
    let server = start(ServerConfig {
        header_read_timeout: header_read,
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(&mut conn, "/first").await;
    let answered = tokio::time::Instant::now();
    conn.write_all(b"GET /half HTTP/1.1\r\nho")
        .await
        .expect("write");
    let mut rest = Vec::new();
    // A reset is a close too.
    let _ = conn.read_to_end(&mut rest).await;
    assert!(
        answered.elapsed() >= header_read && answered.elapsed() < header_read + PARK_AFTER,
        "closed after {:?}",
        answered.elapsed()
    );
    server.stop().await;
}
