//! HTTPS to agents and backends outside the cluster, with real TLS handshakes against
//! throwaway certificates: the CA and the name the proxy verifies, HTTP/2 chosen by
//! ALPN, a client certificate, certificates refused with the reason in the 502, and a
//! backend by URL with its own `Host`, its injected credential and its name resolved
//! again once the DNS answer is older than the TTL.

mod support;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_listener::testing::{TestCa, TestCert};
use sluice_proxy::dns::{Lookup, Resolve};
use sluice_ratelimit::ManualClock;
use support::{Proxy, client, compile_yaml, empty, full, get, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What an agent saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    /// The target's authority (HTTP/2's `:authority`).
    authority: Option<String>,
    sni: Option<String>,
    client_certificate: bool,
    headers: http::HeaderMap,
}

/// An HTTPS agent: its certificate, the ALPN protocols it offers, the CA its clients'
/// certificates must come from (if it asks for one).
struct TlsAgent {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsAgent {
    async fn start(cert: &TestCert, alpn: &[&[u8]], client_ca: Option<&TestCa>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (handshakes.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, count, log) = (acceptor.clone(), count.clone(), log.clone());
                tokio::spawn(async move {
                    // A handshake the proxy refuses ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().map(str::to_owned);
                    let client_certificate = session.peer_certificates().is_some();
                    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        log.lock().unwrap().push(Seen {
                            version: req.version(),
                            authority: req.uri().authority().map(|a| a.as_str().to_owned()),
                            sni: sni.clone(),
                            client_certificate,
                            headers: req.headers().clone(),
                        });
                        let upgrade = (req.headers().get("upgrade")
                            == Some(&http::HeaderValue::from_static("websocket")))
                        .then(|| hyper::upgrade::on(&mut req));
                        async move { Ok::<_, io::Error>(answer(upgrade)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// `agent`, or for an upgrade `101` and then every byte read echoed back after `echo:`.
fn answer(upgrade: Option<hyper::upgrade::OnUpgrade>) -> Response<support::TestBody> {
    let Some(upgrade) = upgrade else {
        return Response::new(full("agent"));
    };
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 256];
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
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(empty())
        .unwrap()
}

/// A Secret in `demo` labelled for backends, with `entries` as `stringData`.
fn secret(name: &str, entries: &[(&str, &str)]) -> String {
    let data: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("  {k}: {}\n", serde_json::to_string(v).unwrap()))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\n\
         metadata: {{name: {name}, namespace: demo, labels: {{sluice.dev/upstream: \"\"}}}}\n\
         stringData:\n{}---\n",
        data.concat()
    )
}

/// Pool `demo/p` on `/` with one backend (flow-style YAML), after `secrets`.
fn table(secrets: &str, backend: &str) -> sluice_api::RouteTable {
    table_with(secrets, backend, "")
}

/// The same with one more line of `spec`.
fn table_with(secrets: &str, backend: &str, spec: &str) -> sluice_api::RouteTable {
    compile_yaml(&format!(
        "{secrets}apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: p, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /}}]\n  backends: [{backend}]\n  {spec}\n"
    ))
}

fn ca_secret(ca: &TestCa) -> String {
    secret("agents-ca", &[("ca.crt", &ca.pem)])
}

#[tokio::test]
async fn an_https_agent_is_reached_with_its_ca_and_name_over_h2_on_one_connection() {
    let ca = TestCa::new("agents");
    let agent = TlsAgent::start(&ca.leaf(&["agent.internal"]), &[b"h2", b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table(
        &ca_secret(&ca),
        &format!(
            "{{endpoints: [\"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}}}}}",
            agent.addr
        ),
    ))
    .await;
    let client = client();
    for _ in 0..3 {
        let reply = get(&client, &proxy.url("/v1/chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "agent");
    }
    let seen = agent.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{seen:?}"
    );
    assert_eq!(seen[0].sni.as_deref(), Some("agent.internal"));
    assert!(!seen[0].client_certificate);
    assert_eq!(
        agent.handshakes.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}

#[tokio::test]
async fn an_agent_that_offers_only_http1_gets_http1() {
    let ca = TestCa::new("agents");
    let agent = TlsAgent::start(&ca.leaf(&["agent.internal"]), &[b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table(
        &ca_secret(&ca),
        &format!(
            "{{endpoints: [\"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}}}}}",
            agent.addr
        ),
    ))
    .await;
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(agent.seen()[0].version, Version::HTTP_11);
}

/// The proxy's answer when the agent presents `cert` and the pool trusts `trusted`
/// under the name `agent.internal`.
async fn refused(cert: &TestCert, trusted: &TestCa) -> (support::Reply, TlsAgent) {
    let agent = TlsAgent::start(cert, &[b"h2", b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table(
        &ca_secret(trusted),
        &format!(
            "{{endpoints: [\"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}}}}}",
            agent.addr
        ),
    ))
    .await;
    let reply = get(&client(), &proxy.url("/")).await;
    (reply, agent)
}

fn tls_error(reply: &support::Reply) -> String {
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.error_code(), "upstream_tls");
    reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_with_the_reason() {
    let ca = TestCa::new("agents");
    let (reply, agent) = refused(&ca.leaf(&["other.internal"]), &ca).await;
    let message = tls_error(&reply);
    assert!(message.contains("not valid for name"), "{message}");
    assert!(agent.seen().is_empty(), "nothing reached the agent");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_with_the_reason() {
    let ca = TestCa::new("agents");
    let (reply, agent) = refused(&ca.expired_leaf(&["agent.internal"]), &ca).await;
    let message = tls_error(&reply);
    assert!(message.contains("expired"), "{message}");
    assert!(agent.seen().is_empty());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (ca, other) = (TestCa::new("agents"), TestCa::new("someone else"));
    let (reply, agent) = refused(&other.leaf(&["agent.internal"]), &ca).await;
    let message = tls_error(&reply);
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(agent.seen().is_empty());
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_certificate_nothing_vouches_for() {
    let stranger = TestCa::new("nobody");
    let agent = TlsAgent::start(&stranger.leaf(&["whatever"]), &[b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table(
        "",
        &format!(
            "{{endpoints: [\"{}\"], tls: {{insecureSkipVerify: true}}}}",
            agent.addr
        ),
    ))
    .await;
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn the_client_certificate_of_the_secret_is_presented_to_an_agent_that_asks() {
    let (ca, clients) = (TestCa::new("agents"), TestCa::new("proxies"));
    let agent = TlsAgent::start(
        &ca.leaf(&["agent.internal"]),
        &[b"h2", b"http/1.1"],
        Some(&clients),
    )
    .await;
    let proxy_cert = clients.leaf(&["sluice-proxy"]);
    let secrets = ca_secret(&ca)
        + &secret(
            "proxy-client",
            &[
                ("tls.crt", &proxy_cert.cert_pem),
                ("tls.key", &proxy_cert.key_pem),
            ],
        );
    let backend = |with_cert: bool| {
        format!(
            "{{endpoints: [\"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}{}}}}}",
            agent.addr,
            if with_cert {
                ", clientCertificateSecretRef: {name: proxy-client}"
            } else {
                ""
            }
        )
    };
    let proxy = Proxy::with_table(table(&secrets, &backend(true))).await;
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(agent.seen()[0].client_certificate);

    // Without it, the agent refuses the connection: nothing reaches it.
    let proxy = Proxy::with_table(table(&secrets, &backend(false))).await;
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(agent.seen().len(), 1);
}

/// Resolves names from a map the test changes, counting the lookups.
#[derive(Debug, Default)]
struct MapResolver {
    names: Mutex<HashMap<String, IpAddr>>,
    lookups: AtomicUsize,
}

impl MapResolver {
    fn set(&self, name: &str, ip: IpAddr) {
        self.names.lock().unwrap().insert(name.to_owned(), ip);
    }
}

impl Resolve for MapResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.names.lock().unwrap().get(host).copied();
        Box::pin(async move {
            found
                .map(|ip| vec![ip])
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
        })
    }
}

#[tokio::test]
async fn a_backend_by_url_gets_its_host_and_the_secret_credential_in_place_of_the_callers() {
    let ca = TestCa::new("provider");
    let agent = TlsAgent::start(
        &ca.leaf(&["api.provider.test"]),
        &[b"h2", b"http/1.1"],
        None,
    )
    .await;
    let resolver = Arc::new(MapResolver::default());
    resolver.set("api.provider.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = agent.addr.port();
    let secrets = ca_secret(&ca)
        + &secret("provider", &[("api-key", "sk-upstream-0123456789\n")])
        + "apiVersion: v1\nkind: Secret\n\
           metadata: {name: alice, namespace: demo, labels: {sluice.dev/consumer: alice}}\n\
           stringData: {api-key: alice-key-0123456789}\n---\n";
    let table = table_with(
        &secrets,
        &format!(
            "{{url: \"https://api.provider.test:{port}\", tls: {{caSecretRef: {{name: agents-ca}}}}, \
             auth: {{secretRef: {{name: provider}}, prefix: \"Bearer \"}}}}"
        ),
        "access: {consumers: [alice]}",
    );
    let proxy = Proxy::with_store(|b| b.resolver(resolver.clone()), table.clone()).await;

    for (header, value) in [
        ("authorization", "Bearer alice-key-0123456789"),
        ("x-api-key", "alice-key-0123456789"),
    ] {
        let req = Request::get(proxy.url("/v1/models"))
            .header(header, value)
            .body(empty())
            .unwrap();
        let reply = send(&client(), req).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let all = agent.seen();
    assert_eq!(all.len(), 2);
    for seen in &all {
        assert_eq!(
            seen.headers
                .get_all("authorization")
                .iter()
                .collect::<Vec<_>>(),
            ["Bearer sk-upstream-0123456789"]
        );
        assert!(seen.headers.get("x-api-key").is_none());
        // Who the caller is means nothing outside the cluster.
        assert!(seen.headers.get("x-sluice-consumer").is_none(), "{seen:?}");
    }
    let seen = &all[0];
    assert_eq!(seen.sni.as_deref(), Some("api.provider.test"));
    let expected = format!("api.provider.test:{port}");
    let host = seen.headers.get("host").map(|h| h.to_str().unwrap());
    assert!(
        host.is_some() || seen.authority.is_some(),
        "no host at all: {seen:?}"
    );
    for said in [host, seen.authority.as_deref()].into_iter().flatten() {
        assert_eq!(said, expected, "{seen:?}");
    }

    // The credential never shows in what the proxy displays.
    let displayed = serde_json::to_string(&proxy.store.load().unwrap().table.redacted()).unwrap();
    assert!(!displayed.contains("sk-upstream"), "{displayed}");
    assert!(!format!("{table:?}").contains("sk-upstream"));
}

#[tokio::test]
async fn a_backend_by_url_is_sent_its_host_over_http1() {
    let agent = support::Agent::start(|req: Request<hyper::body::Incoming>| async move {
        let host = req
            .headers()
            .get("host")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        Response::new(full(host))
    })
    .await;
    let resolver = Arc::new(MapResolver::default());
    resolver.set("agent.example.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = agent.addr.port();
    let proxy = Proxy::with_store(
        |b| b.resolver(resolver.clone()),
        table(
            "",
            &format!("{{url: \"http://agent.example.test:{port}\"}}"),
        ),
    )
    .await;
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), format!("agent.example.test:{port}"));
}

#[tokio::test]
async fn a_backend_name_is_resolved_again_once_its_answer_is_older_than_the_ttl() {
    // Two agents on one port, on 127.0.0.1 and 127.0.0.2: the name moves between them.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let a = serve_named(SocketAddr::from(([127, 0, 0, 1], port)), "a").await;
    let b = serve_named(SocketAddr::from(([127, 0, 0, 2], port)), "b").await;

    let resolver = Arc::new(MapResolver::default());
    resolver.set("agent.moving.test", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    let clock = Arc::new(ManualClock::new(0));
    let proxy = Proxy::with_store(
        |builder| {
            builder
                .resolver(resolver.clone())
                .dns_ttl(Duration::from_secs(30))
                .clock(clock.clone())
        },
        table("", &format!("{{url: \"http://agent.moving.test:{port}\"}}")),
    )
    .await;
    let client = client();

    assert_eq!(get(&client, &proxy.url("/")).await.text(), "a");
    resolver.set("agent.moving.test", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(
        get(&client, &proxy.url("/")).await.text(),
        "a",
        "the answer is used for the TTL"
    );
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_millis(1));
    assert_eq!(get(&client, &proxy.url("/")).await.text(), "b");
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);
    assert_eq!((a.connections(), b.connections()), (2, 1));
}

/// A cleartext agent bound to `at` answering its `name`, closing each connection.
async fn serve_named(at: SocketAddr, name: &'static str) -> NamedAgent {
    let listener = TcpListener::bind(at).await.expect("bind");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, io::Error>(
                        Response::builder()
                            .header("connection", "close")
                            .body(full(name))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    NamedAgent { connections }
}

struct NamedAgent {
    connections: Arc<AtomicUsize>,
}

impl NamedAgent {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_refused_certificate_is_retried_on_another_endpoint() {
    let ca = TestCa::new("agents");
    let good = TlsAgent::start(&ca.leaf(&["agent.internal"]), &[b"http/1.1"], None).await;
    let expired =
        TlsAgent::start(&ca.expired_leaf(&["agent.internal"]), &[b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table_with(
        &ca_secret(&ca),
        &format!(
            "{{endpoints: [\"{}\", \"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}}}}}",
            good.addr, expired.addr
        ),
        "retries: {attempts: 1}",
    ))
    .await;
    let client = client();
    for _ in 0..4 {
        let reply = get(&client, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(good.seen().len(), 4);
    assert!(expired.seen().is_empty());
    assert!(
        proxy
            .metric("sluice_retries_total{pool=\"demo/p\",result=\"sent\"}")
            .is_some_and(|n| n >= 1.0),
        "the expired endpoint was tried and the request retried"
    );
}

#[tokio::test]
async fn an_upgrade_to_an_agent_that_prefers_h2_goes_over_http1() {
    let ca = TestCa::new("agents");
    let agent = TlsAgent::start(&ca.leaf(&["agent.internal"]), &[b"h2", b"http/1.1"], None).await;
    let proxy = Proxy::with_table(table(
        &ca_secret(&ca),
        &format!(
            "{{endpoints: [\"{}\"], tls: {{sni: agent.internal, caSecretRef: {{name: agents-ca}}}}}}",
            agent.addr
        ),
    ))
    .await;
    // Plain requests take HTTP/2...
    assert_eq!(get(&client(), &proxy.url("/")).await.status, StatusCode::OK);
    assert_eq!(agent.seen()[0].version, Version::HTTP_2);

    // ...an upgrade cannot, and is sent over HTTP/1.1.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = support::within("the 101", stream.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(agent.seen()[1].version, Version::HTTP_11);

    stream.write_all(b"hi").await.unwrap();
    let mut echoed = [0u8; 7];
    support::within("the echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"echo:hi");
}
