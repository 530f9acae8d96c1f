//! Per-endpoint `maxConcurrency` and the pool's bounded wait queue, through real
//! requests: a full pool queues up to `maxDepth` requests and lets them through in
//! order as slots free; one more is refused at once with `503 queue_full`; a waiter
//! whose queue timeout passes is refused with `503 queue_timeout`.
//!
//! The fake agent holds a request until the test opens a gate, so "the pool is full"
//! is a fact the test controls, not a matter of timing.
//!
//! Waiters of a higher-priority tier (an API key of a consumer whose tier has a
//! `tierPriorities` entry) go before anonymous ones at `defaultPriority`; a freed slot
//! reaches a waiter that can use it even when the first waiter cannot.

mod support;

use std::time::Duration;

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use support::{
    Agent, PoolYaml, Proxy, Reply, TestClient, client, compile_yaml, empty, full, send, settle,
    within,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const POOL: &str = "demo/busy";
const DEPTH: &str = "sluice_queue_depth{pool=\"demo/busy\"}";

/// An agent that reports the `x-seq` of each request as it arrives, and holds those
/// carrying `x-hold` until the gate opens.
async fn gated_agent() -> (Agent, mpsc::UnboundedReceiver<String>, watch::Sender<bool>) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let agent = Agent::start(move |req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let mut gate_rx = gate_rx.clone();
        async move {
            let seq = req.headers()["x-seq"].to_str().expect("x-seq").to_owned();
            arrived_tx.send(seq.clone()).expect("test is listening");
            if req.headers().contains_key("x-hold") {
                gate_rx.wait_for(|open| *open).await.expect("gate kept");
            }
            http::Response::new(full(seq))
        }
    })
    .await;
    (agent, arrived, gate)
}

/// One endpoint serving one request at a time, and a queue of two.
fn manifest(agent: &Agent, queue_timeout: &str) -> String {
    PoolYaml::new("busy")
        .agents(&[agent])
        .backend("maxConcurrency: 1")
        .spec(&format!("queue: {{maxDepth: 2, timeout: {queue_timeout}}}"))
        .yaml()
}

fn request(proxy: &Proxy, seq: u32, hold: bool) -> Request<support::TestBody> {
    let mut req = Request::get(proxy.url("/work")).header("x-seq", seq.to_string());
    if hold {
        req = req.header("x-hold", "1");
    }
    req.body(empty()).expect("request")
}

fn spawn_send(client: &TestClient, req: Request<support::TestBody>) -> JoinHandle<Reply> {
    let client = client.clone();
    tokio::spawn(async move { send(&client, req).await })
}

/// Sends `req` in a task of its own and returns once it waits in the queue, which is
/// then `depth` deep.
async fn send_queued(
    client: &TestClient,
    proxy: &Proxy,
    req: Request<support::TestBody>,
    depth: f64,
    what: &str,
) -> JoinHandle<Reply> {
    let sent = spawn_send(client, req);
    settle().await;
    assert_eq!(proxy.metric(DEPTH), Some(depth), "{what}");
    sent
}

