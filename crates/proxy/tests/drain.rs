//! Graceful drain through real requests: when a table marks an endpoint terminating
//! (EndpointSlice `ready: false, serving: true, terminating: true`), or drops it
//! altogether, it gets no new request while the request it is serving finishes
//! normally: a rollout without a single failed request.

mod support;

use http::{Request, StatusCode};
use sluice_api::RouteTable;
use support::{Agent, Proxy, client, compile_yaml, empty, get, holding_agent, send, within};
use tokio::sync::{mpsc, watch};

const POOL: &str = "demo/rollout";

/// The pool over Service `rollout`, with one EndpointSlice per `(agent, conditions)`.
fn table(slices: &[(&Agent, &str)]) -> RouteTable {
    let mut yaml = String::from(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {name: rollout, namespace: demo}\n\
         spec:\n  matches: [{pathPrefix: /}]\n\
         \x20 backends: [{service: {name: rollout, port: http}}]\n",
    );
    for (i, (agent, conditions)) in slices.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: rollout-{i}, namespace: demo, labels: {{kubernetes.io/service-name: rollout}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\n\
             endpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {conditions}\n",
            agent.addr.port()
        ));
    }
    compile_yaml(&yaml)
}

const READY: &str = "{ready: true}";
const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";

/// Starts a held request on `old` (the only endpoint), applies `next`, and checks
/// that 20 new requests all go to `new` while the held one completes.
async fn drain_with(next: impl FnOnce(&Agent, &Agent) -> RouteTable) {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let old = holding_agent("old", arrived_tx.clone(), gate_rx.clone()).await;
    let new = holding_agent("new", arrived_tx, gate_rx).await;
    let proxy = Proxy::with_table(table(&[(&old, READY)])).await;
    let c = client();

    let held = tokio::spawn({
        let c = c.clone();
        let req = Request::get(proxy.url("/long-task"))
            .header("x-hold", "1")
            .body(empty())
            .expect("request");
        async move { send(&c, req).await }
    });
    let first = within("the long request arrives", arrived.recv()).await;
    assert_eq!(first, Some("old"));

    proxy.store.apply(next(&old, &new)).expect("table applies");
    for _ in 0..20 {
        let reply = get(&c, &proxy.url("/short")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "new");
    }
    assert_eq!(
        old.requests(),
        1,
        "only the request started before the drain"
    );
    assert!(!held.is_finished(), "the long request is still in flight");

    gate.send_replace(true);
    let reply = within("the long request completes", held)
        .await
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "old");
    let requests = |code: &str| {
        proxy
            .metric(&format!(
                "sluice_requests_total{{code=\"{code}\",pool=\"{POOL}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(requests("2xx"), 21.0);
    for code in ["4xx", "5xx"] {
        assert_eq!(requests(code), 0.0, "{code}");
    }
    // A removed endpoint's series is dropped with it; a draining one's reads 0.
    assert_eq!(
        proxy
            .metric(&format!(
                "sluice_endpoint_in_flight{{endpoint=\"{}\",pool=\"{POOL}\"}}",
                old.address()
            ))
            .unwrap_or(0.0),
        0.0,
        "the drained endpoint's slot was released"
    );
    assert_eq!(
        proxy.metric(&format!("sluice_requests_in_flight{{pool=\"{POOL}\"}}")),
        Some(0.0),
        "no request of the pool is left in flight"
    );
}

#[tokio::test]
async fn a_terminating_endpoint_finishes_its_request_and_gets_no_new_one() {
    drain_with(|old, new| {
        let table = table(&[(old, TERMINATING), (new, READY)]);
        let pool = table.pool(POOL).expect("pool");
        let old_address = old.address();
        assert!(
            pool.endpoints()
                .any(|e| e.address == old_address && e.terminating),
            "{pool:?}"
        );
        table
    })
    .await;
}

#[tokio::test]
async fn a_removed_endpoint_finishes_its_request() {
    drain_with(|_old, new| table(&[(new, READY)])).await;
}
