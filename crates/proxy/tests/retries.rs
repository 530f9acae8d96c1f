//! Retries through real requests: a configured status, a refused connection and a
//! connection reset before any response byte are retried on another endpoint, with the
//! request body sent again byte for byte; a body larger than the replay cap, a timeout
//! and a retry beyond the budget are not.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{
    Agent, PoolYaml, Proxy, TestBody, channel_body, client, compile_yaml, dead_address, full, get,
    send,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const POOL: &str = "demo/retry";

/// A pool over `addresses` (round robin) with the `retries` and `timeouts` given as
/// YAML flow mappings.
fn manifest(addresses: &[String], retries: &str, timeouts: &str) -> String {
    PoolYaml::new("retry")
        .endpoints(addresses)
        .spec(&format!("retries: {retries}"))
        .spec(&format!("timeouts: {timeouts}"))
        .yaml()
}

/// An agent that reads the whole request body, reports it as `(name, body)`, and
/// answers `status` with its name.
async fn reading_agent(
    name: &'static str,
    status: StatusCode,
    seen: mpsc::UnboundedSender<(&'static str, Bytes)>,
) -> Agent {
    Agent::start(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .expect("request body")
                .to_bytes();
            seen.send((name, body)).expect("test is listening");
            Response::builder()
                .status(status)
                .header("x-agent", name)
                .body(full(name))
                .expect("response")
        }
    })
    .await
}

/// Two reading agents, `a` and `b`, both answering 503, behind a pool with `retries`.
struct Failing {
    a: Agent,
    b: Agent,
    proxy: Proxy,
    /// What each agent read.
    bodies: mpsc::UnboundedReceiver<(&'static str, Bytes)>,
}

async fn two_failing(retries: &str) -> Failing {
    let (seen, bodies) = mpsc::unbounded_channel();
    let a = reading_agent("a", StatusCode::SERVICE_UNAVAILABLE, seen.clone()).await;
    let b = reading_agent("b", StatusCode::SERVICE_UNAVAILABLE, seen).await;
    let yaml = manifest(&[a.address(), b.address()], retries, "{}");
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    Failing {
        a,
        b,
        proxy,
        bodies,
    }
}

/// An agent that echoes the request body with `200`.
async fn echo_agent() -> Agent {
    Agent::start(|req: Request<Incoming>| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        Response::builder()
            .header("x-agent", "echo")
            .body(full(body))
            .expect("response")
    })
    .await
}

async fn next_arrival(arrived: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    support::within("an agent gets the request", arrived.recv())
        .await
        .expect("agents running")
}

fn retries(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_retries_total{{pool=\"{POOL}\",result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

fn post(proxy: &Proxy, body: TestBody) -> Request<TestBody> {
    Request::post(proxy.url("/run"))
        .body(body)
        .expect("request")
}

#[tokio::test]
async fn a_configured_status_is_retried_on_the_other_endpoint() {
    let (seen, _rx) = mpsc::unbounded_channel();
    let bad = reading_agent("bad", StatusCode::SERVICE_UNAVAILABLE, seen).await;
    let good = Agent::named("good").await;
    let yaml = manifest(
        &[bad.address(), good.address()],
        "{attempts: 2, statuses: [503]}",
        "{}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..6 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "good");
    }
    // Round robin sends at least every other first attempt to the failing agent.
    assert!(bad.requests() >= 3, "bad saw {}", bad.requests());
    assert_eq!(good.requests(), 6);
    assert_eq!(retries(&proxy, "sent"), bad.requests() as f64);
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_a_live_endpoint() {
    let live = Agent::named("live").await;
    let yaml = manifest(
        &[dead_address().await, live.address()],
        "{attempts: 2}",
        "{}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..6 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "live");
    }
    assert_eq!(live.requests(), 6);
    assert!(retries(&proxy, "sent") >= 3.0);
    assert_eq!(
        proxy.metric("sluice_proxy_errors_total{reason=\"upstream_connect\"}"),
        None
    );
}

#[tokio::test]
async fn a_connection_reset_before_any_response_byte_is_retried() {
    // Reads the request head, then closes the connection without a byte of answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let resetting = listener.local_addr().expect("address").to_string();
    let (resets_tx, mut resets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            resets_tx.send(()).expect("test is listening");
        }
    });
    let live = Agent::named("live").await;
    let yaml = manifest(&[resetting, live.address()], "{attempts: 2}", "{}");
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..4 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "live");
    }
    let mut reset_count = 0;
    while resets.try_recv().is_ok() {
        reset_count += 1;
    }
    assert!(
        reset_count >= 2,
        "the resetting endpoint was tried {reset_count} times"
    );
    assert_eq!(retries(&proxy, "sent"), f64::from(reset_count));
}

