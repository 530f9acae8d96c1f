//! The security boundary, attacked through the real proxy over sockets: one test per
//! bypass class of issue 6 (path tricks, forwarded-for spoofing, `Connection` and
//! client-sent identity headers, credentials, JWT forgeries, fallback), plus the
//! authentication metrics and the admin token.
//!
//! Every table is compiled from YAML by the real compile step. Requests whose exact
//! bytes matter (dot segments, `//`, header-name case) go over a raw TCP socket, so no
//! client library rewrites them on the way.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, Request, Response, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sluice_proxy::admin::Admin;
use sluice_proxy::forward::ForwardConfig;
use sluice_proxy::hygiene::TrustedProxies;
use sluice_proxy::server::{self, ServerConfig};

use support::{
    Agent, Proxy, Reply, TestClient, client, compile_yaml, empty, full, h2_client, send, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const JWKS: &str = include_str!("fixtures/jwt/jwks.json");
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/jwt/rsa-public.pem");
const RSA_OTHER: &[u8] = include_bytes!("fixtures/jwt/rsa-other-private.pem");
const ISSUER: &str = "https://issuer.example";

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789";
const CAROL: &str = "carol-key-0123456789";
const DAVE: &str = "dave-key-0123456789";
const WRONG: &str = "wrong-key-0123456789";

// ---------------------------------------------------------------------------------
// Agents that remember what they received.

/// What one agent received: the request target and headers, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Seen {
    fn all(&self) -> Vec<(String, HeaderMap)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self) -> usize {
        self.all().len()
    }

    /// The last request received.
    fn last(&self) -> (String, HeaderMap) {
        self.all().pop().expect("the agent received a request")
    }
}

/// An agent answering `200 name` that records every request.
async fn recording(name: &'static str) -> (Agent, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let agent = Agent::start(move |req: Request<hyper::body::Incoming>| {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        record
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((target, req.headers().clone()));
        async move { Response::new(full(name)) }
    })
    .await;
    (agent, seen)
}

/// Every value of `name` the agent received, as text.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ASCII header").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------
// The table: public `echo`, protected `secure`, JWT-protected `jwt`, four consumers.

struct Agents {
    echo: Agent,
    secure: Agent,
    jwt: Agent,
    seen_echo: Seen,
    seen_secure: Seen,
    seen_jwt: Seen,
}

impl Agents {
    async fn start() -> Self {
        let (echo, seen_echo) = recording("echo").await;
        let (secure, seen_secure) = recording("secure").await;
        let (jwt, seen_jwt) = recording("jwt").await;
        Self {
            echo,
            secure,
            jwt,
            seen_echo,
            seen_secure,
            seen_jwt,
        }
    }

    fn yaml(&self) -> String {
        let jwks: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
        let pool = |name: &str, agent: &Agent, extra: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
                 metadata: {{name: {name}, namespace: demo}}\n\
                 spec:\n  matches: [{{pathPrefix: /agents/{name}/}}]\n  \
                 backends: [{{endpoints: [\"{}\"]}}]\n{extra}---\n",
                agent.address()
            )
        };
        [
            pool("echo", &self.echo, ""),
            pool(
                "secure",
                &self.secure,
                "  access: {tiers: [premium], consumers: [bob]}\n",
            ),
            pool(
                "jwt",
                &self.jwt,
                &format!(
                    "  access: {{tiers: [premium]}}\n  authentication:\n    jwt:\n      \
                     issuer: {ISSUER}\n      audiences: [sluice]\n      jwks: '{jwks}'\n"
                ),
            ),
            consumer("alice", ALICE, "premium", None),
            consumer("bob", BOB, "standard", None),
            consumer("carol", CAROL, "standard", None),
            // Premium, so only its own pool list can keep it out of `secure`.
            consumer("dave", DAVE, "premium", Some("echo")),
        ]
        .concat()
    }
}

fn consumer(name: &str, key: &str, tier: &str, pools: Option<&str>) -> String {
    let pools = pools.map_or_else(String::new, |p| format!(", pools: {p}"));
    format!(
        "apiVersion: v1\nkind: Secret\n\
         metadata: {{name: {name}, namespace: demo, labels: {{sluice.dev/consumer: {name}}}}}\n\
         stringData: {{api-key: {key}, tier: {tier}{pools}}}\n---\n"
    )
}

/// The agents and a proxy with the default settings (no trusted proxies).
async fn setup() -> (Agents, Proxy) {
    let agents = Agents::start().await;
    let proxy = Proxy::with_table(compile_yaml(&agents.yaml())).await;
    (agents, proxy)
}

/// A proxy over `yaml` with `config`, built as the binary builds it.
async fn proxy_with(config: ForwardConfig, yaml: &str) -> Proxy {
    Proxy::with_config(config, compile_yaml(yaml)).await
}

// ---------------------------------------------------------------------------------
// Requests.

/// A response read off a raw socket.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn code(&self) -> String {
        let v: Value = serde_json::from_str(&self.body).expect("JSON error body");
        v["error"]["code"].as_str().expect("error.code").to_owned()
    }
}

