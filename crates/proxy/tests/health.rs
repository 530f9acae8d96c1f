//! Active health checks through real sockets: an endpoint whose health path starts
//! failing is marked unhealthy by the checker and gets no more traffic; once it passes
//! again it is marked healthy and gets traffic again.
//!
//! The fake agent reports every probe with its answer. Probes of one round are
//! recorded before the next round starts, so once the test has seen a second probe
//! answered a given way, the first one's result is in force: no sleeping.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::{Agent, PoolYaml, Proxy, client, compile_yaml, full, get, settle, within};
use tokio::sync::mpsc;

const POOL: &str = "demo/checked";

/// An agent whose `/healthz` answers 200 or 500 as `passing` says, reporting each
/// probe's answer; other paths answer its name and are counted as traffic.
struct Checked {
    agent: Agent,
    passing: Arc<AtomicBool>,
    traffic: Arc<AtomicUsize>,
    probes: mpsc::UnboundedReceiver<bool>,
}

impl Checked {
    async fn start(name: &'static str) -> Self {
        let passing = Arc::new(AtomicBool::new(true));
        let traffic = Arc::new(AtomicUsize::new(0));
        let (probe_tx, probes) = mpsc::unbounded_channel();
        let agent = Agent::start({
            let (passing, traffic) = (passing.clone(), traffic.clone());
            move |req: Request<Incoming>| {
                let (passing, traffic, probe_tx) =
                    (passing.clone(), traffic.clone(), probe_tx.clone());
                async move {
                    if req.uri().path() == "/healthz" {
                        let ok = passing.load(Ordering::SeqCst);
                        // The test may have stopped listening; probes go on.
                        let _ = probe_tx.send(ok);
                        let status = if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::INTERNAL_SERVER_ERROR
                        };
                        return Response::builder()
                            .status(status)
                            .body(full(""))
                            .expect("response");
                    }
                    traffic.fetch_add(1, Ordering::SeqCst);
                    Response::new(full(name))
                }
            }
        })
        .await;
        Self {
            agent,
            passing,
            traffic,
            probes,
        }
    }

    /// Waits until two probes in a row got the answer `ok`: the first one's result
    /// has then been recorded.
    async fn until_probed_twice(&mut self, ok: bool) {
        let mut run = 0;
        while run < 2 {
            let got = within("health probe", self.probes.recv())
                .await
                .expect("agent running");
            run = if got == ok { run + 1 } else { 0 };
        }
    }

    fn traffic(&self) -> usize {
        self.traffic.load(Ordering::SeqCst)
    }
}

fn manifest(agents: &[&Agent]) -> String {
    PoolYaml::new("checked")
        .agents(agents)
        .spec(
            "healthCheck: {path: /healthz, interval: 100ms, timeout: 1s, \
             healthyThreshold: 1, unhealthyThreshold: 1}",
        )
        .yaml()
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_its_health_check_gets_no_traffic_until_it_passes() {
    let mut sick = Checked::start("sick").await;
    let well = Checked::start("well").await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&[&sick.agent, &well.agent]))).await;
    let healthy = format!(
        "sluice_endpoint_healthy{{endpoint=\"{}\",pool=\"{POOL}\"}}",
        sick.agent.address()
    );
    let c = client();

    // Both serve while both pass.
    sick.until_probed_twice(true).await;
    assert_eq!(proxy.metric(&healthy), Some(1.0));
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(sick.traffic(), 2);

    // Failing: marked unhealthy, and no more traffic.
    sick.passing.store(false, Ordering::SeqCst);
    sick.until_probed_twice(false).await;
    settle().await;
    assert_eq!(proxy.metric(&healthy), Some(0.0), "marked unhealthy");
    for _ in 0..10 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "well");
    }
    assert_eq!(sick.traffic(), 2);

    // Passing again: back in the pool.
    sick.passing.store(true, Ordering::SeqCst);
    sick.until_probed_twice(true).await;
    settle().await;
    assert_eq!(proxy.metric(&healthy), Some(1.0), "marked healthy");
    for _ in 0..10 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(sick.traffic(), 2 + 5, "round robin again over both");
    let transitions = |to: &str| {
        proxy.metric(&format!(
            "sluice_health_transitions_total{{pool=\"{POOL}\",to=\"{to}\"}}"
        ))
    };
    assert_eq!(transitions("unhealthy"), Some(1.0));
    assert_eq!(transitions("healthy"), Some(1.0));
}
