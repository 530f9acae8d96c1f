//! A client connection counts once as having released its buffers when it is parked
//! and once when it ends, for the allocator to be trimmed after enough (the count is
//! the process's: this binary holds this one test).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use sluice_listener::ServerConfig;
use sluice_listener::memory::RELEASED;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::Server;

async fn handler(_req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

#[tokio::test(start_paused = true)]
async fn a_parked_and_then_closed_connection_counts_twice() {
    let header_read = Duration::from_secs(10);
    let server = Server::start(
        ServerConfig {
            header_read_timeout: header_read,
            ..ServerConfig::default()
        },
        "memory",
        handler,
    )
    .await;
    let before = RELEASED.pending();
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"ok") {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    // Parked in the same turn as it answered.
    let parked = server.metric("sluice_listener_connections_parked", "listener=\"memory\"");
    assert_eq!(parked, 1.0);
    assert_eq!(RELEASED.pending(), before + 1, "parked");
    // Closed by the server once the header-read timeout passes with no request.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("closed");
    assert_eq!(RELEASED.pending(), before + 2, "parked, then closed");
    server.stop().await;
}
