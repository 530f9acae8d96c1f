//! Hostile requests over raw sockets: ambiguous hosts cannot route by one host and
//! reach the agent with another, look-alike identity headers spelled with
//! underscores never reach an agent, and what a reverse proxy must not forward
//! (`CONNECT`, transfer codings other than chunked, an `h2c` upgrade) gets a clear
//! answer instead.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use support::{Agent, Proxy, compile_yaml, full, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// An agent answering its name and keeping the headers of every request.
async fn recording(name: &'static str) -> (Agent, Seen) {
    let seen: Seen = Arc::default();
    let keep = seen.clone();
    let agent = Agent::start(move |req: Request<Incoming>| {
        keep.lock().expect("lock").push(req.headers().clone());
        async move { Response::new(full(name)) }
    })
    .await;
    (agent, seen)
}

/// A public catch-all pool and a pool for `secure.example` that needs a key.
async fn setup() -> (Proxy, Seen, Seen) {
    let (public, seen_public) = recording("public").await;
    let (secure, seen_secure) = recording("secure").await;
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: secure, namespace: demo}}\n\
         spec:\n  matches: [{{host: secure.example, pathPrefix: /}}]\n\
         \x20 backends: [{{endpoints: [\"{}\"]}}]\n  access: {{tiers: [premium]}}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: public, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /}}]\n\
         \x20 backends: [{{endpoints: [\"{}\"]}}]\n",
        secure.address(),
        public.address()
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    (proxy, seen_public, seen_secure)
}

/// Writes `request` (the whole head, CRLF line ends added) on a new connection and
/// reads the answer: its status and text.
async fn raw(addr: SocketAddr, lines: &[&str], body: &str) -> (u16, String) {
    let mut request = lines.join("\r\n");
    request.push_str("\r\n\r\n");
    request.push_str(body);
    let mut bytes = Vec::new();
    within(lines[0], async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.read_to_end(&mut bytes).await.expect("read");
    })
    .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn a_request_cannot_route_by_one_host_and_reach_the_agent_with_another() {
    let (proxy, seen_public, seen_secure) = setup().await;
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "GET http://other.example/x HTTP/1.1",
                "Host: secure.example",
            ],
            "host_mismatch",
        ),
        (
            &[
                "GET /x HTTP/1.1",
                "Host: other.example",
                "Host: secure.example",
            ],
            "multiple_host",
        ),
        (
            &["GET /x HTTP/1.1", "Host: secure.example/x"],
            "invalid_host",
        ),
        (
            &["GET /x HTTP/1.1", "Host: user@secure.example"],
            "invalid_host",
        ),
        (&["GET /x HTTP/1.1"], "missing_host"),
    ];
    for (head, code) in cases {
        let mut lines = head.to_vec();
        lines.push("Connection: close");
        let (status, text) = raw(proxy.addr, &lines, "").await;
        assert_eq!(status, 400, "{head:?}: {text}");
        assert!(
            text.contains(&format!("\"code\":\"{code}\"")),
            "{head:?}: {text}"
        );
    }
    assert_eq!(seen_public.lock().expect("lock").len(), 0);
    assert_eq!(seen_secure.lock().expect("lock").len(), 0);

    // An absolute-form target routes by its own authority, which the agent receives.
    let (status, text) = raw(
        proxy.addr,
        &[
            "GET http://Public.Example:8080/x HTTP/1.1",
            "Host: public.example:8080",
            "Connection: close",
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = seen_public.lock().expect("lock").pop().expect("a request");
    assert_eq!(
        seen["host"], "Public.Example:8080",
        "the target's, as written"
    );
    // The protected pool still answers 401 to the host it serves.
    let (status, _) = raw(
        proxy.addr,
        &[
            "GET /x HTTP/1.1",
            "Host: secure.example",
            "Connection: close",
        ],
        "",
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_http2_authority_that_disagrees_with_host_is_refused() {
    let (proxy, seen_public, _) = setup().await;
    let c = support::h2_client();
    let req = Request::get(format!("http://{}/x", proxy.addr))
        .header("host", "secure.example")
        .body(support::empty())
        .expect("request");
    let reply = support::send(&c, req).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.error_code(), "host_mismatch");

    let req = Request::get(format!("http://{}/x", proxy.addr))
        .body(support::empty())
        .expect("request");
    assert_eq!(support::send(&c, req).await.status, 200);
    let seen = seen_public.lock().expect("lock").pop().expect("a request");
    assert_eq!(
        seen["host"],
        proxy.addr.to_string(),
        "the :authority, as Host"
    );
}

#[tokio::test]
async fn identity_look_alikes_spelled_with_underscores_never_reach_an_agent() {
    let (proxy, seen_public, _) = setup().await;
    let (status, text) = raw(
        proxy.addr,
        &[
            "GET /x HTTP/1.1",
            "Host: public.example",
            "x_sluice_tier: premium",
            "X_Sluice_Consumer: alice",
            "x_forwarded_for: 10.9.9.9",
            "x_api_key: stolen",
            "x_request_id: kept",
            "Connection: close",
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = seen_public.lock().expect("lock").pop().expect("a request");
    for name in [
        "x_sluice_tier",
        "x_sluice_consumer",
        "x_forwarded_for",
        "x_api_key",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the agent: {seen:?}"
        );
    }
    assert_eq!(seen["x_request_id"], "kept", "other underscores pass");
}

#[tokio::test]
async fn what_a_reverse_proxy_must_not_forward_gets_a_clear_answer() {
    let (proxy, seen_public, _) = setup().await;
    let (status, text) = raw(
        proxy.addr,
        &[
            "CONNECT public.example:443 HTTP/1.1",
            "Host: public.example:443",
            "Connection: close",
        ],
        "",
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("method_not_allowed"), "{text}");

    let (status, text) = raw(
        proxy.addr,
        &[
            "POST /x HTTP/1.1",
            "Host: public.example",
            "Transfer-Encoding: gzip, chunked",
            "Connection: close",
        ],
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 501, "{text}");
    assert!(text.contains("unsupported_transfer_coding"), "{text}");
    assert_eq!(seen_public.lock().expect("lock").len(), 0);

    // An h2c upgrade is about the client's own connection: the request goes on
    // without it.
    let (status, text) = raw(
        proxy.addr,
        &[
            "GET /x HTTP/1.1",
            "Host: public.example",
            "Connection: Upgrade, HTTP2-Settings, close",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = seen_public.lock().expect("lock").pop().expect("a request");
    assert!(!seen.contains_key("upgrade"), "{seen:?}");
    assert!(!seen.contains_key("http2-settings"), "{seen:?}");
}

#[tokio::test]
async fn a_get_with_a_chunked_body_reaches_the_agent_whole() {
    let (tx, mut bodies) = tokio::sync::mpsc::unbounded_channel();
    let agent = Agent::start(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.expect("body").to_bytes();
            tx.send(body).expect("test listening");
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = Proxy::with_table(support::PoolYaml::new("get").agents(&[&agent]).table()).await;
    let (status, text) = raw(
        proxy.addr,
        &[
            "GET /search HTTP/1.1",
            "Host: public.example",
            "Transfer-Encoding: chunked",
            "Connection: close",
        ],
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = within("the agent reads the body", bodies.recv())
        .await
        .expect("agent running");
    assert_eq!(&body[..], b"hello world");
}

#[tokio::test]
async fn a_clients_broken_body_is_400_and_never_counts_against_the_agent() {
    let agent = Agent::start(|req: Request<Incoming>| async move {
        use http_body_util::BodyExt;
        let _ = req.into_body().collect().await;
        Response::new(full("read"))
    })
    .await;
    let table = support::PoolYaml::new("upload")
        .agents(&[&agent])
        .spec(
            "outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1m, \
             maxEjectionTime: 2m, maxEjectionPercent: 100}",
        )
        .table();
    let proxy = Proxy::with_table(table).await;
    for _ in 0..3 {
        let (status, text) = raw(
            proxy.addr,
            &[
                "POST /upload HTTP/1.1",
                "Host: public.example",
                "Transfer-Encoding: chunked",
                "Connection: close",
            ],
            "5\r\nhello\r\nzz-not-a-size\r\n",
        )
        .await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("client_body_error"), "{text}");
    }
    assert_eq!(
        proxy.metric(
            "sluice_outlier_ejections_total{pool=\"demo/upload\",reason=\"consecutive_failures\",result=\"ejected\"}"
        ),
        None,
        "the agent was not ejected"
    );
    let (status, text) = raw(
        proxy.addr,
        &[
            "GET /upload HTTP/1.1",
            "Host: public.example",
            "Connection: close",
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// Sends a POST announcing `length` bytes, then `chunk` every `every`, `count` times,
/// and reads the answer.
async fn trickle(
    addr: SocketAddr,
    length: usize,
    chunk: &'static [u8],
    every: std::time::Duration,
    count: usize,
) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: public.example\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..count {
        tokio::time::sleep(every).await;
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_trickling_upload_is_cut_and_frees_its_agent_slot() {
    let agent = Agent::start(|req: Request<Incoming>| async move {
        use http_body_util::BodyExt;
        match req.into_body().collect().await {
            Ok(body) => Response::new(full(format!("read {}", body.to_bytes().len()))),
            Err(_) => Response::new(full("cut")),
        }
    })
    .await;
    let table = support::PoolYaml::new("upload")
        .agents(&[&agent])
        .backend("maxConcurrency: 1")
        .spec("queue: {maxDepth: 4, timeout: 5m}")
        .table();
    let proxy = Proxy::with_table(table).await;

    // One byte a second: below 240 a second once the 5 s grace has passed.
    let slow = tokio::spawn(trickle(
        proxy.addr,
        100_000,
        b"x",
        std::time::Duration::from_secs(1),
        60,
    ));
    support::settle().await;
    assert_eq!(agent.requests(), 1, "the slow upload holds the only slot");
    // A request behind it waits in the queue, then gets the slot once the slow
    // upload is cut.
    let waiting = tokio::spawn(trickle(
        proxy.addr,
        1000,
        &[b'y'; 1000],
        std::time::Duration::from_millis(10),
        1,
    ));
    let cut = slow.await.expect("task");
    assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    assert!(cut.contains("client_body_timeout"), "{cut}");
    let served = waiting.await.expect("task");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(served.ends_with("read 1000"), "{served}");
    assert_eq!(
        proxy.metric("sluice_proxy_errors_total{reason=\"client_body_timeout\"}"),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_upload_that_keeps_the_rate_streams_as_long_as_it_likes() {
    let agent = Agent::start(|req: Request<Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req
            .into_body()
            .collect()
            .await
            .expect("whole body")
            .to_bytes();
        Response::new(full(format!("read {}", body.len())))
    })
    .await;
    let proxy = Proxy::with_table(support::PoolYaml::new("upload").agents(&[&agent]).table()).await;
    // 512 bytes a second for two minutes.
    let answer = trickle(
        proxy.addr,
        512 * 120,
        &[b'z'; 512],
        std::time::Duration::from_secs(1),
        120,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("read {}", 512 * 120)), "{answer}");
}
