//! Load-aware and session-aware balancing through real requests: `ConsistentHash`
//! keeps a session on one agent and spreads sessions over agents, `LeastRequest`
//! steers around an agent busy with a request, `PeakEwma` prefers a fast agent and,
//! as its latency estimate decays (paused time), lets a slow one compete again.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::{Request, Response};
use support::{
    Agent, PoolYaml, Proxy, Reply, TestClient, client, compile_yaml, empty, full, get,
    holding_agent, send, within,
};
use tokio::sync::{mpsc, watch};

/// A pool over `agents` with the `loadBalancing` given as a YAML flow mapping.
fn manifest(agents: &[&Agent], load_balancing: &str) -> String {
    PoolYaml::new("agents")
        .agents(agents)
        .spec(&format!("loadBalancing: {load_balancing}"))
        .yaml()
}

async fn in_session(c: &TestClient, proxy: &Proxy, session: &str) -> String {
    let req = Request::get(proxy.url("/chat"))
        .header("X-Session", session)
        .body(empty())
        .expect("request");
    let reply = send(c, req).await;
    assert!(reply.status.is_success(), "{}", reply.text());
    reply.text().to_owned()
}

#[tokio::test]
async fn a_session_stays_on_one_agent_and_sessions_spread() {
    let agents = [
        Agent::named("a").await,
        Agent::named("b").await,
        Agent::named("c").await,
    ];
    let refs: Vec<&Agent> = agents.iter().collect();
    let yaml = manifest(
        &refs,
        "{algorithm: ConsistentHash, consistentHash: {header: x-session}}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let home = in_session(&c, &proxy, "session-42").await;
    for _ in 0..49 {
        assert_eq!(in_session(&c, &proxy, "session-42").await, home);
    }

    // Thirty sessions, twice each: each keeps its agent, and they do not all share one.
    let mut placed = BTreeMap::new();
    for round in 0..2 {
        for s in 0..30 {
            let id = format!("user-{s}");
            let agent = in_session(&c, &proxy, &id).await;
            let first = placed.entry(id.clone()).or_insert_with(|| agent.clone());
            assert_eq!(*first, agent, "{id} moved in round {round}");
        }
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "30 sessions all on {used:?}");
}

#[tokio::test]
async fn least_request_avoids_the_agent_busy_with_a_request() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let agents = [
        holding_agent("x", arrived_tx.clone(), gate_rx.clone()).await,
        holding_agent("y", arrived_tx, gate_rx).await,
    ];
    let yaml = manifest(&[&agents[0], &agents[1]], "{algorithm: LeastRequest}");
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let held = tokio::spawn({
        let c = c.clone();
        let req = Request::get(proxy.url("/slow"))
            .header("x-hold", "1")
            .body(empty())
            .expect("request");
        async move { send(&c, req).await }
    });
    let busy = within("the held request arrives", arrived.recv())
        .await
        .expect("agents running");
    let idle = if busy == "x" { "y" } else { "x" };

    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("/quick")).await.text(), idle);
    }
    let busy_agent = if busy == "x" { &agents[0] } else { &agents[1] };
    assert_eq!(busy_agent.requests(), 1, "only the held request");

    gate.send_replace(true);
    let reply = within("held request completes", held).await.expect("task");
    assert_eq!(reply.text(), busy);
}

#[tokio::test]
async fn peak_ewma_prefers_the_fast_agent() {
    let fast = Agent::named("fast").await;
    // The slow agent takes 150 ms to answer: its behaviour, not a wait in the test.
    let slow = Agent::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Response::new(full("slow"))
    })
    .await;
    let yaml = manifest(&[&fast, &slow], "{algorithm: PeakEwma}");
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..40 {
        assert!(get(&c, &proxy.url("/")).await.status.is_success());
    }
    // Round robin would split 20/20; once each agent has been seen, every pick of
    // two compares both, and the fast one costs far less.
    assert!(
        fast.requests() >= 30,
        "fast {} / slow {}",
        fast.requests(),
        slow.requests()
    );
}

/// An agent that answers with its `name` after `latency` (its behaviour; under paused
/// time the wait is exact and instant), holding requests carrying `x-hold` until the
/// gate opens.
async fn timed_agent(name: &'static str, latency: Duration, gate: watch::Receiver<bool>) -> Agent {
    Agent::start(move |req: Request<hyper::body::Incoming>| {
        let mut gate = gate.clone();
        async move {
            if req.headers().contains_key("x-hold") {
                gate.wait_for(|open| *open).await.expect("gate kept");
            }
            tokio::time::sleep(latency).await;
            Response::new(full(name))
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoints_latency_estimate_decays_until_it_competes_again() {
    // Neutral latency 1 s, decay 10 s. The slow agent answers in 5 s, the fast one in
    // 100 ms; the estimates relax toward 1 s between samples.
    let (gate, gate_rx) = watch::channel(false);
    let fast = timed_agent("fast", Duration::from_millis(100), gate_rx.clone()).await;
    let slow = timed_agent("slow", Duration::from_secs(5), gate_rx).await;
    let yaml = manifest(
        &[&fast, &slow],
        "{algorithm: PeakEwma, peakEwma: {decay: 10s, defaultLatency: 1s}}",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();
    let answered = |reply: Reply| {
        assert!(reply.status.is_success(), "{}", reply.text());
        reply.text().to_owned()
    };

    // Both start at the neutral 1 s: two requests at once go one to each (the second
    // sees the first's endpoint busy), and each agent's latency is sampled.
    let url = proxy.url("/");
    let (one, two) = tokio::join!(get(&c, &url), get(&c, &url));
    let mut first_two = [answered(one), answered(two)];
    first_two.sort();
    assert_eq!(first_two, ["fast", "slow"]);
    let sampled = fast.requests() + slow.requests();
    // A request held on the fast agent doubles its cost (latency × (in flight + 1)):
    // 2 × 100 ms is still far below the slow agent's fresh 5 s.
    // (Sent without the hang guard, which would fire while the clock moves 20 s.)
    let held = {
        let req = Request::get(proxy.url("/"))
            .header("x-hold", "1")
            .body(empty())
            .expect("request");
        tokio::spawn(c.request(req))
    };
    support::settle().await;
    assert_eq!(answered(get(&c, &proxy.url("/")).await), "fast");

    // 20 s later (two decay constants) the slow estimate has relaxed to
    // 1 s + 4 s × e⁻² ≈ 1.54 s, the idle fast one up to 1 s − 0.9 s × e⁻² ≈ 0.88 s,
    // which its held request doubles: the slow agent is the cheaper pick now. (Less
    // than the proxy's 30 s keep-alive timeout, so the client's connection stays.)
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(answered(get(&c, &proxy.url("/")).await), "slow");

    gate.send_replace(true);
    let held = within("held request", held)
        .await
        .expect("task")
        .expect("response");
    assert!(held.status().is_success());
    assert_eq!(fast.requests() + slow.requests(), sampled + 3);
}