/// Sends `GET target` with `headers` (name, value: written byte for byte) on a new
/// connection, asks the proxy to close it, and reads the whole response.
async fn raw(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = Vec::new();
    within(&format!("GET {target}"), async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.read_to_end(&mut bytes).await.expect("read");
    })
    .await;
    let text = String::from_utf8(bytes).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET url` with `headers` through the pooled client.
async fn get_with(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(c, req.body(empty()).expect("request")).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------
// JWTs.

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn claims(sub: &str, tier: &str) -> Value {
    let now = unix_now();
    json!({"sub": sub, "tier": tier, "iss": ISSUER, "aud": "sluice", "exp": now + 600, "nbf": now - 10})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rs256(kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA key");
    sign(Algorithm::RS256, Some(kid), &key, claims)
}

/// A token with a hand-written header and the given signature part.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

// ---------------------------------------------------------------------------------
// 1. Path tricks.

#[tokio::test]
async fn path_tricks_reach_the_protected_pool_normalised_never_the_public_one() {
    let (agents, proxy) = setup().await;
    for target in [
        "/agents/echo/../secure/x",
        "/agents/echo/%2e%2e/secure/x",
        "/agents/echo/%2E%2e/secure/x",
        "/agents/echo/.%2E/secure",
        "/agents/echo/./../secure/x",
        "//agents/secure/x",
        "/agents//secure/x",
        "/agents/./secure/x",
        "/agents/%73ecure/x",
        "/agents/echo/x/../../secure/x",
        "/../agents/secure/x",
        // Absolute-form: the path inside it is normalised as well.
        "http://gateway.test/agents/echo/../secure/x",
    ] {
        let reply = raw(proxy.addr, target, &[]).await;
        assert_eq!(reply.status, 401, "{target}: {}", reply.body);
        assert_eq!(reply.code(), "missing", "{target}");
    }
    // HTTP/2 `:path` goes through the same step.
    let h2 = h2_client();
    for target in [
        "/agents/echo/../secure/x",
        "/agents/echo/%2e%2e/secure/x",
        "/agents/%73ecure/x",
    ] {
        let reply = get_with(&h2, &proxy.url(target), &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "h2 {target}: {}",
            reply.text()
        );
    }
    assert_eq!(
        agents.seen_echo.count(),
        0,
        "echo served a request meant for secure"
    );
    assert_eq!(agents.seen_secure.count(), 0);

    // An encoded separator is refused, not decoded into one.
    for (target, code) in [
        ("/agents/echo/..%2fsecure", "path_encoded_slash"),
        ("/agents/echo/..%2Fsecure/x", "path_encoded_slash"),
        ("/agents/echo/..%5csecure", "path_encoded_backslash"),
        ("/agents/echo/%00/x", "path_encoded_nul"),
        ("/agents/echo/..\\secure", "path_backslash"),
    ] {
        let reply = raw(proxy.addr, target, &[]).await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
        assert_eq!(reply.code(), code, "{target}");
    }
    assert_eq!(agents.seen_echo.count(), 0);

    // An admitted caller's agent gets the path that was routed, query untouched.
    let auth = bearer(ALICE);
    let reply = raw(
        proxy.addr,
        "/agents/echo/%2e%2e/secure/./a//%7Euser/b?q=%2e%2e/x",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        agents.seen_secure.last().0,
        "/agents/secure/a/~user/b?q=%2e%2e/x"
    );
    let reply = raw(proxy.addr, "/agents/./%65cho/%61", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(agents.seen_echo.last().0, "/agents/echo/a");
    assert_eq!(agents.seen_echo.count(), 1);
}

// ---------------------------------------------------------------------------------
// 2. X-Forwarded-For spoofing.

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_replaced_by_the_peer() {
    let (agents, proxy) = setup().await;
    let reply = raw(
        proxy.addr,
        "/agents/echo/x",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7, 10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, headers) = agents.seen_echo.last();
    assert_eq!(values(&headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_kept_and_appended() {
    let agents = Agents::start().await;
    let config = ForwardConfig {
        trusted_proxies: TrustedProxies::parse(["127.0.0.1"]).expect("CIDR"),
        ..ForwardConfig::default()
    };
    let proxy = proxy_with(config, &agents.yaml()).await;
    let reply = raw(
        proxy.addr,
        "/agents/echo/x",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, headers) = agents.seen_echo.last();
    assert_eq!(
        values(&headers, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
}

/// A RatePolicy keyed on the client IP, 2 requests a minute, on `echo`.
const PER_IP_POLICY: &str = "apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
    metadata: {name: per-ip, namespace: demo}\n\
    spec:\n  targetRefs: [{kind: AgentPool, name: echo}]\n  key: {type: ClientIp}\n  \
    defaultTier: all\n  tiers: [{name: all, limits: [{requests: 2, period: 1m}]}]\n";

#[tokio::test]
async fn spoofed_forwarded_for_does_not_dodge_a_per_ip_limit() {
    let agents = Agents::start().await;
    let yaml = format!("{}{PER_IP_POLICY}", agents.yaml());

    // Untrusted peer: every spoofed address is 127.0.0.1 to the limiter.
    let proxy = proxy_with(ForwardConfig::default(), &yaml).await;
    let mut replies = Vec::new();
    // A fresh address, one that poses as a chain ending in a trusted hop, another one.
    for spoof in ["198.51.100.1", "198.51.100.2, 127.0.0.1", "198.51.100.3"] {
        replies.push(raw(proxy.addr, "/agents/echo/x", &[("X-Forwarded-For", spoof)]).await);
    }
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(replies[2].code(), "rate_limited");
    assert!(
        replies[2]
            .head
            .to_ascii_lowercase()
            .contains("\r\nretry-after: "),
        "{}",
        replies[2].head
    );
    assert_eq!(agents.seen_echo.count(), 2);

    // The same requests through a trusted proxy are three clients: the limit is per IP.
    let config = ForwardConfig {
        trusted_proxies: TrustedProxies::parse(["127.0.0.1"]).expect("CIDR"),
        ..ForwardConfig::default()
    };
    let trusted = proxy_with(config, &yaml).await;
    for spoof in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let reply = raw(
            trusted.addr,
            "/agents/echo/x",
            &[("X-Forwarded-For", spoof)],
        )
        .await;
        assert_eq!(reply.status, 200, "{spoof}: {}", reply.body);
    }
}

// ---------------------------------------------------------------------------------
// 3. `Connection` naming the identity headers.

#[tokio::test]
async fn connection_cannot_remove_the_gateway_identity() {
    let (agents, proxy) = setup().await;
    let c = client();
    let auth = bearer(ALICE);
    for path in ["/agents/echo/x", "/agents/secure/x"] {
        let reply = get_with(
            &c,
            &proxy.url(path),
            &[
                ("authorization", &auth),
                ("connection", "x-sluice-consumer, x-sluice-tier"),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    }
    // Over a raw socket too, with the names in mixed case next to `close`.
    let reply = raw(
        proxy.addr,
        "/agents/echo/y",
        &[
            ("X-Api-Key", ALICE),
            ("Connection", "X-Sluice-Consumer, X-SLUICE-TIER"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for (seen, expected) in [(&agents.seen_echo, 2), (&agents.seen_secure, 1)] {
        let all = seen.all();
        assert_eq!(all.len(), expected);
        for (path, headers) in all {
            assert_eq!(
                values(&headers, "x-sluice-consumer"),
                ["demo/alice"],
                "{path}"
            );
            assert_eq!(values(&headers, "x-sluice-tier"), ["premium"], "{path}");
            assert!(!headers.contains_key(header::CONNECTION), "{path}");
        }
    }
}

// ---------------------------------------------------------------------------------
// 4. Client-sent identity headers.

#[tokio::test]
async fn client_sent_identity_headers_are_stripped_in_any_case() {
    let (agents, proxy) = setup().await;
    let forged: [(&str, &str); 5] = [
        ("x-sluice-tier", "premium"),
        ("X-Sluice-Consumer", "admin"),
        ("X-SLUICE-TIER", "premium"),
        ("x-SlUiCe-consumer", "bob"),
        ("X-Sluice-Anything", "1"),
    ];

    // Anonymous on the public pool: the agent sees no identity at all.
    let reply = raw(proxy.addr, "/agents/echo/x", &forged).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, headers) = agents.seen_echo.last();
    let owned: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-sluice-"))
        .collect();
    assert!(owned.is_empty(), "{owned:?}");

    // A forged tier or consumer name opens no protected pool.
    let reply = raw(proxy.addr, "/agents/secure/x", &forged).await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "missing"));
    let auth = bearer(CAROL);
    let mut as_carol = forged.to_vec();
    as_carol.push(("Authorization", &auth));
    let reply = raw(proxy.addr, "/agents/secure/x", &as_carol).await;
    assert_eq!((reply.status, reply.code().as_str()), (403, "forbidden"));
    assert_eq!(agents.seen_secure.count(), 0);

    // On the public pool carol is carol, standard, whatever she claims.
    let reply = raw(proxy.addr, "/agents/echo/x", &as_carol).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, headers) = agents.seen_echo.last();
    assert_eq!(values(&headers, "x-sluice-consumer"), ["demo/carol"]);
    assert_eq!(values(&headers, "x-sluice-tier"), ["standard"]);
    assert!(!headers.contains_key("x-sluice-anything"));
}

// ---------------------------------------------------------------------------------
// 5. Credentials and access.

#[tokio::test]
async fn credentials_are_checked_on_every_pool_and_never_leak() {
    let (agents, proxy) = setup().await;
    let c = client();
    let mut replies = Vec::new();
    let secure = proxy.url("/agents/secure/x");
    let echo = proxy.url("/agents/echo/x");

    // Missing on the protected pool: 401 with a bare challenge.
    let reply = get_with(&c, &secure, &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "missing");
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="sluice""#
    );
    replies.push(reply);

    // Invalid credentials are refused on the public pool too, never made anonymous.
    let wrong = bearer(WRONG);
    let basic = "Basic YWxpY2U6cHc=".to_owned();
    let alice = bearer(ALICE);
    for (url, headers, code) in [
        (
            &secure,
            vec![("authorization", wrong.as_str())],
            "unknown_key",
        ),
        (
            &echo,
            vec![("authorization", wrong.as_str())],
            "unknown_key",
        ),
        (&echo, vec![("x-api-key", WRONG)], "unknown_key"),
        (
            &echo,
            vec![("authorization", basic.as_str())],
            "unsupported_scheme",
        ),
        (&echo, vec![("authorization", "Bearer ")], "malformed"),
        (
            &echo,
            vec![("authorization", alice.as_str()), ("x-api-key", WRONG)],
            "multiple_credentials",
        ),
        (
            &echo,
            vec![("x-api-key", ALICE), ("x-api-key", ALICE)],
            "multiple_credentials",
        ),
    ] {
        let reply = get_with(&c, url, &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{url} {headers:?}");
        assert_eq!(reply.error_code(), code, "{url} {headers:?}");
        let challenge = reply.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ASCII");
        assert!(
            challenge.starts_with(r#"Bearer realm="sluice", error="#),
            "{challenge}"
        );
        replies.push(reply);
    }
    assert_eq!(
        agents.seen_echo.count(),
        0,
        "an invalid credential was served anonymously"
    );
    assert_eq!(agents.seen_secure.count(), 0);

    // Listed by name, listed by tier: in. Neither, or outside its own pools: 403.
    for (key, header_name, status) in [
        (BOB, "authorization", StatusCode::OK),
        (ALICE, "authorization", StatusCode::OK),
        (ALICE, "x-api-key", StatusCode::OK),
        (CAROL, "authorization", StatusCode::FORBIDDEN),
        (DAVE, "x-api-key", StatusCode::FORBIDDEN),
    ] {
        let value = if header_name == "authorization" {
            bearer(key)
        } else {
            key.to_owned()
        };
        let reply = get_with(&c, &secure, &[(header_name, &value)]).await;
        assert_eq!(reply.status, status, "{key}: {}", reply.text());
        if status == StatusCode::FORBIDDEN {
            assert_eq!(reply.error_code(), "forbidden");
            assert!(!reply.headers.contains_key(header::WWW_AUTHENTICATE));
        }
        replies.push(reply);
    }
    let reply = get_with(&c, &echo, &[("x-api-key", DAVE)]).await;
    assert_eq!(reply.status, StatusCode::OK, "dave on his own pool");
    replies.push(reply);
    let consumers: Vec<_> = agents
        .seen_secure
        .all()
        .iter()
        .flat_map(|(_, h)| values(h, "x-sluice-consumer"))
        .collect();
    assert_eq!(consumers, ["demo/bob", "demo/alice", "demo/alice"]);

    // No credential reaches an agent, and no response carries one back.
    for (path, headers) in agents
        .seen_secure
        .all()
        .into_iter()
        .chain(agents.seen_echo.all())
    {
        assert!(!headers.contains_key(header::AUTHORIZATION), "{path}");
        assert!(!headers.contains_key("x-api-key"), "{path}");
    }
    for reply in &replies {
        for key in [ALICE, BOB, CAROL, DAVE, WRONG] {
            assert!(!reply.text().contains(key), "{key} in {}", reply.text());
            for (name, value) in &reply.headers {
                assert!(
                    !value
                        .as_bytes()
                        .windows(key.len())
                        .any(|w| w == key.as_bytes()),
                    "{key} in {name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// 6. JWTs.

#[tokio::test]
async fn jwt_forgeries_are_refused_through_the_proxy() {
    let (agents, proxy) = setup().await;
    let c = client();
    let url = proxy.url("/agents/jwt/x");

    let valid = rs256("rsa-1", &claims("jwt-alice", "premium"));
    let reply = get_with(&c, &url, &[("authorization", &bearer(&valid))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let (_, headers) = agents.seen_jwt.last();
    assert_eq!(values(&headers, "x-sluice-consumer"), ["jwt-alice"]);
    assert_eq!(values(&headers, "x-sluice-tier"), ["premium"]);
    assert!(!headers.contains_key(header::AUTHORIZATION));

    let now = unix_now();
    let mut expired = claims("jwt-alice", "premium");
    expired["exp"] = json!(now - 3600);
    expired["nbf"] = json!(now - 7200);
    let mut wrong_aud = claims("jwt-alice", "premium");
    wrong_aud["aud"] = json!("someone-else");
    let public_as_secret = EncodingKey::from_secret(RSA_PUBLIC);
    let other = EncodingKey::from_rsa_pem(RSA_OTHER).expect("RSA key");
    let premium = claims("jwt-alice", "premium");
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"});
    let cases = [
        (
            "alg none",
            unsigned(&none_header, &premium, "c2ln"),
            "unsupported_alg",
        ),
        // Without a signature part it is not even token-shaped: an unknown API key.
        (
            "alg none, empty signature",
            unsigned(&none_header, &premium, ""),
            "unknown_key",
        ),
        ("expired", rs256("rsa-1", &expired), "expired"),
        (
            "wrong audience",
            rs256("rsa-1", &wrong_aud),
            "wrong_audience",
        ),
        ("unknown kid", rs256("rsa-9", &premium), "unknown_kid"),
        (
            "HS256 with the public key, RSA kid",
            sign(Algorithm::HS256, Some("rsa-1"), &public_as_secret, &premium),
            "alg_mismatch",
        ),
        (
            "HS256 with the public key, no kid",
            sign(Algorithm::HS256, None, &public_as_secret, &premium),
            "unknown_kid",
        ),
        (
            "foreign RSA key",
            sign(Algorithm::RS256, Some("rsa-1"), &other, &premium),
            "bad_signature",
        ),
    ];
    for (what, token, code) in &cases {
        let reply = get_with(&c, &url, &[("authorization", &bearer(token))]).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.text()
        );
        assert_eq!(reply.error_code(), *code, "{what}");
        assert!(
            reply.headers.contains_key(header::WWW_AUTHENTICATE),
            "{what}"
        );
        assert!(
            !reply.text().contains(token.as_str()),
            "{what}: token echoed"
        );
    }
    assert_eq!(agents.seen_jwt.count(), 1, "a forged token was served");

    // A valid token whose tier has no access is 403; a pool without JWT settings takes
    // tokens for API keys.
    let standard = rs256("rsa-1", &claims("jwt-carol", "standard"));
    let reply = get_with(&c, &url, &[("authorization", &bearer(&standard))]).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let reply = get_with(
        &c,
        &proxy.url("/agents/secure/x"),
        &[("authorization", &bearer(&valid))],
    )
    .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (StatusCode::UNAUTHORIZED, "unknown_key")
    );
    assert_eq!(agents.seen_jwt.count(), 1);
    assert_eq!(agents.seen_secure.count(), 0);
}

// ---------------------------------------------------------------------------------
// Fallback: a public pool must not hand its callers to a protected one.

#[tokio::test]
async fn a_public_pool_does_not_open_its_protected_fallback() {
    let agents = Agents::start().await;
    // `open` is public, has no endpoint yet, and falls back to `secure`.
    let open = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
        metadata: {name: open, namespace: demo}\n\
        spec:\n  matches: [{pathPrefix: /agents/open/}]\n  \
        backends: [{service: {name: missing, port: 8080}}]\n  fallback: {name: secure}\n---\n";
    let proxy = Proxy::with_table(compile_yaml(&format!("{}{open}", agents.yaml()))).await;
    let c = client();

    // Outsiders of `secure`: `open` has nothing for them, as if it had no fallback.
    for (who, headers) in [("anonymous", vec![]), ("carol", vec![("x-api-key", CAROL)])] {
        let reply = get_with(&c, &proxy.url("/agents/open/x"), &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{who}: {}",
            reply.text()
        );
        assert_eq!(reply.error_code(), "no_endpoints", "{who}");
    }
    // Dave's own pool list (echo only) keeps him out of `open` itself.
    let reply = get_with(&c, &proxy.url("/agents/open/x"), &[("x-api-key", DAVE)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(
        agents.seen_secure.count(),
        0,
        "the protected agent served an outsider"
    );
    // Who may call `secure` still gets there through the fallback.
    let reply = get_with(&c, &proxy.url("/agents/open/x"), &[("x-api-key", BOB)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

// ---------------------------------------------------------------------------------
// 7. Metrics.

#[tokio::test]
async fn auth_results_are_counted_by_reason() {
    let (_agents, proxy) = setup().await;
    let c = client();
    let echo = proxy.url("/agents/echo/x");
    let secure = proxy.url("/agents/secure/x");
    let jwt = proxy.url("/agents/jwt/x");
    let mut expired = claims("jwt-alice", "premium");
    expired["exp"] = json!(unix_now() - 3600);
    let expired = bearer(&rs256("rsa-1", &expired));
    let valid = bearer(&rs256("rsa-1", &claims("jwt-alice", "premium")));
    let requests: [(&str, Vec<(&str, &str)>); 10] = [
        (&echo, vec![]),
        (&echo, vec![]),
        (&echo, vec![("x-api-key", ALICE)]),
        (&secure, vec![("x-api-key", BOB)]),
        (&jwt, vec![("authorization", &valid)]),
        (&secure, vec![]),
        (&echo, vec![("x-api-key", WRONG)]),
        (&secure, vec![("x-api-key", CAROL)]),
        (&secure, vec![("x-api-key", DAVE)]),
        (&jwt, vec![("authorization", &expired)]),
    ];
    for (url, headers) in &requests {
        get_with(&c, url, headers).await;
    }
    // Refused before authentication: not counted.
    assert_eq!(
        raw(proxy.addr, "/agents/echo/..%2fsecure", &[])
            .await
            .status,
        400
    );

    let count = |result: &str| {
        proxy
            .metric(&format!("sluice_auth_results_total{{result=\"{result}\"}}"))
            .unwrap_or(0.0)
    };
    assert_eq!(count("anonymous"), 2.0);
    assert_eq!(count("ok"), 3.0);
    assert_eq!(count("missing"), 1.0);
    assert_eq!(count("unknown_key"), 1.0);
    assert_eq!(count("forbidden"), 2.0);
    assert_eq!(count("expired"), 1.0);
    let text = proxy.metrics.render();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_auth_results_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, requests.len() as f64, "{text}");
    for secret in [ALICE, BOB, CAROL, DAVE, WRONG, "jwt-alice"] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
}

// ---------------------------------------------------------------------------------
// 8. The admin token.

#[tokio::test]
async fn admin_metrics_and_routes_need_the_token_probes_do_not() {
    let (_agents, proxy) = setup().await;
    let admin = Admin::new(proxy.store.clone(), proxy.metrics.clone()).with_token("t");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("admin address");
    tokio::spawn(server::serve(
        listener,
        ServerConfig::default(),
        move |req, _peer| {
            let resp = admin.handle(&req);
            async move { resp }
        },
        std::future::pending::<()>(),
    ));
    let c = client();
    let url = |path: &str| format!("http://{addr}{path}");

    for path in ["/metrics", "/routes"] {
        for headers in [
            vec![],
            vec![("authorization", "Bearer wrong")],
            vec![("authorization", "Bearer tt")],
            vec![("authorization", "Bearer ")],
            vec![("authorization", "Basic dDp0")],
            vec![("x-api-key", "t")],
        ] {
            let reply = get_with(&c, &url(path), &headers).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path} {headers:?}");
            assert!(
                reply.headers.contains_key(header::WWW_AUTHENTICATE),
                "{path}"
            );
        }
        let reply = get_with(&c, &url(path), &[("authorization", "Bearer t")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    // The table in force names consumers by key hash only.
    let routes = get_with(&c, &url("/routes"), &[("authorization", "Bearer t")]).await;
    assert!(routes.text().contains("\"demo/alice\""));
    for key in [ALICE, BOB, CAROL, DAVE] {
        assert!(!routes.text().contains(key), "{key} in /routes");
    }
    for path in ["/healthz", "/readyz"] {
        let reply = get_with(&c, &url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn another_namespaces_consumer_neither_shadows_a_name_nor_grants_itself_a_tier() {
    const OTHER_ALICE: &str = "other-alice-key-0123456789";
    const MALLORY: &str = "mallory-key-0123456789";
    let (secure, seen) = recording("secure").await;
    let yaml = |consent: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
             metadata: {{name: secure, namespace: demo}}\n\
             spec:\n  matches: [{{pathPrefix: /agents/secure/}}]\n  \
             backends: [{{endpoints: [\"{}\"]}}]\n  \
             access: {{tiers: [premium], consumers: [bob]{consent}}}\n---\n{}{}\
             apiVersion: v1\nkind: Secret\n\
             metadata: {{name: alice, namespace: other, labels: {{sluice.dev/consumer: alice}}}}\n\
             stringData: {{api-key: {OTHER_ALICE}, tier: standard}}\n---\n\
             apiVersion: v1\nkind: Secret\n\
             metadata: {{name: mallory, namespace: other, labels: {{sluice.dev/consumer: bob}}}}\n\
             stringData: {{api-key: {MALLORY}, tier: premium}}\n",
            secure.address(),
            consumer("alice", ALICE, "premium", None),
            consumer("bob", BOB, "standard", None),
        )
    };
    let c = client();
    let url = |proxy: &Proxy| proxy.url("/agents/secure/x");
    let status = |reply: &Reply| reply.status;

    // Without the pool's consent: another namespace's `alice` does not drop this one,
    // its `bob` is not this `bob`, and its premium tier counts for nothing here.
    let proxy = Proxy::with_table(compile_yaml(&yaml(""))).await;
    for (key, expected, who) in [
        (ALICE, StatusCode::OK, Some("demo/alice")),
        (BOB, StatusCode::OK, Some("demo/bob")),
        (OTHER_ALICE, StatusCode::FORBIDDEN, None),
        (MALLORY, StatusCode::FORBIDDEN, None),
    ] {
        let before = seen.count();
        let reply = get_with(&c, &url(&proxy), &[("authorization", &bearer(key))]).await;
        assert_eq!(status(&reply), expected, "{key}");
        if let Some(who) = who {
            assert_eq!(values(&seen.last().1, "x-sluice-consumer"), [who]);
        } else {
            assert_eq!(seen.count(), before, "{key} reached the agent");
        }
    }

    // The pool admits the tiers of namespace `other`: its premium consumer is let in
    // by tier, under its own name; its standard one is not.
    let proxy = Proxy::with_table(compile_yaml(&yaml(", consumerNamespaces: [other]"))).await;
    let reply = get_with(&c, &url(&proxy), &[("authorization", &bearer(MALLORY))]).await;
    assert_eq!(status(&reply), StatusCode::OK);
    assert_eq!(values(&seen.last().1, "x-sluice-consumer"), ["other/bob"]);
    let reply = get_with(&c, &url(&proxy), &[("authorization", &bearer(OTHER_ALICE))]).await;
    assert_eq!(status(&reply), StatusCode::FORBIDDEN);
}