async fn next_arrival(arrived: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("the agent receives a request", arrived.recv())
        .await
        .expect("agent running")
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_queues_in_order_and_refuses_beyond_the_depth_at_once() {
    let (agent, mut arrived, gate) = gated_agent().await;
    // A queue timeout far beyond the test, so that only freed slots move waiters.
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "60s"))).await;
    let c = client();

    let first = spawn_send(&c, request(&proxy, 1, true));
    assert_eq!(next_arrival(&mut arrived).await, "1");
    let second = send_queued(
        &c,
        &proxy,
        request(&proxy, 2, false),
        1.0,
        "the second request queues",
    )
    .await;
    let third = send_queued(
        &c,
        &proxy,
        request(&proxy, 3, false),
        2.0,
        "the third request queues",
    )
    .await;

    // The queue is full: the fourth is refused without waiting for anything.
    let refused = send(&c, request(&proxy, 4, false)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.error_code(), "queue_full");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(refused.headers[header::CONTENT_TYPE], "application/json");
    // Answered while the first is still held and both waiters still wait.
    assert_eq!(proxy.metric(DEPTH), Some(2.0));
    assert_eq!(agent.requests(), 1);
    assert!(!first.is_finished() && !second.is_finished() && !third.is_finished());

    gate.send_replace(true);
    for (task, seq) in [(first, "1"), (second, "2"), (third, "3")] {
        let reply = within("queued request completes", task)
            .await
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), seq);
    }
    // In the order they queued: one slot, freed by each in turn.
    assert_eq!(next_arrival(&mut arrived).await, "2");
    assert_eq!(next_arrival(&mut arrived).await, "3");
    assert_eq!(
        agent.requests(),
        3,
        "the refused request never reached the agent"
    );
    assert_eq!(proxy.metric(DEPTH), Some(0.0));
    let waits = |result: &str| {
        proxy.metric(&format!(
            "sluice_queue_wait_seconds_count{{pool=\"{POOL}\",result=\"{result}\"}}"
        ))
    };
    assert_eq!(waits("admitted"), Some(2.0));
    assert_eq!(waits("full"), Some(1.0));
    assert_eq!(
        proxy.metric("sluice_proxy_errors_total{reason=\"queue_full\"}"),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_refused_when_its_queue_timeout_passes() {
    let (agent, mut arrived, gate) = gated_agent().await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "300ms"))).await;
    let c = client();

    let first = spawn_send(&c, request(&proxy, 1, true));
    assert_eq!(next_arrival(&mut arrived).await, "1");
    let started = tokio::time::Instant::now();
    let refused = send(&c, request(&proxy, 2, false)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.error_code(), "queue_timeout");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    // It waited its full timeout (to the timer's millisecond), and the slot it waited
    // for never freed: the first request is still held.
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(302)).contains(&waited),
        "{waited:?}"
    );
    assert!(!first.is_finished());
    assert_eq!(agent.requests(), 1);
    assert_eq!(proxy.metric(DEPTH), Some(0.0));
    assert_eq!(
        proxy.metric(&format!(
            "sluice_queue_wait_seconds_count{{pool=\"{POOL}\",result=\"refused\"}}"
        )),
        Some(1.0)
    );

    gate.send_replace(true);
    let reply = within("held request completes", first).await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "1");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_served_by_an_endpoint_added_while_it_waits() {
    let (agent, mut arrived, gate) = gated_agent().await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "60s"))).await;
    let c = client();

    let first = spawn_send(&c, request(&proxy, 1, true));
    assert_eq!(next_arrival(&mut arrived).await, "1");
    let second = send_queued(
        &c,
        &proxy,
        request(&proxy, 2, false),
        1.0,
        "the second request queues",
    )
    .await;

    // The pool scales up while the first request is still held.
    let (extra, mut extra_arrived, _extra_gate) = gated_agent().await;
    let scaled = manifest(&agent, "60s").replace(
        &format!("[\"{}\"]", agent.address()),
        &format!("[\"{}\", \"{}\"]", agent.address(), extra.address()),
    );
    proxy
        .store
        .apply(compile_yaml(&scaled))
        .expect("table applies");

    assert_eq!(next_arrival(&mut extra_arrived).await, "2");
    let reply = within("the waiter is served", second).await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        !first.is_finished(),
        "served by the new endpoint, not a freed slot"
    );
    gate.send_replace(true);
    within("held request completes", first).await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_reaches_a_waiter_that_can_use_it() {
    // Two endpoints of one slot each: `gpu` has the `summarize` capability, `cpu` has
    // not. A summarize request queued first cannot use a slot freed on `cpu`; the
    // plain request queued behind it can, and must get it.
    let (gpu, mut gpu_arrived, gpu_gate) = gated_agent().await;
    let (cpu, mut cpu_arrived, cpu_gate) = gated_agent().await;
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: busy, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /}}]\n\
         \x20 backends:\n\
         \x20 - {{endpoints: [\"{}\"], maxConcurrency: 1, capabilities: [summarize]}}\n\
         \x20 - {{endpoints: [\"{}\"], maxConcurrency: 1}}\n\
         \x20 queue: {{maxDepth: 4, timeout: 60s}}\n",
        gpu.address(),
        cpu.address()
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();
    let summarize = |seq: u32, hold: bool| {
        let mut req = request(&proxy, seq, hold);
        req.headers_mut()
            .insert("x-agent-capability", "summarize".parse().expect("value"));
        req
    };

    // Both endpoints busy.
    let on_gpu = spawn_send(&c, summarize(1, true));
    assert_eq!(next_arrival(&mut gpu_arrived).await, "1");
    let on_cpu = spawn_send(&c, request(&proxy, 2, true));
    assert_eq!(next_arrival(&mut cpu_arrived).await, "2");
    // Queued: first a summarize request, then a plain one.
    let waiting_summarize = send_queued(
        &c,
        &proxy,
        summarize(3, false),
        1.0,
        "the summarize request queues",
    )
    .await;
    let waiting_plain = send_queued(
        &c,
        &proxy,
        request(&proxy, 4, false),
        2.0,
        "the plain request queues",
    )
    .await;

    // Free the cpu slot: only the plain waiter can take it.
    cpu_gate.send_replace(true);
    within("the cpu request completes", on_cpu)
        .await
        .expect("task");
    assert_eq!(next_arrival(&mut cpu_arrived).await, "4");
    let reply = within("the plain waiter is served", waiting_plain)
        .await
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!waiting_summarize.is_finished());

    gpu_gate.send_replace(true);
    for task in [on_gpu, waiting_summarize] {
        let reply = within("summarize request completes", task)
            .await
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_higher_priority_tier_goes_first() {
    let (agent, mut arrived, gate) = gated_agent().await;
    // A public pool: anonymous callers queue at the default priority (0), callers
    // with a premium API key at 10.
    let yaml = manifest(&agent, "60s").replace(
        "queue: {maxDepth: 2, timeout: 60s}",
        "queue: {maxDepth: 2, timeout: 60s, defaultPriority: 0, tierPriorities: {premium: 10}}",
    ) + "---\napiVersion: v1\nkind: Secret\n\
         metadata: {name: vip, namespace: demo, labels: {sluice.dev/consumer: vip}}\n\
         stringData: {api-key: vip-key-long-enough-to-pass, tier: premium}\n";
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let first = spawn_send(&c, request(&proxy, 1, true));
    assert_eq!(next_arrival(&mut arrived).await, "1");
    let anonymous = send_queued(
        &c,
        &proxy,
        request(&proxy, 2, false),
        1.0,
        "the anonymous request queues",
    )
    .await;
    let mut req = request(&proxy, 3, false);
    req.headers_mut().insert(
        "x-api-key",
        "vip-key-long-enough-to-pass".parse().expect("value"),
    );
    let premium = send_queued(&c, &proxy, req, 2.0, "the premium request queues").await;

    gate.send_replace(true);
    for task in [first, anonymous, premium] {
        let reply = within("request completes", task).await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // The premium request joined last and went first.
    assert_eq!(next_arrival(&mut arrived).await, "3");
    assert_eq!(next_arrival(&mut arrived).await, "2");
}
