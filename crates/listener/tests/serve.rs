//! The accept loop over real sockets: HTTP/1.1 and HTTP/2 on one listener, the
//! header-read timeout (from the first byte of a connection on), and graceful
//! shutdown with its drain deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_listener::{ServerConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// Answers `/` with the request's version and the peer's address; `/forever` with a
/// body that never ends.
async fn handler(req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if req.uri().path() == "/forever" {
        let frames = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        return Response::new(BodyExt::boxed(StreamBody::new(frames)));
    }
    let text = format!("{:?} {}", req.version(), peer.ip());
    Response::new(Full::new(Bytes::from(text)).boxed())
}

/// A server on `127.0.0.1:0`, stopped by sending on `stop`.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, config, handler, async {
        let _ = stopped.await;
    }));
    Server { addr, stop, task }
}

#[tokio::test]
async fn http1_and_http2_share_one_listener() {
    let server = start(ServerConfig::default()).await;
    let url = format!("http://{}/", server.addr);
    let h1 = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for (client, version) in [(h1, Version::HTTP_11), (h2, Version::HTTP_2)] {
        let resp = client.get(url.parse().expect("url")).await.expect("answer");
        assert_eq!(resp.version(), version);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, format!("{version:?} 127.0.0.1"));
    }
    let _ = server.stop.send(());
    server.task.await.expect("stops");
}

/// Connects, sends `first`, and reads until the server closes the connection: how
/// long that took, and what the server sent.
async fn cut_after(addr: SocketAddr, first: &[u8]) -> (Duration, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    conn.write_all(first).await.expect("write");
    let mut got = Vec::new();
    // A reset is a close too.
    let _ = conn.read_to_end(&mut got).await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

/// Half a request head, nothing at all, half of the HTTP/2 preface: each connection
/// is closed once the header-read timeout has passed, not before.
#[tokio::test(start_paused = true)]
async fn a_request_not_sent_in_time_closes_the_connection() {
    let timeout = Duration::from_secs(30);
    let server = start(ServerConfig {
        header_read_timeout: timeout,
        ..ServerConfig::default()
    })
    .await;
    for first in [
        &b"GET / HTTP/1.1\r\nhost: x\r\n"[..],
        b"",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let (after, answer) = cut_after(server.addr, first).await;
        assert!(after >= timeout, "{first:?}: closed after {after:?}");
        assert!(!answer.contains("200 OK"), "{first:?}: {answer}");
    }
    let _ = server.stop.send(());
    server.task.await.expect("stops");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_accepting_and_closes_what_outlives_the_drain() {
    let drain = Duration::from_secs(5);
    let server = start(ServerConfig {
        drain_timeout: drain,
        ..ServerConfig::default()
    })
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(
            format!("http://{}/forever", server.addr)
                .parse()
                .expect("url"),
        )
        .await
        .expect("answer");
    let mut body = resp.into_body();
    let started = tokio::time::Instant::now();
    let _ = server.stop.send(());
    server.task.await.expect("stops");
    assert!(
        started.elapsed() >= drain,
        "drained for {:?}",
        started.elapsed()
    );
    let end = body.frame().await;
    assert!(
        !matches!(end, Some(Ok(_))),
        "the endless body was cut: {end:?}"
    );
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

/// The worker that served a request, by [`sluice_listener::workers::current`].
async fn worker(req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let text = if req.uri().path() == "/forever" {
        let frames = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        return Response::new(BodyExt::boxed(StreamBody::new(frames)));
    } else {
        sluice_listener::workers::current().to_string()
    };
    Response::new(Full::new(Bytes::from(text)).boxed())
}

#[tokio::test]
async fn workers_accept_serve_share_the_cap_and_drain() {
    let workers = sluice_listener::Workers::start(std::num::NonZeroUsize::new(2).expect("2"))
        .expect("workers");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig {
        workers: Some(workers),
        max_connections: std::num::NonZeroUsize::new(3),
        drain_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let task = tokio::spawn(serve(listener, config, worker, async {
        let _ = stopped.await;
    }));
    // Three connections, each served by a worker (never by the test's runtime).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0; 256];
        let n = conn.read(&mut buf).await.expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        let worker = answer.rsplit("\r\n").next().expect("body");
        assert!(worker == "1" || worker == "2", "{answer}");
        held.push(conn);
    }
    // The cap is the listener's, not each worker's: a fourth is closed at once.
    let mut fourth = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), fourth.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // A response that never ends is cut by the drain, and every worker stops accepting.
    let mut forever = held.pop().expect("held");
    forever
        .write_all(b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0; 64];
    let _ = forever.read(&mut head).await.expect("head");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("drained in time")
        .expect("stops");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), forever.read_to_end(&mut rest))
        .await
        .expect("cut");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
