//! Timeouts through real sockets: a server-sent event stream that keeps producing
//! outlives `timeouts.request` unless `streamMaxDuration` says otherwise; a body that
//! stalls longer than `timeouts.idle` is cut; an agent slower than `firstByte` gets a
//! `504`.
//!
//! These are timeout features, so real time is the subject. Assertions are one-sided:
//! "cut before the end", "answered before a bound the test could not otherwise meet",
//! never "fast".

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use support::{
    Agent, Proxy, TestBody, channel_body, client, compile_yaml, empty, full, get, open_stream,
    within,
};
use tokio::sync::watch;

const POOL: &str = "demo/slow";
/// Events the SSE agent sends, one every [`TICK`]: a stream of about a second.
const EVENTS: usize = 10;
const TICK: Duration = Duration::from_millis(100);

fn manifest(agent: &Agent, timeouts: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: slow, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /}}]\n\
         \x20 backends: [{{endpoints: [\"{}\"]}}]\n\
         \x20 timeouts: {timeouts}\n",
        agent.address()
    )
}

/// An agent that streams [`EVENTS`] server-sent events, one per [`TICK`].
async fn sse_agent() -> Agent {
    ticking_agent("text/event-stream").await
}

/// An agent that sends [`EVENTS`] chunks, one per [`TICK`], as `content_type`.
async fn ticking_agent(content_type: &'static str) -> Agent {
    Agent::start(move |_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            for i in 0..EVENTS {
                ticker.tick().await;
                if tx
                    .send(Bytes::from(format!("data: {i}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .expect("response")
    })
    .await
}

/// Reads a response body to its end or its first error: the data received and
/// whether it ended cleanly.
async fn drain(mut body: hyper::body::Incoming) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            None => return (data, true),
            Some(Err(_)) => return (data, false),
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
        }
    }
}

async fn stream(proxy: &Proxy) -> (Vec<u8>, bool) {
    let req = Request::get(proxy.url("/events"))
        .header(header::ACCEPT, "text/event-stream")
        .body(empty())
        .expect("request");
    let resp = within("response head", client().request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    within("the stream ends", drain(resp.into_body())).await
}

fn cut(proxy: &Proxy, reason: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_body_cut_total{{pool=\"{POOL}\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
}

fn all_events() -> String {
    (0..EVENTS).map(|i| format!("data: {i}\n\n")).collect()
}

#[tokio::test]
async fn a_producing_event_stream_outlives_the_request_timeout() {
    let agent = sse_agent().await;
    // The stream lasts about 1 s, more than three times the request timeout.
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "{request: 300ms}"))).await;

    let (data, clean) = stream(&proxy).await;
    assert!(
        clean,
        "the stream failed after {:?}",
        String::from_utf8_lossy(&data)
    );
    assert_eq!(String::from_utf8_lossy(&data), all_events());
    assert_eq!(cut(&proxy, "total") + cut(&proxy, "idle"), 0.0);
}

#[tokio::test]
async fn the_request_timeout_cuts_a_slow_body_that_is_not_a_stream() {
    // The same chunks as plain JSON: the whole-request timeout applies.
    let agent = ticking_agent("application/json").await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "{request: 300ms}"))).await;

    let (data, clean) = stream(&proxy).await;
    assert!(!clean, "the body ended cleanly");
    assert!(
        data.len() < all_events().len(),
        "{}",
        String::from_utf8_lossy(&data)
    );
    assert_eq!(cut(&proxy, "total"), 1.0);
}

#[tokio::test]
async fn stream_max_duration_cuts_an_event_stream() {
    let agent = sse_agent().await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(
        &agent,
        "{request: 30s, streamMaxDuration: 400ms}",
    )))
    .await;

    let (data, clean) = stream(&proxy).await;
    assert!(!clean, "the stream ended cleanly");
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("data: 0\n\n"), "{text}");
    assert!(
        text.len() < all_events().len(),
        "the whole stream came through: {text}"
    );
    assert_eq!(cut(&proxy, "total"), 1.0);
}

#[tokio::test]
async fn a_body_stalling_longer_than_the_idle_timeout_is_cut() {
    // One chunk, then nothing until the test ends.
    let (_stall, stall_rx) = watch::channel(());
    let agent = Agent::start(move |_req| {
        let mut stall_rx = stall_rx.clone();
        async move {
            let (tx, body): (_, TestBody) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first")).await;
                // Keeps the body open until the test drops its sender.
                let _ = stall_rx.changed().await;
                drop(tx);
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("response")
        }
    })
    .await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(
        &agent,
        "{request: 30s, idle: 200ms}",
    )))
    .await;

    // The request timeout (30 s) is beyond the hang guard: only the idle timeout can
    // end this body in time.
    let body = open_stream(&proxy, "/stall").await;
    let (data, clean) = within("the body is cut", drain(body)).await;
    assert!(!clean, "the body ended cleanly");
    assert_eq!(&data[..], b"first");
    assert_eq!(cut(&proxy, "idle"), 1.0);
    assert_eq!(cut(&proxy, "total"), 0.0);
}

#[tokio::test]
async fn a_first_byte_timeout_shorter_than_the_request_timeout_answers_504() {
    let (_gate, gate_rx) = watch::channel(false);
    let agent = Agent::start(move |_req| {
        let mut gate_rx = gate_rx.clone();
        async move {
            let _ = gate_rx.wait_for(|open| *open).await;
            Response::new(full("late"))
        }
    })
    .await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(
        &agent,
        "{request: 30s, firstByte: 200ms}",
    )))
    .await;

    let started = std::time::Instant::now();
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "upstream_timeout");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let message = reply.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains("200 ms"),
        "names the first-byte timeout: {message}"
    );
    assert_eq!(agent.requests(), 1);
}
