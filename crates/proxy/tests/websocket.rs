//! Protocol upgrades (WebSocket) pass through the proxy: the client's `GET` with
//! `Connection: Upgrade` and `Upgrade: websocket` reaches the agent with both headers,
//! the agent's `101 Switching Protocols` reaches the client with its `Upgrade` header,
//! and bytes then flow both ways over the spliced connections.
//!
//! The client speaks raw HTTP/1.1 over TCP so that every byte on the wire is the
//! test's; no WebSocket framing is needed for the proxy, which only splices bytes.

mod support;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{Agent, Proxy, catch_all, empty, pool, settle, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the request asks to upgrade to WebSocket.
fn asks_websocket(req: &Request<Incoming>) -> bool {
    let connection = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    connection.split(',').any(|t| t.trim() == "upgrade")
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v == "websocket")
}

/// An agent that switches to the upgraded connection and echoes every byte it reads
/// back, prefixed with `echo:`; a request that does not ask to upgrade gets 400.
async fn echo_agent() -> Agent {
    Agent::start(|mut req: Request<Incoming>| async move {
        if !asks_websocket(&req) {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(support::full("expected an upgrade"))
                .expect("response");
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .expect("response")
    })
    .await
}

/// Reads until the end of a response head and returns it.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert_eq!(
            n,
            1,
            "connection closed in the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

/// Sends `message` and reads the echo.
async fn round_trip(stream: &mut TcpStream, message: &str) -> String {
    stream.write_all(message.as_bytes()).await.expect("write");
    let expected = format!("echo:{message}");
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).await.expect("read echo");
    String::from_utf8(got).expect("utf-8")
}

/// Connects to `proxy`, asks for a WebSocket upgrade, and returns the connection and
/// the response head.
async fn open_websocket(proxy: &Proxy) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = "GET /ws HTTP/1.1\r\nHost: sluice.test\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let head = within("the 101 head", read_head(&mut stream)).await;
    (stream, head)
}

#[tokio::test]
async fn a_websocket_upgrade_passes_through_and_bytes_flow_both_ways() {
    let agent = echo_agent().await;
    let proxy = Proxy::with_table(catch_all(pool("demo/ws", &[agent.address()], 30_000))).await;

    let (mut stream, head) = open_websocket(&proxy).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 101"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(lower.contains("\r\nsec-websocket-accept: "), "{head}");

    for message in ["hello", "second message", "third"] {
        let echoed = within("echo through the proxy", round_trip(&mut stream, message)).await;
        assert_eq!(echoed, format!("echo:{message}"));
    }
    assert_eq!(agent.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_websocket_occupies_its_endpoint_until_it_closes() {
    let agent = echo_agent().await;
    let proxy = Proxy::with_table(catch_all(pool("demo/ws", &[agent.address()], 30_000))).await;
    let in_flight = format!(
        "sluice_endpoint_in_flight{{endpoint=\"{}\",pool=\"demo/ws\"}}",
        agent.address()
    );

    let (mut stream, head) = open_websocket(&proxy).await;
    assert!(
        head.to_ascii_lowercase().starts_with("http/1.1 101"),
        "{head}"
    );
    let echoed = within("echo through the proxy", round_trip(&mut stream, "hi")).await;
    assert_eq!(echoed, "echo:hi");
    // The 101 response has ended; the connection is still open and counts.
    assert_eq!(proxy.metric(&in_flight), Some(1.0));

    drop(stream);
    settle().await;
    assert_eq!(
        proxy.metric(&in_flight),
        Some(0.0),
        "the closed connection freed its endpoint"
    );
}
