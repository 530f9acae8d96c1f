//! What an operator reads off a running proxy, through real requests: the callers
//! limited most (metrics and `/limits/top`), pool utilisation and the age of the table
//! in force.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use support::{
    Agent, PoolYaml, Proxy, client, compile_yaml, empty, get, holding_agent, metric, send, settle,
};
use tokio::sync::{mpsc, watch};

/// Consumers `a`, `b` and `c` (API keys `key-a-0123456789abcdef`, …) and a policy
/// allowing each one request a minute on the pool.
fn limited(agent: &Agent) -> String {
    let mut yaml = PoolYaml::new("chat").agents(&[agent]).yaml();
    for name in ["a", "b", "c"] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\n\
             metadata: {{name: {name}, namespace: demo, labels: {{sluice.dev/consumer: {name}}}}}\n\
             stringData: {{api-key: key-{name}-0123456789abcdef}}\n"
        ));
    }
    yaml.push_str(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
         metadata: {name: per-consumer, namespace: demo}\n\
         spec:\n  targetRefs: [{kind: AgentPool, name: chat}]\n  key: {type: Consumer}\n\
         \x20 tiers: [{name: standard, limits: [{requests: 1, period: 1m}]}]\n",
    );
    yaml
}

async fn call(proxy: &Proxy, consumer: &str) -> StatusCode {
    let req = Request::get(proxy.url("/"))
        .header(
            "authorization",
            format!("Bearer key-{consumer}-0123456789abcdef"),
        )
        .body(empty())
        .expect("request");
    send(&client(), req).await.status
}

#[tokio::test]
async fn the_consumers_refused_most_are_named_and_the_rest_summed() {
    let agent = Agent::named("agent").await;
    let proxy = Proxy::with_store(|b| b.top_consumers(2), compile_yaml(&limited(&agent))).await;
    for (consumer, times) in [("a", 4), ("b", 3), ("c", 2)] {
        for i in 0..times {
            let expected = if i == 0 {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(call(&proxy, consumer).await, expected, "{consumer} #{i}");
        }
    }
    let top = |consumer: &str| {
        proxy.metric(&format!(
            "sluice_ratelimit_top_consumers{{consumer=\"{consumer}\",kind=\"refused\",policy=\"demo/per-consumer\"}}"
        ))
    };
    // Consumers from Secrets are named after their namespace.
    assert_eq!(top("demo/a"), Some(3.0));
    assert_eq!(top("demo/b"), Some(2.0));
    assert_eq!(top("demo/c"), None, "beyond the top two");
    assert_eq!(top("other"), Some(1.0));

    let admin = proxy.start_admin().await;
    let reply = get(&client(), &format!("http://{admin}/limits/top")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    let policy = &json["policies"][0];
    assert_eq!(policy["policy"], "demo/per-consumer");
    assert_eq!(policy["consumers"][0]["consumer"], "demo/a");
    assert_eq!(policy["consumers"][0]["refused"], 3);
    assert_eq!(policy["consumers"][0]["remaining"], 0);
    assert_eq!(policy["consumers"][0]["overcount"], 0);
    assert_eq!(policy["other"]["refused"], 1);
}

#[tokio::test(start_paused = true)]
async fn utilisation_and_table_age_are_read_at_scrape_time() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let agent = holding_agent("held", arrived_tx, gate_rx).await;
    let table = PoolYaml::new("busy")
        .agents(&[&agent])
        .backend("maxConcurrency: 4")
        .table();
    let proxy = Proxy::with_table(table).await;
    let admin = proxy.start_admin().await;
    let scrape = || async {
        let reply = get(&client(), &format!("http://{admin}/metrics")).await;
        String::from_utf8(reply.body.to_vec()).expect("utf-8")
    };

    let held = {
        let req = Request::get(proxy.url("/"))
            .header("x-hold", "1")
            .body(empty())
            .expect("request");
        tokio::spawn(client().request(req))
    };
    assert_eq!(arrived.recv().await, Some("held"));
    tokio::time::sleep(Duration::from_secs(25)).await;
    let text = scrape().await;
    assert_eq!(
        metric(&text, "sluice_pool_utilisation{pool=\"demo/busy\"}"),
        Some(0.25),
        "one request in flight over four slots"
    );
    let age = metric(&text, "sluice_route_table_age_seconds").expect("age");
    assert!((25.0..25.1).contains(&age), "{age}");

    gate.send_replace(true);
    let resp = support::within("held request", held)
        .await
        .expect("task")
        .expect("response");
    assert!(resp.status().is_success());
    drop(resp);
    settle().await;
    assert_eq!(
        metric(
            &scrape().await,
            "sluice_pool_utilisation{pool=\"demo/busy\"}"
        ),
        Some(0.0)
    );
}
