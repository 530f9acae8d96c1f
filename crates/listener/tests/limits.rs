//! What a listener lets connections cost: silent connections closed, caps in all and
//! per client address enforced and counted, idle connections closed (HTTP/1.1 and
//! HTTP/2) while a long response is not.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_listener::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;
use support::Server;

type Body = BoxBody<Bytes, Infallible>;

async fn handler(req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    if req.uri().path() == "/forever" {
        let frames = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        return Response::new(BodyExt::boxed(StreamBody::new(frames)));
    }
    Response::new(Full::new(Bytes::from_static(b"ok")).boxed())
}

async fn start(config: ServerConfig) -> Server {
    Server::start(config, "test", handler).await
}

/// Whether the server closed `conn` (end of stream or reset) rather than leaving it
/// open; waits for it at most `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A connection from `from` (an address of 127.0.0.0/8) to `addr`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Silent connections by the hundred: every one is closed once the header-read timeout
/// has passed, and counted.
#[tokio::test(start_paused = true)]
async fn many_silent_connections_are_all_closed() {
    let timeout = Duration::from_secs(10);
    let server = start(ServerConfig {
        header_read_timeout: timeout,
        ..ServerConfig::default()
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..500 {
        conns.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Once every connection has been accepted, nothing closes any before the timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.metric("sluice_listener_connections_open", "listener=\"test\""),
        500.0
    );
    for conn in &mut conns {
        assert!(!closed_within(conn, Duration::ZERO).await, "closed early");
    }
    tokio::time::sleep(timeout).await;
    for conn in &mut conns {
        assert!(
            closed_within(conn, Duration::from_secs(1)).await,
            "still open"
        );
    }
    let timed_out = "listener=\"test\",phase=\"first_bytes\"";
    assert_eq!(
        server.metric("sluice_listener_connections_timed_out_total", timed_out),
        500.0
    );
    assert_eq!(
        server.metric("sluice_listener_connections_open", "listener=\"test\""),
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_listener_cap_are_closed_and_counted() {
    let server = start(ServerConfig {
        max_connections: NonZeroUsize::new(2),
        ..ServerConfig::default()
    })
    .await;
    let mut held = vec![
        TcpStream::connect(server.addr).await.expect("first"),
        TcpStream::connect(server.addr).await.expect("second"),
    ];
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    assert!(closed_within(&mut third, Duration::from_secs(10)).await);
    let refused = "listener=\"test\",reason=\"max_connections\"";
    assert_eq!(
        server.metric("sluice_listener_connections_refused_total", refused),
        1.0
    );
    // A held connection still works, and once one closes there is room again.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    held[0].read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held.remove(0));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = format!("http://{}/", server.addr);
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The server notices the close a moment later.
            if let Ok(resp) = client.get(url.parse().expect("url")).await {
                return resp;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("served once there is room");
    assert_eq!(resp.status(), 200);
    // The two held and the client's: attempts made before the server saw the close
    // were refused, not accepted.
    assert_eq!(
        server.metric(
            "sluice_listener_connections_accepted_total",
            "listener=\"test\""
        ),
        3.0
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_client_cap_are_closed_and_counted() {
    let server = start(ServerConfig {
        max_connections_per_client: NonZeroUsize::new(2),
        ..ServerConfig::default()
    })
    .await;
    let _held = [
        connect_from("127.0.0.1", server.addr).await,
        connect_from("127.0.0.1", server.addr).await,
    ];
    let mut third = connect_from("127.0.0.1", server.addr).await;
    assert!(closed_within(&mut third, Duration::from_secs(10)).await);
    let mut other = connect_from("127.0.0.2", server.addr).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another client is served: {answer}"
    );
    let refused = "listener=\"test\",reason=\"max_connections_per_client\"";
    assert_eq!(
        server.metric("sluice_listener_connections_refused_total", refused),
        1.0
    );
    assert_eq!(
        server.metric(
            "sluice_listener_connections_accepted_total",
            "listener=\"test\""
        ),
        3.0
    );
    server.stop().await;
}

/// A kept-alive connection, HTTP/1.1 or HTTP/2, that sends nothing after its request
/// is closed after the idle timeout; one busy with a long response is not.
#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let idle = Duration::from_secs(20);
    let server = start(ServerConfig {
        idle_timeout: idle,
        header_read_timeout: Duration::from_secs(300),
        h2_keep_alive: Duration::from_secs(300),
        ..ServerConfig::default()
    })
    .await;
    // HTTP/1.1: one request, then silence.
    let mut h1 = TcpStream::connect(server.addr).await.expect("connect");
    h1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    // HTTP/2: one request, then silence (the client answers pings, as clients do).
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(server.addr).await.expect("connect"));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2");
    let mut h2_conn = tokio::spawn(conn);
    let req = Request::get("http://x/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    h2.send_request(req).await.expect("answer");
    // A long response keeps its connection.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(
            format!("http://{}/forever", server.addr)
                .parse()
                .expect("url"),
        )
        .await
        .expect("answer");
    let started = tokio::time::Instant::now();
    assert!(!closed_within(&mut h1, idle / 2).await);
    assert!(closed_within(&mut h1, idle).await, "HTTP/1.1 idle");
    let h2_closed = tokio::time::timeout(idle, &mut h2_conn).await;
    assert!(h2_closed.is_ok(), "HTTP/2 idle");
    assert!(started.elapsed() >= idle / 2);
    let mut body = resp.into_body();
    let next = tokio::time::timeout(idle * 5, body.frame()).await;
    assert!(next.is_err(), "the long response goes on: {next:?}");
    let phase = "listener=\"test\",phase=\"idle\"";
    assert_eq!(
        server.metric("sluice_listener_connections_timed_out_total", phase),
        2.0
    );
    drop(body);
    server.stop().await;
}
