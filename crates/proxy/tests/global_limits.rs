//! `scope: Global` through two proxy replicas sharing a real `redis-server`: an LLM
//! token budget is one budget for both (reserved and settled in Redis), and a soft
//! limit warns from the share used across both.

mod support;

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use sluice_proxy::forward::ForwardConfig;
use sluice_proxy::{Metrics, TableStore};
use support::redis::RedisServer;
use support::{Agent, PoolYaml, Proxy, Reply, client, compile_yaml, empty, full, send, within};

/// Two replicas over one Redis, serving pool `demo/echo` over `agent` with the
/// RatePolicy `demo/shared` whose spec ends with `spec`.
async fn replicas(redis: &RedisServer, agent: &Agent, spec: &str) -> [Proxy; 2] {
    let yaml = PoolYaml::new("echo").agents(&[agent]).yaml()
        + "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
           metadata: {name: shared, namespace: demo}\n\
           spec:\n  targetRefs: [{kind: AgentPool, name: echo}]\n  key: {type: Pool}\n  \
           scope: Global\n  failureMode: Closed\n"
        + spec;
    let table = compile_yaml(&yaml);
    let mut out = Vec::new();
    for _ in 0..2 {
        let metrics = Metrics::new();
        let store = TableStore::builder(metrics.clone())
            .redis(Some(support::redis::backend(redis)))
            .build();
        store.apply(table.clone()).expect("table applies");
        out.push(Proxy::over(Arc::new(store), metrics, ForwardConfig::default()).await);
    }
    out.try_into().map_err(|_| ()).expect("two replicas")
}

/// A chat completion asking for up to `max_tokens`.
async fn ask(proxy: &Proxy, max_tokens: u32) -> Reply {
    let req = Request::post(proxy.url("/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(format!(r#"{{"max_tokens":{max_tokens}}}"#)))
        .expect("request");
    send(&client(), req).await
}

fn tokens(proxy: &Proxy, kind: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_ratelimit_tokens_total{{kind=\"{kind}\",policy=\"demo/shared\",tier=\"all\"}}"
        ))
        .unwrap_or(0.0)
}

/// Waits, without sleeping, until `done` holds: a settlement in a global budget runs
/// in a task of its own, after the response.
async fn until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// A budget of 1000 tokens an hour for the whole pool.
const BUDGET: &str = "  tiers: [{name: all, tokenLimits: [{tokens: 1000, period: 1h}]}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_token_budget_is_one_budget_for_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The agent reports no usage: every reservation stays charged in full.
    let agent = Agent::named("echo").await;
    let [a, b] = replicas(&redis, &agent, BUDGET).await;
    assert_eq!(ask(&a, 600).await.status, StatusCode::OK);
    let refused = ask(&b, 600).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "400 are left"
    );
    assert_eq!(refused.json()["error"]["policy"], "demo/shared");
    assert_eq!(ask(&b, 400).await.status, StatusCode::OK);
    assert_eq!(ask(&a, 1).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(tokens(&a, "reserved") + tokens(&b, "reserved"), 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_token_budget_settles_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The agent reports 9 tokens used.
    let agent = Agent::start(|_req| async {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(r#"{"usage":{"total_tokens":9}}"#))
            .expect("response")
    })
    .await;
    let [a, b] = replicas(&redis, &agent, BUDGET).await;
    assert_eq!(ask(&a, 600).await.status, StatusCode::OK);
    until("replica a settles", || tokens(&a, "refunded") == 591.0).await;
    // 991 are free for the other replica: the refund reached Redis.
    assert_eq!(ask(&b, 990).await.status, StatusCode::OK);
    until("replica b settles", || tokens(&b, "refunded") == 981.0).await;
    assert_eq!(ask(&a, 982).await.status, StatusCode::OK, "18 of 1000 used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_soft_limit_warns_from_the_share_used_by_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let agent = Agent::named("echo").await;
    let spec = "  softLimit: {percent: 50}\n  \
                tiers: [{name: all, limits: [{requests: 10, period: 1h}]}]\n";
    let [a, b] = replicas(&redis, &agent, spec).await;
    let get = |proxy: &Proxy| {
        let req = Request::get(proxy.url("/")).body(empty()).expect("request");
        let c = client();
        async move { send(&c, req).await }
    };
    for i in 0..4 {
        let reply = get(if i % 2 == 0 { &a } else { &b }).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.headers.get("x-sluice-ratelimit-warning").is_none(),
            "{i}"
        );
        assert!(reply.headers.contains_key("ratelimit-policy"));
    }
    // The fifth request, on either replica, uses half of the shared limit.
    let fifth = get(&a).await;
    assert_eq!(
        fifth.headers["x-sluice-ratelimit-warning"],
        "\"demo/shared/all\";q=10;reached=50%"
    );
    assert_eq!(fifth.headers["ratelimit"], "\"demo/shared/all\";r=5;t=1800");
}
