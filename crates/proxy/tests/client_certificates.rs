//! Pools that require client certificates (mutual TLS), over real handshakes with
//! throwaway CAs: the certificate's subject becomes the consumer (rate-limit key,
//! `x-sluice-consumer`, access log); no certificate, another CA's, another pool's CA's,
//! or a subject not listed is refused with its reason; a pool without the requirement
//! serves clients without certificates on the same listener; a new CA in a new table
//! is picked up; the plaintext listener cannot reach such a pool.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_api::RouteTable;
use sluice_listener::testing::{TestCa, TestCert};
use sluice_proxy::server::TlsConfig;
use support::{Agent, Proxy, client, compile_yaml, full, get};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The agent answers with the consumer the proxy identified.
async fn agent() -> Agent {
    Agent::start(|req: Request<hyper::body::Incoming>| async move {
        let consumer = req
            .headers()
            .get("x-sluice-consumer")
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .unwrap_or_default();
        Response::new(full(consumer))
    })
    .await
}

fn secret(name: &str, ca: &TestCa) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\n\
         metadata: {{name: {name}, namespace: demo, labels: {{sluice.dev/upstream: \"\"}}}}\n\
         stringData:\n  ca.crt: {}\n---\n",
        serde_json::to_string(&ca.pem).expect("JSON")
    )
}

fn pool(name: &str, prefix: &str, agent: &Agent, access: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: {prefix}}}]\n  \
         backends: [{{endpoints: [\"{}\"]}}]\n{access}---\n",
        agent.address()
    )
}

/// Pool `mtls` on `/mtls` requires certificates of `team_ca` (a SPIFFE ID or a DNS
/// name), one request an hour per consumer; pool `other` on `/other` requires those of
/// `other_ca` with common name `alice`; pool `open` on `/open` is public.
fn table(agent: &Agent, team_ca: &TestCa, other_ca: &TestCa) -> RouteTable {
    compile_yaml(&format!(
        "{}{}{}{}{}\
         apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
         metadata: {{name: per-consumer, namespace: demo}}\n\
         spec:\n  targetRefs: [{{kind: AgentPool, name: mtls}}]\n  key: {{type: Consumer}}\n  \
         tiers: [{{name: standard, limits: [{{requests: 1, period: 1h}}]}}]\n",
        secret("team-ca", team_ca),
        secret("other-ca", other_ca),
        pool(
            "mtls",
            "/mtls",
            agent,
            "  access:\n    clientCertificates:\n      caSecretRef: {name: team-ca}\n      \
             subjects: [\"spiffe://test/agent-a\", agent-b.test]\n"
        ),
        pool(
            "other",
            "/other",
            agent,
            "  access: {clientCertificates: {caSecretRef: {name: other-ca}, subjects: [alice]}}\n"
        ),
        pool("open", "/open", agent, ""),
    ))
}

struct Setup {
    proxy: Proxy,
    tls: TlsConfig,
    tls_addr: SocketAddr,
    server_ca: TestCa,
    log: support::LogLines,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(name: &str, table: RouteTable) -> Setup {
    let dir = std::env::temp_dir().join(format!("sluice-mtls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server_ca = TestCa::new("server CA");
    let files = server_ca.leaf(&["proxy.test"]).write(&dir, "proxy");
    let tls = TlsConfig::new(vec![files], Duration::from_secs(3600)).expect("loads");
    let (proxy, tls_addr, log) = Proxy::with_tls(table, tls.clone()).await;
    Setup {
        proxy,
        tls,
        tls_addr,
        server_ca,
        log,
        _dir: TempDir(dir),
    }
}

/// The status, the error code (for the proxy's own answers) or the body.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Ok(String),
    Refused(StatusCode, String),
}

impl Setup {
    /// `GET path` over a new TLS connection, presenting `cert` if given.
    async fn get(&self, path: &str, cert: Option<&TestCert>) -> Answer {
        let config = match cert {
            Some(cert) => self.server_ca.client_config_presenting(ALPN, cert),
            None => self.server_ca.client_config(ALPN),
        };
        request(config, self.tls_addr, path).await
    }
}

async fn request(config: Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("proxy.test").expect("name");
    let tls = support::within("handshake", TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = Request::get(format!("https://proxy.test{path}"))
        .header("host", "proxy.test")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = support::within("response", send.send_request(req))
        .await
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status == StatusCode::OK {
        Answer::Ok(text)
    } else {
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = json["error"]["code"].as_str().unwrap_or(&text).to_owned();
        Answer::Refused(status, code)
    }
}

fn refused(code: &str) -> Answer {
    Answer::Refused(StatusCode::FORBIDDEN, code.to_owned())
}

#[tokio::test]
async fn a_certificate_of_the_pools_ca_with_a_listed_subject_identifies_the_caller() {
    let agent = agent().await;
    let (team_ca, other_ca) = (TestCa::new("team CA"), TestCa::new("other CA"));
    let mut s = setup("identity", table(&agent, &team_ca, &other_ca)).await;
    assert!(s.tls.requests_client_certificates());
    let a = team_ca.client_leaf("agent-a", &[], &["spiffe://test/agent-a"]);
    let b = team_ca.client_leaf("whatever", &["Agent-B.test"], &[]);

    // The URI SAN, then the DNS SAN (ignoring case), as listed, is the consumer.
    assert_eq!(
        s.get("/mtls/chat", Some(&a)).await,
        Answer::Ok("spiffe://test/agent-a".into())
    );
    let line = s.log.next_json().await;
    assert_eq!(line["consumer"], "spiffe://test/agent-a", "{line}");
    assert_eq!(line["tier"], "standard", "{line}");
    assert_eq!(
        s.get("/mtls/chat", Some(&b)).await,
        Answer::Ok("agent-b.test".into())
    );
    assert_eq!(s.log.next_json().await["consumer"], "agent-b.test");

    // The limit is keyed by the subject: each has had its one request.
    for cert in [&a, &b] {
        assert_eq!(
            s.get("/mtls/chat", Some(cert)).await,
            Answer::Refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
        );
    }
    let line = s.log.next_json().await;
    assert_eq!(line["consumer"], "spiffe://test/agent-a", "{line}");
    assert_eq!(line["status"], 429, "{line}");
    assert_eq!(
        s.proxy.metric("sluice_auth_results_total{result=\"ok\"}"),
        Some(4.0)
    );
}

#[tokio::test]
async fn missing_foreign_and_unlisted_certificates_are_refused_with_their_reasons() {
    let agent = agent().await;
    let (team_ca, other_ca) = (TestCa::new("team CA"), TestCa::new("other CA"));
    let mut s = setup("refusals", table(&agent, &team_ca, &other_ca)).await;
    let stranger = team_ca.client_leaf("stranger", &["stranger.test"], &[]);
    let alice_of_team = team_ca.client_leaf("alice", &[], &[]);
    let alice = other_ca.client_leaf("alice", &[], &[]);
    let forged = other_ca.client_leaf("agent-a", &[], &["spiffe://test/agent-a"]);

    assert_eq!(
        s.get("/mtls/chat", None).await,
        refused("client_certificate_required")
    );
    let line = s.log.next_json().await;
    assert_eq!(line["reason"], "client_certificate_required", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    // Another CA's certificate, with a listed subject.
    assert_eq!(
        s.get("/mtls/chat", Some(&forged)).await,
        refused("client_certificate_invalid")
    );
    assert_eq!(
        s.get("/mtls/chat", Some(&stranger)).await,
        refused("client_certificate_forbidden")
    );
    // Each pool checks its own CA: alice of the team CA is not alice of `other`.
    assert_eq!(
        s.get("/other/x", Some(&alice_of_team)).await,
        refused("client_certificate_invalid")
    );
    assert_eq!(
        s.get("/other/x", Some(&alice)).await,
        Answer::Ok("alice".into())
    );
    // A pool without the requirement, on the same listener: with or without one.
    assert_eq!(s.get("/open/x", None).await, Answer::Ok(String::new()));
    assert_eq!(
        s.get("/open/x", Some(&alice)).await,
        Answer::Ok(String::new())
    );
    for (reason, n) in [
        ("client_certificate_required", 1.0),
        ("client_certificate_invalid", 2.0),
        ("client_certificate_forbidden", 1.0),
    ] {
        assert_eq!(
            s.proxy
                .metric(&format!("sluice_auth_results_total{{result=\"{reason}\"}}")),
            Some(n),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn the_plaintext_listener_cannot_reach_a_pool_that_requires_certificates() {
    let agent = agent().await;
    let (team_ca, other_ca) = (TestCa::new("team CA"), TestCa::new("other CA"));
    let s = setup("plaintext", table(&agent, &team_ca, &other_ca)).await;
    let client = client();
    let reply = get(&client, &s.proxy.url("/mtls/chat")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "client_certificate_required");
    let reply = get(&client, &s.proxy.url("/open/x")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_new_ca_in_a_new_table_is_picked_up() {
    let agent = agent().await;
    let (old_ca, new_ca, other_ca) = (
        TestCa::new("old team CA"),
        TestCa::new("new team CA"),
        TestCa::new("other CA"),
    );
    let s = setup("rotation", table(&agent, &old_ca, &other_ca)).await;
    let old = old_ca.client_leaf("agent-a", &[], &["spiffe://test/agent-a"]);
    // Another subject: the first has had its one request of the hour.
    let new = new_ca.client_leaf("agent-b", &["agent-b.test"], &[]);
    assert_eq!(
        s.get("/mtls/chat", Some(&old)).await,
        Answer::Ok("spiffe://test/agent-a".into())
    );
    assert_eq!(
        s.get("/other/chat", Some(&new)).await,
        refused("client_certificate_invalid")
    );

    s.proxy
        .store
        .apply(table(&agent, &new_ca, &other_ca))
        .expect("new table applies");
    assert_eq!(
        s.get("/mtls/chat", Some(&old)).await,
        refused("client_certificate_invalid")
    );
    assert_eq!(
        s.get("/mtls/chat", Some(&new)).await,
        Answer::Ok("agent-b.test".into())
    );

    // No pool requires certificates any more: the listener stops asking.
    let open_only = compile_yaml(&pool("open", "/open", &agent, ""));
    s.proxy.store.apply(open_only).expect("applies");
    assert!(!s.tls.requests_client_certificates());
    assert_eq!(
        s.get("/open/x", Some(&new)).await,
        Answer::Ok(String::new())
    );
}