#[tokio::test]
async fn a_small_post_is_replayed_with_the_identical_body() {
    let (seen, mut bodies) = mpsc::unbounded_channel();
    let bad = reading_agent("bad", StatusCode::SERVICE_UNAVAILABLE, seen).await;
    let good = echo_agent().await;
    let yaml = manifest(
        &[bad.address(), good.address()],
        "{attempts: 2, statuses: [503]}",
        "{}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for i in 0..4u8 {
        // Streamed in three chunks of different bytes, no length known up front.
        let chunks: Vec<Bytes> = (0..3u8)
            .map(|k| Bytes::from(vec![b'a' + i * 3 + k; 1000 + usize::from(k)]))
            .collect();
        let expected: Vec<u8> = chunks.concat();
        let (tx, body) = channel_body();
        for chunk in chunks {
            tx.send(chunk).await.expect("send");
        }
        drop(tx);
        let reply = send(&c, post(&proxy, body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            &reply.body[..],
            &expected[..],
            "the echo agent got the whole body"
        );
        while let Ok((_, got)) = bodies.try_recv() {
            assert_eq!(
                &got[..],
                &expected[..],
                "the failing agent got the whole body"
            );
        }
    }
    assert!(bad.requests() >= 2);
    assert_eq!(good.requests(), 4);
    assert_eq!(retries(&proxy, "sent"), bad.requests() as f64);
}

#[tokio::test]
async fn a_post_over_the_replay_cap_is_not_replayed() {
    let Failing {
        a,
        b,
        proxy,
        mut bodies,
    } = two_failing("{attempts: 2, statuses: [503]}").await;
    let c = client();

    // 100 KiB: more than the 64 KiB kept for replay.
    let large = vec![b'x'; 100 * 1024];
    let reply = send(&c, post(&proxy, full(large.clone()))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let (first, got) = bodies.try_recv().expect("one agent got the body");
    assert_eq!(got.len(), large.len());
    assert_eq!(
        reply.text(),
        first,
        "the client gets the first agent's answer"
    );
    assert!(bodies.try_recv().is_err(), "the body was not sent again");
    assert_eq!(a.requests() + b.requests(), 1);
    assert_eq!(retries(&proxy, "not_replayable"), 1.0);
    assert_eq!(retries(&proxy, "sent"), 0.0);

    // The same pool replays a body within the cap: both agents see it.
    let small = vec![b'y'; 1024];
    let reply = send(&c, post(&proxy, full(small.clone()))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let mut seen_by = Vec::new();
    while let Ok((name, got)) = bodies.try_recv() {
        assert_eq!(&got[..], &small[..]);
        seen_by.push(name);
    }
    seen_by.sort_unstable();
    assert_eq!(seen_by, ["a", "b"]);
    assert_eq!(retries(&proxy, "sent"), 1.0);
    assert_eq!(
        retries(&proxy, "no_endpoint"),
        1.0,
        "no third endpoint to try"
    );
}

#[tokio::test]
async fn a_timeout_is_never_retried() {
    // Both agents hold every request until the test ends.
    let (_gate, gate_rx) = watch::channel(false);
    let hanging = || {
        let gate_rx = gate_rx.clone();
        Agent::start(move |_req| {
            let mut gate_rx = gate_rx.clone();
            async move {
                let _ = gate_rx.wait_for(|open| *open).await;
                Response::new(full("late"))
            }
        })
    };
    let (a, b) = (hanging().await, hanging().await);
    // Each attempt would get its own 300 ms to the first byte, well within the
    // request's 30 s: a retry would have reached the other agent.
    let yaml = manifest(
        &[a.address(), b.address()],
        "{attempts: 2, statuses: [503]}",
        "{firstByte: 300ms, request: 30s}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;

    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "upstream_timeout");
    assert_eq!(a.requests() + b.requests(), 1);
    for result in ["sent", "not_replayable", "no_endpoint", "budget_exhausted"] {
        assert_eq!(retries(&proxy, result), 0.0, "{result}");
    }
}

#[tokio::test]
async fn a_retry_beyond_the_budget_is_not_sent() {
    // Ratio 0 and no reserve: the budget never holds a retry.
    let Failing {
        a,
        b,
        proxy,
        mut bodies,
    } = two_failing("{attempts: 2, statuses: [503], budgetRatio: 0, minRetriesPerSecond: 0}").await;

    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let (first, _) = bodies.try_recv().expect("one agent answered");
    assert_eq!(reply.text(), first);
    assert_eq!(a.requests() + b.requests(), 1);
    assert_eq!(retries(&proxy, "budget_exhausted"), 1.0);
    assert_eq!(retries(&proxy, "sent"), 0.0);
}

/// `sluice_endpoint_requests_total` is "requests sent to each endpoint"; a retry the
/// budget refuses was never sent, so it must not count.
#[tokio::test]
async fn a_retry_refused_by_the_budget_is_not_counted_as_sent_to_an_endpoint() {
    let Failing {
        a,
        b,
        proxy,
        bodies: _bodies,
    } = two_failing("{attempts: 2, statuses: [503], budgetRatio: 0, minRetriesPerSecond: 0}").await;

    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let counted = |agent: &Agent| {
        proxy
            .metric(&format!(
                "sluice_endpoint_requests_total{{endpoint=\"{}\",pool=\"{POOL}\"}}",
                agent.address()
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(counted(&a), a.requests() as f64);
    assert_eq!(counted(&b), b.requests() as f64);
}

#[tokio::test]
async fn a_retry_after_an_early_answer_gets_the_rest_of_a_streaming_body() {
    // The first agent refuses at once, before the client has finished its body (an
    // overloaded agent does not read what it will not serve); the retry must still
    // get the whole body, including what the client sends after the refusal.
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let early = Agent::start({
        let arrived_tx = arrived_tx.clone();
        move |_req| {
            let arrived_tx = arrived_tx.clone();
            async move {
                arrived_tx.send("early").expect("test is listening");
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(full("early"))
                    .expect("response")
            }
        }
    })
    .await;
    let good = Agent::start(move |req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        async move {
            arrived_tx.send("good").expect("test is listening");
            let body = req
                .into_body()
                .collect()
                .await
                .expect("request body")
                .to_bytes();
            Response::new(full(body))
        }
    })
    .await;
    let yaml = manifest(
        &[early.address(), good.address()],
        "{attempts: 2, statuses: [503]}",
        "{}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let mut retried = 0;
    for _ in 0..4 {
        let (tx, body) = channel_body();
        let pending = tokio::spawn({
            let c = c.clone();
            let req = post(&proxy, body);
            async move { send(&c, req).await }
        });
        tx.send(Bytes::from_static(b"first;")).await.expect("send");
        if next_arrival(&mut arrived).await == "early" {
            // The retry is under way: the good agent has the request and waits for
            // the rest of the body, which the client only sends now.
            assert_eq!(next_arrival(&mut arrived).await, "good");
            retried += 1;
        }
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        let reply = support::within("reply", pending).await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "first;second");
    }
    assert!(
        retried >= 2,
        "round robin tried the early agent first {retried} times"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_refills_as_its_window_passes() {
    // Ratio 0 and one retry a second in reserve: over the budget's 10 s window, ten
    // retries in all; each counts until the window has passed.
    let Failing {
        proxy,
        bodies: _bodies,
        ..
    } = two_failing("{attempts: 1, statuses: [503], budgetRatio: 0, minRetriesPerSecond: 1}").await;
    let c = client();
    for _ in 0..12 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(retries(&proxy, "sent"), 10.0);
    assert_eq!(retries(&proxy, "budget_exhausted"), 2.0);

    // Still spent 9 s later; all back once the window has passed.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    get(&c, &proxy.url("/")).await;
    assert_eq!(retries(&proxy, "budget_exhausted"), 3.0);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for _ in 0..10 {
        get(&c, &proxy.url("/")).await;
    }
    assert_eq!(retries(&proxy, "sent"), 20.0);
    assert_eq!(retries(&proxy, "budget_exhausted"), 3.0);
}

#[tokio::test]
async fn a_post_that_reached_an_agent_is_not_sent_again_when_the_connection_breaks() {
    // Reads the request head and body, then closes the connection without a byte of
    // answer: the agent may have acted on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let resetting = listener.local_addr().expect("address").to_string();
    let (resets_tx, mut resets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            resets_tx.send(()).expect("test is listening");
        }
    });
    let live = Agent::named("live").await;
    let yaml = manifest(&[resetting, live.address()], "{attempts: 2}", "{}");
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let mut broken = 0;
    for _ in 0..4 {
        let reply = send(&c, post(&proxy, full("charge the card"))).await;
        if reply.status == StatusCode::BAD_GATEWAY {
            assert_eq!(reply.error_code(), "upstream_error");
            broken += 1;
        } else {
            assert_eq!(reply.text(), "live");
        }
    }
    let mut reached = 0;
    while resets.try_recv().is_ok() {
        reached += 1;
    }
    assert!(reached >= 1, "round robin reached the breaking agent");
    assert_eq!(
        broken, reached,
        "every POST that reached it failed, none was resent"
    );
    assert_eq!(retries(&proxy, "sent"), 0.0);
}
