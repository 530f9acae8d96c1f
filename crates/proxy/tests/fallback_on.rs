//! A fallback pool for a saturated primary and for the agents' own answers, through
//! real requests: `fallback.when` sends requests on when the queue is full or timed
//! out (the fallback absorbs the peak), and `fallback.statuses` when an agent answers
//! with one of them (an LLM provider's 429), within the retry budget and only with a
//! body that can be sent again; the primary's limits give back what they charged.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{
    Agent, PoolYaml, Proxy, Reply, client, compile_yaml, empty, full, holding_agent, send, settle,
};
use tokio::sync::{mpsc, watch};

/// An agent that answers `status` with its name and the request body it read.
async fn answering(name: &'static str, status: StatusCode) -> Agent {
    Agent::start(move |req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.expect("body").to_bytes();
        Response::builder()
            .status(status)
            .body(full(format!("{name}:{}", String::from_utf8_lossy(&body))))
            .expect("response")
    })
    .await
}

/// Pool `primary` (the given manifest, falling back to `backup` with `fallback`
/// settings) and pool `backup` on `/backup-only` over `backup`, with `extra` objects.
fn tables(primary: PoolYaml, fallback: &str, backup: &Agent, extra: &str) -> String {
    let primary = primary
        .spec(&format!("fallback: {{name: backup{fallback}}}"))
        .yaml();
    let backup = PoolYaml::new("backup")
        .prefix("/backup-only")
        .agents(&[backup])
        .yaml();
    format!("{primary}---\n{backup}{extra}")
}

fn get(proxy: &Proxy, hold: bool) -> Request<support::TestBody> {
    let mut req = Request::get(proxy.url("/work"));
    if hold {
        req = req.header("x-hold", "1");
    }
    req.body(empty()).expect("request")
}

/// The primary's one endpoint held by a first request: the second finds it full.
async fn saturated(
    fallback: &str,
    queue: &str,
) -> (
    Proxy,
    watch::Sender<bool>,
    Agent,
    mpsc::UnboundedReceiver<&'static str>,
) {
    let (arrived, seen) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let primary = holding_agent("primary", arrived, gate_rx).await;
    let backup = Agent::named("backup").await;
    let pool = PoolYaml::new("primary")
        .agents(&[&primary])
        .backend("maxConcurrency: 1")
        .spec(queue);
    let proxy = Proxy::with_table(compile_yaml(&tables(pool, fallback, &backup, ""))).await;
    let c = client();
    let held = get(&proxy, true);
    tokio::spawn(async move { send(&c, held).await });
    settle().await;
    (proxy, gate, backup, seen)
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sends_on_to_the_fallback_when_told_to() {
    let (proxy, _gate, backup, _seen) =
        saturated(", when: [QueueFull]", "queue: {maxDepth: 0}").await;
    let reply = send(&client(), get(&proxy, false)).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "backup"));
    assert_eq!(backup.requests(), 1);

    // By default only a pool without live endpoints falls back.
    let (proxy, _gate, _, _seen) = saturated("", "queue: {maxDepth: 0}").await;
    let reply = send(&client(), get(&proxy, false)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "queue_full");
}

#[tokio::test(start_paused = true)]
async fn a_queue_timeout_sends_on_to_the_fallback_when_told_to() {
    let (proxy, _gate, backup, _seen) = saturated(
        ", when: [QueueTimeout]",
        "queue: {maxDepth: 4, timeout: 2s}",
    )
    .await;
    let c = client();
    let waiting = {
        let req = get(&proxy, false);
        tokio::spawn(async move { send(&c, req).await })
    };
    settle().await;
    assert_eq!(backup.requests(), 0, "waiting in the queue");
    tokio::time::advance(Duration::from_secs(2)).await;
    let reply = waiting.await.expect("task");
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "backup"));
}

/// A JSON chat request of `size` bytes.
fn chat(proxy: &Proxy, size: usize) -> Request<support::TestBody> {
    let padding = "x".repeat(size.saturating_sub(40));
    Request::post(proxy.url("/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(format!(
            r#"{{"model":"m","pad":"{padding}","n":1}}"#
        ))))
        .expect("request")
}

