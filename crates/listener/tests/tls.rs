//! TLS termination over real handshakes: the certificate chosen by SNI, ALPN `h2` and
//! `http/1.1` feeding HTTP/2 and HTTP/1.1, rotated files picked up (and bad ones
//! refused, the certificate in use kept), and a stalled handshake cut.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_listener::testing::{TestCa, write_atomically};
use sluice_listener::{CertificateFiles, PeerCertificates, ServerConfig, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod support;
use support::Server;

async fn handler(req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
    let tls = req.extensions().get::<sluice_listener::OverTls>().is_some();
    let presented = req
        .extensions()
        .get::<PeerCertificates>()
        .map(|c| format!(" presenting {}", c.chain().len()))
        .unwrap_or_default();
    Response::new(Full::new(Bytes::from(format!(
        "{:?}{}{presented}",
        req.version(),
        if tls { " over TLS" } else { "" }
    ))))
}

async fn start(tls: TlsConfig, config: ServerConfig) -> Server {
    let config = ServerConfig {
        tls: Some(tls),
        ..config
    };
    Server::start(config, "tls", handler).await
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Handshakes with `addr` asking for `name`, trusting `ca`: the certificate served and
/// the protocol agreed.
async fn handshake(
    ca: &TestCa,
    addr: SocketAddr,
    name: &str,
    alpn: &[&[u8]],
) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(ca.client_config(alpn));
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let served = conn.peer_certificates().expect("a certificate")[0].clone();
    Ok((served, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_and_alpn_picks_the_http_version() {
    let dir = temp_dir("sni");
    let ca = TestCa::new("test CA");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["*.b.test", "b.test"]);
    let tls = TlsConfig::new(
        vec![a.write(&dir, "a"), b.write(&dir, "b")],
        Duration::from_secs(3600),
    )
    .expect("certificates load");
    let server = start(tls, ServerConfig::default()).await;

    let (served, alpn) = handshake(&ca, server.addr, "a.test", &[b"h2", b"http/1.1"])
        .await
        .expect("a.test");
    assert_eq!(served, a.der);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 preferred");
    for name in ["x.b.test", "b.test"] {
        let (served, alpn) = handshake(&ca, server.addr, name, &[b"http/1.1"])
            .await
            .expect(name);
        assert_eq!(served, b.der, "{name}");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    // A name no certificate holds gets the first one, which the client refuses.
    let refused = handshake(&ca, server.addr, "c.test", &[]).await;
    assert!(refused.is_err(), "{refused:?}");

    // Requests: HTTP/2 by ALPN, and HTTP/1.1.
    for (alpn, version) in [
        (&[&b"h2"[..], b"http/1.1"][..], Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], Version::HTTP_11),
    ] {
        let answer = request_over(&ca, server.addr, "a.test", alpn).await;
        assert_eq!(answer, format!("{version:?} over TLS"));
    }
    assert!(
        server.metric(
            "sluice_listener_tls_handshakes_total",
            "listener=\"tls\",result=\"ok\""
        ) >= 5.0
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// One GET over a TLS connection to `addr` for `name`, speaking what ALPN agreed: the
/// body.
async fn request_over(ca: &TestCa, addr: SocketAddr, name: &str, alpn: &[&[u8]]) -> String {
    request_with(ca.client_config(alpn), addr, name).await
}

/// One GET over a TLS connection to `addr` for `name` made with `config`: the body.
async fn request_with(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let connector = TlsConnector::from(config);
    let server_name = ServerName::try_from(name.to_owned()).expect("a server name");
    let tls = connector
        .connect(server_name, tcp)
        .await
        .expect("handshake");
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = Request::get(format!("https://{name}/"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2");
        tokio::spawn(conn);
        send.send_request(req).await.expect("response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
        tokio::spawn(conn);
        send.send_request(req).await.expect("response")
    };
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// New files are served after the reload interval; files that do not load are
/// refused, counted once, and the certificate in use stays.
#[tokio::test(start_paused = true)]
async fn rotated_certificates_are_picked_up_and_bad_ones_refused() {
    let dir = temp_dir("rotation");
    let ca = TestCa::new("test CA");
    let first = ca.leaf(&["a.test"]);
    let files = first.write(&dir, "a");
    let interval = Duration::from_secs(10);
    let tls = TlsConfig::new(vec![files.clone()], interval).expect("loads");
    let server = start(tls, ServerConfig::default()).await;
    let served = || async {
        handshake(&ca, server.addr, "a.test", &[])
            .await
            .expect("handshake")
            .0
    };
    assert_eq!(served().await, first.der);

    let second = ca.leaf(&["a.test"]);
    second.write(&dir, "a");
    assert_eq!(served().await, first.der, "not before the interval");
    tokio::time::sleep(interval + Duration::from_millis(1)).await;
    assert_eq!(served().await, second.der, "rotated");
    let reloads = |result: &str| {
        server.metric(
            "sluice_listener_tls_reloads_total",
            &format!("listener=\"tls\",result=\"{result}\""),
        )
    };
    assert_eq!(reloads("ok"), 1.0);

    // A key that belongs to another certificate, then garbage: refused once each.
    write_atomically(&files.key, &ca.leaf(&["a.test"]).key_pem);
    tokio::time::sleep(interval * 3).await;
    write_atomically(&files.cert, "not a certificate");
    tokio::time::sleep(interval * 3).await;
    assert_eq!(served().await, second.der, "the certificate in use stays");
    assert_eq!(reloads("failed"), 2.0);
    assert_eq!(reloads("ok"), 1.0);

    let third = ca.leaf(&["a.test"]);
    third.write(&dir, "a");
    tokio::time::sleep(interval).await;
    assert_eq!(served().await, third.der, "good files again");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that connects and never finishes its handshake (nothing sent, or half a
/// ClientHello) is cut after the handshake timeout, and counted.
#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_is_cut() {
    let dir = temp_dir("stalled");
    let ca = TestCa::new("test CA");
    let tls = TlsConfig::new(
        vec![ca.leaf(&["a.test"]).write(&dir, "a")],
        Duration::from_secs(3600),
    )
    .expect("loads");
    let timeout = Duration::from_secs(5);
    let server = start(
        tls,
        ServerConfig {
            tls_handshake_timeout: timeout,
            ..ServerConfig::default()
        },
    )
    .await;
    // A TLS record header announcing a ClientHello, and no more.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(first).await.expect("write");
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
        assert!(
            started.elapsed() >= timeout,
            "cut after {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < timeout * 2,
            "cut after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        server.metric(
            "sluice_listener_connections_timed_out_total",
            "listener=\"tls\",phase=\"tls_handshake\""
        ),
        2.0
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn files_that_do_not_load_are_refused_at_start() {
    let dir = temp_dir("refused");
    let ca = TestCa::new("test CA");
    let good = ca.leaf(&["a.test"]).write(&dir, "good");
    let other = ca.leaf(&["a.test"]).write(&dir, "other");
    let mismatched = CertificateFiles {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let missing = CertificateFiles {
        cert: dir.join("missing.crt"),
        key: good.key.clone(),
    };
    let swapped = CertificateFiles {
        cert: good.key.clone(),
        key: good.cert.clone(),
    };
    let hour = Duration::from_secs(3600);
    let err = |files: Vec<CertificateFiles>| {
        TlsConfig::new(files, hour)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(vec![]).contains("no certificate"));
    assert!(
        err(vec![mismatched.clone()]).contains("other.key"),
        "{}",
        err(vec![mismatched])
    );
    assert!(err(vec![missing]).contains("missing.crt"));
    assert!(err(vec![swapped]).contains("good.key"));
    assert!(TlsConfig::new(vec![good], hour).is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

/// Client certificates are asked for once CAs are given, never required, and carried
/// to each request unverified (a certificate of another CA too); with no CA, none is
/// asked for.
#[tokio::test]
async fn client_certificates_are_requested_optional_and_carried_to_requests() {
    let dir = temp_dir("client-certs");
    let ca = TestCa::new("test CA");
    let clients = TestCa::new("clients CA");
    let other = TestCa::new("other CA");
    let files = ca.leaf(&["a.test"]).write(&dir, "a");
    let tls = TlsConfig::new(vec![files], Duration::from_secs(3600)).expect("loads");
    let server = start(tls.clone(), ServerConfig::default()).await;
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let alice = clients.client_leaf("alice", &["alice.test"], &[]);
    let mallory = other.client_leaf("mallory", &[], &[]);

    // Not asked for: a client with a certificate does not send it.
    assert!(!tls.requests_client_certificates());
    let answer = request_with(
        ca.client_config_presenting(alpn, &alice),
        server.addr,
        "a.test",
    )
    .await;
    assert_eq!(answer, "HTTP/2.0 over TLS");

    tls.request_client_certificates(std::slice::from_ref(clients.der()))
        .expect("asks");
    assert!(tls.requests_client_certificates());
    for alpn in [alpn, &[&b"http/1.1"[..]][..]] {
        let version = if alpn.len() == 2 {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        let answer = request_with(
            ca.client_config_presenting(alpn, &alice),
            server.addr,
            "a.test",
        )
        .await;
        assert_eq!(answer, format!("{version} over TLS presenting 1"));
        // Optional: no certificate, served all the same.
        let answer = request_over(&ca, server.addr, "a.test", alpn).await;
        assert_eq!(answer, format!("{version} over TLS"));
        // Another CA's certificate reaches the request, for its admission to refuse.
        let answer = request_with(
            ca.client_config_presenting(alpn, &mallory),
            server.addr,
            "a.test",
        )
        .await;
        assert_eq!(answer, format!("{version} over TLS presenting 1"));
    }

    // No CA: no longer asked for.
    tls.request_client_certificates(&[]).expect("stops asking");
    let answer = request_with(
        ca.client_config_presenting(alpn, &alice),
        server.addr,
        "a.test",
    )
    .await;
    assert_eq!(answer, "HTTP/2.0 over TLS");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