fn retries(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_retries_total{{pool=\"demo/primary\",result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_agents_429_sends_the_request_on_to_the_fallback() {
    let provider = answering("provider", StatusCode::TOO_MANY_REQUESTS).await;
    let backup = answering("backup", StatusCode::OK).await;
    // The primary allows one request an hour: a request sent on gives its charge back.
    let limit = "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
        metadata: {name: primary, namespace: demo}\n\
        spec:\n  targetRefs: [{kind: AgentPool, name: primary}]\n  key: {type: Pool}\n  \
        tiers: [{name: all, limits: [{requests: 1, period: 1h}]}]\n";
    let pool = PoolYaml::new("primary").agents(&[&provider]);
    let yaml = tables(pool, ", statuses: [429, 503]", &backup, limit);
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();
    for _ in 0..2 {
        let reply = send(&c, chat(&proxy, 100)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // The fallback got the whole body the provider had.
        let (name, body) = reply.text().split_once(':').expect("name:body");
        assert_eq!(name, "backup");
        assert!(body.starts_with(r#"{"model":"m","pad":"x"#) && body.ends_with(r#""n":1}"#));
    }
    assert_eq!(provider.requests(), 2);
    assert_eq!(retries(&proxy, "fallback"), 2.0);
    let moved = proxy.metric("sluice_fallbacks_total{pool=\"demo/primary\",to=\"demo/backup\"}");
    assert_eq!(moved, Some(2.0));
}

#[tokio::test]
async fn a_status_fallback_keeps_to_the_budget_and_never_replays_a_lost_body() {
    let provider = answering("provider", StatusCode::TOO_MANY_REQUESTS).await;
    let backup = answering("backup", StatusCode::OK).await;
    // No budget at all: the agent's own answer stands.
    let pool = PoolYaml::new("primary")
        .agents(&[&provider])
        .spec("retries: {attempts: 0, budgetRatio: 0, minRetriesPerSecond: 0}");
    let proxy = Proxy::with_table(compile_yaml(&tables(
        pool,
        ", statuses: [429]",
        &backup,
        "",
    )))
    .await;
    let reply: Reply = send(&client(), chat(&proxy, 100)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.text().starts_with("provider:"));
    assert_eq!(retries(&proxy, "budget_exhausted"), 1.0);

    // A body beyond what is kept to replay (64 KiB) went to the provider and is gone.
    let pool = PoolYaml::new("primary").agents(&[&provider]);
    let proxy = Proxy::with_table(compile_yaml(&tables(
        pool,
        ", statuses: [429]",
        &backup,
        "",
    )))
    .await;
    let reply = send(&client(), chat(&proxy, 100 * 1024)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retries(&proxy, "not_replayable"), 1.0);
    assert_eq!(backup.requests(), 0);
}

#[tokio::test]
async fn the_primarys_endpoint_is_free_while_a_request_waits_for_the_fallback() {
    let (arrived, mut seen) = mpsc::unbounded_channel();
    let provider = Agent::start(move |_req: Request<Incoming>| {
        let arrived = arrived.clone();
        async move {
            arrived.send(()).expect("test is listening");
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .body(full("provider"))
                .expect("response")
        }
    })
    .await;
    let (backup_arrived, mut backup_seen) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let backup = holding_agent("backup", backup_arrived, gate_rx).await;
    // One request at a time on each side; the primary's queue gives up after 2 s.
    let primary = PoolYaml::new("primary")
        .agents(&[&provider])
        .backend("maxConcurrency: 1")
        .spec("queue: {timeout: 2s}")
        .spec("fallback: {name: backup, statuses: [429]}")
        .yaml();
    let backup_pool = PoolYaml::new("backup")
        .prefix("/backup-only")
        .agents(&[&backup])
        .backend("maxConcurrency: 1")
        .yaml();
    let proxy = Proxy::with_table(compile_yaml(&format!("{primary}---\n{backup_pool}"))).await;
    let c = client();
    // The backup's one endpoint is held.
    let hold = Request::get(proxy.url("/backup-only"))
        .header("x-hold", "1")
        .body(empty())
        .expect("request");
    let held = tokio::spawn({
        let c = c.clone();
        async move { send(&c, hold).await }
    });
    backup_seen.recv().await.expect("the held request arrived");
    // The provider's 429 sends the first request on to the backup, where it waits.
    let first = tokio::spawn({
        let (c, req) = (c.clone(), get(&proxy, false));
        async move { send(&c, req).await }
    });
    seen.recv()
        .await
        .expect("the first request reached the provider");
    // The second reaches the provider at once: the first no longer holds its endpoint.
    let second = send(&c, get(&proxy, false));
    tokio::select! {
        arrived = seen.recv() => arrived.expect("the second request reached the provider"),
        reply = second => panic!(
            "the second request was answered {} without reaching the provider",
            reply.status
        ),
    }
    gate.send(true).expect("gate");
    assert_eq!(held.await.expect("held").text(), "backup");
    let first = first.await.expect("first");
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "backup");
}
