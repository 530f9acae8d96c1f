//! Rate limits through the proxy: what a limit is kept per, and that a refused request
//! charges none of the limits it met: not the request limits when a token budget
//! refuses, not a token budget when a request limit refuses, not a global limit when
//! a local one refuses, and not the primary pool's limits when a request falls back.

mod support;

use std::sync::Arc;

use http::{Request, StatusCode};
use sluice_proxy::forward::ForwardConfig;
use sluice_proxy::hygiene::TrustedProxies;
use sluice_proxy::{Metrics, TableStore};
use support::{Agent, PoolYaml, Proxy, Reply, client, compile_yaml, empty, full, get, send};

/// A RatePolicy `demo/NAME` on pool `demo/echo` with `spec` (YAML lines, indented).
fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  targetRefs: [{{kind: AgentPool, name: echo}}]\n{spec}"
    )
}

/// A proxy that believes `X-Forwarded-For` from loopback, so a test can speak as
/// several clients, in front of pool `echo` and `policies`.
async fn proxy(agent: &Agent, policies: &str) -> Proxy {
    let yaml = PoolYaml::new("echo").agents(&[agent]).yaml() + policies;
    let config = ForwardConfig {
        trusted_proxies: TrustedProxies::parse(["127.0.0.1"]).expect("CIDR"),
        ..ForwardConfig::default()
    };
    Proxy::with_config(config, compile_yaml(&yaml)).await
}

/// `GET /` from client `ip` with `headers`.
async fn get_as(proxy: &Proxy, ip: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(proxy.url("/")).header("x-forwarded-for", ip);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(&client(), req.body(empty()).expect("request")).await
}

/// The statuses of `n` requests from `ip` with `headers`.
async fn statuses(proxy: &Proxy, n: usize, ip: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_as(proxy, ip, headers).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_header_key_counts_per_value_and_callers_without_it_per_client_ip() {
    let agent = Agent::named("echo").await;
    let spec = "  key: {type: Header, header: x-team}\n  \
                tiers: [{name: all, limits: [{requests: 2, period: 1m}]}]\n";
    let proxy = proxy(&agent, &policy("per-team", spec)).await;

    // One bucket per team, wherever its requests come from.
    let team_a = [("x-team", "a")];
    assert_eq!(
        statuses(&proxy, 2, "198.51.100.1", &team_a).await,
        [200, 200]
    );
    assert_eq!(statuses(&proxy, 1, "198.51.100.2", &team_a).await, [429]);
    assert_eq!(
        statuses(&proxy, 3, "198.51.100.1", &[("x-team", "b")]).await,
        [200, 200, 429]
    );

    // Without the header (or with it empty), each client has its own bucket: leaving
    // the header out neither escapes the limit nor shares one bucket with everyone.
    assert_eq!(
        statuses(&proxy, 3, "198.51.100.3", &[]).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&proxy, 1, "198.51.100.3", &[("x-team", "")]).await,
        [429]
    );
    assert_eq!(statuses(&proxy, 2, "198.51.100.4", &[]).await, [200, 200]);
    assert_eq!(agent.requests(), 8);
    let refused = get_as(&proxy, "198.51.100.4", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "rate_limited");
}

/// A chat completion asking for up to `max_tokens`, from user `user`.
async fn ask(proxy: &Proxy, user: &str, max_tokens: u32) -> u16 {
    let req = Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-user", user)
        .body(full(format!(r#"{{"max_tokens":{max_tokens}}}"#)))
        .expect("request");
    send(&client(), req).await.status.as_u16()
}

/// A pool-wide budget of 1000 tokens an hour, and 2 requests an hour per user.
fn tokens_and_requests() -> String {
    policy(
        "tokens",
        "  key: {type: Pool}\n  tiers: [{name: all, tokenLimits: [{tokens: 1000, period: 1h}]}]\n",
    ) + &policy(
        "per-user",
        "  key: {type: Header, header: x-user}\n  \
         tiers: [{name: all, limits: [{requests: 2, period: 1h}]}]\n",
    )
}

#[tokio::test]
async fn a_token_budget_refusal_charges_no_request_limit() {
    // The agent reports no usage: each admitted reservation stays charged in full.
    let agent = Agent::named("echo").await;
    let proxy = proxy(&agent, &tokens_and_requests()).await;
    assert_eq!(ask(&proxy, "a", 600).await, 200);
    // 600 + 600 is over the budget: refused, and user a's second request is left.
    assert_eq!(ask(&proxy, "a", 600).await, 429);
    assert_eq!(ask(&proxy, "a", 100).await, 200);
    assert_eq!(ask(&proxy, "a", 100).await, 429, "two requests an hour");
    let reserved = proxy.metric(
        "sluice_ratelimit_tokens_total{kind=\"reserved\",policy=\"demo/tokens\",tier=\"all\"}",
    );
    assert_eq!(reserved, Some(700.0), "refused requests reserve nothing");
}

#[tokio::test]
async fn a_request_limit_refusal_reserves_no_tokens() {
    let agent = Agent::named("echo").await;
    let proxy = proxy(&agent, &tokens_and_requests()).await;
    assert_eq!(ask(&proxy, "a", 400).await, 200);
    assert_eq!(ask(&proxy, "a", 400).await, 200);
    // User a is out of requests: the reservation made first is given back.
    assert_eq!(ask(&proxy, "a", 200).await, 429);
    assert_eq!(ask(&proxy, "b", 200).await, 200, "200 of 1000 tokens left");
    assert_eq!(ask(&proxy, "c", 1).await, 429, "the budget is spent");
}

#[tokio::test]
async fn a_local_refusal_spends_no_global_token() {
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    let agent = Agent::named("echo").await;
    // Three requests an hour through every replica, one an hour per user here.
    let global = policy(
        "shared",
        "  key: {type: Pool}\n  scope: Global\n  failureMode: Closed\n  \
         tiers: [{name: all, limits: [{requests: 3, period: 1h}]}]\n",
    );
    let local = policy(
        "per-user",
        "  key: {type: Header, header: x-user}\n  \
         tiers: [{name: all, limits: [{requests: 1, period: 1h}]}]\n",
    );
    let yaml = PoolYaml::new("echo").agents(&[&agent]).yaml() + &global + &local;
    let metrics = Metrics::new();
    let store = TableStore::builder(metrics.clone())
        .redis(Some(support::redis::backend(&redis)))
        .build();
    store.apply(compile_yaml(&yaml)).expect("table applies");
    let proxy = Proxy::over(Arc::new(store), metrics, ForwardConfig::default()).await;
    let user = |u: &'static str| [("x-user", u)];
    assert_eq!(
        statuses(&proxy, 2, "203.0.113.1", &user("a")).await,
        [200, 429]
    );
    // The refused request took none of the three: two are left for b and c.
    assert_eq!(statuses(&proxy, 1, "203.0.113.1", &user("b")).await, [200]);
    assert_eq!(statuses(&proxy, 1, "203.0.113.1", &user("c")).await, [200]);
    assert_eq!(statuses(&proxy, 1, "203.0.113.1", &user("d")).await, [429]);
}

/// Pool `echo` without endpoints, falling back to `backup` over `agent`; `echo`
/// allows `primary` requests an hour and `backup` one.
fn primary_and_backup(agent: Option<&Agent>, backup: &Agent) -> String {
    let echo = match agent {
        Some(a) => PoolYaml::new("echo").agents(&[a]),
        None => PoolYaml::new("echo").endpoints(&[]),
    };
    let echo = echo.spec("fallback: {name: backup}").yaml().replace(
        "backends: [{endpoints: []}]",
        "backends: [{service: {name: missing, port: 80}}]",
    );
    let backup = PoolYaml::new("backup").prefix("/backup").agents(&[backup]);
    let limit = |name: &str, pool: &str, n: u32| {
        format!(
            "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
             metadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  targetRefs: [{{kind: AgentPool, name: {pool}}}]\n  key: {{type: Pool}}\n  \
             tiers: [{{name: all, limits: [{{requests: {n}, period: 1h}}]}}]\n"
        )
    };
    format!(
        "{echo}---\n{}{}{}",
        backup.yaml(),
        limit("primary", "echo", 2),
        limit("secondary", "backup", 1)
    )
}

#[tokio::test]
async fn a_request_that_falls_back_counts_against_the_fallback_only() {
    let agent = Agent::named("echo").await;
    let backup = Agent::named("backup").await;
    let proxy = Proxy::with_table(compile_yaml(&primary_and_backup(None, &backup))).await;
    let c = client();
    // The primary has no endpoint: the first request is served by the fallback, the
    // second refused by the fallback's limit, and neither keeps a charge on the
    // primary's.
    let first = get(&c, &proxy.url("/x")).await;
    assert_eq!((first.status, first.text()), (StatusCode::OK, "backup"));
    let second = get(&c, &proxy.url("/x")).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.json()["error"]["policy"], "demo/secondary");

    // Once the primary has an endpoint, its two requests an hour are all there.
    proxy
        .store
        .apply(compile_yaml(&primary_and_backup(Some(&agent), &backup)))
        .expect("table applies");
    assert_eq!(get(&c, &proxy.url("/x")).await.status, StatusCode::OK);
    assert_eq!(get(&c, &proxy.url("/x")).await.status, StatusCode::OK);
    let third = get(&c, &proxy.url("/x")).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.json()["error"]["policy"], "demo/primary");
}

#[tokio::test]
async fn a_dry_run_policy_counts_and_reports_but_never_refuses() {
    let agent = Agent::named("echo").await;
    let trial = |enforcement: &str| {
        policy(
            "trial",
            &format!(
                "  key: {{type: Header, header: x-user}}\n  enforcement: {enforcement}\n  \
                 tiers: [{{name: all, limits: [{{requests: 2, period: 1h}}]}}]\n"
            ),
        )
    };
    let proxy = proxy(&agent, &trial("DryRun")).await;
    let user = [("x-user", "a")];
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(get_as(&proxy, "203.0.113.1", &user).await);
    }
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(
        replies[..2]
            .iter()
            .all(|r| !r.headers.contains_key("x-sluice-ratelimit-dry-run"))
    );
    assert_eq!(
        replies[2].headers["x-sluice-ratelimit-dry-run"],
        "\"demo/trial/all\";q=2;w=3600"
    );
    // A dry run is not advertised as a limit clients should pace themselves by.
    assert!(!replies[2].headers.contains_key("ratelimit-policy"));
    let decisions = |result: &str| {
        proxy.metric(&format!(
            "sluice_ratelimit_decisions_total{{policy=\"demo/trial\",result=\"{result}\",tier=\"all\"}}"
        ))
    };
    assert_eq!(decisions("allowed"), Some(2.0));
    assert_eq!(decisions("dry_run_denied"), Some(1.0));
    assert_eq!(agent.requests(), 3);

    // Enforcing the same limit keeps what the dry run counted.
    proxy
        .store
        .apply(compile_yaml(
            &(PoolYaml::new("echo").agents(&[&agent]).yaml() + &trial("Enforce")),
        ))
        .expect("table applies");
    assert_eq!(
        get_as(&proxy, "203.0.113.1", &user).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_dry_run_policy_is_not_charged_by_a_refused_request() {
    let agent = Agent::named("echo").await;
    let enforced = policy(
        "enforced",
        "  key: {type: Pool}\n  tiers: [{name: all, limits: [{requests: 1, period: 1h}]}]\n",
    );
    let trial = policy(
        "trial",
        "  key: {type: Pool}\n  enforcement: DryRun\n  \
         tiers: [{name: all, limits: [{requests: 1, period: 1h}]}]\n",
    );
    let proxy = proxy(&agent, &(enforced + &trial)).await;
    let first = get_as(&proxy, "203.0.113.1", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(!first.headers.contains_key("x-sluice-ratelimit-dry-run"));
    assert_eq!(
        first.headers["ratelimit-policy"],
        "\"demo/enforced/all\";q=1;w=3600"
    );
    for _ in 0..3 {
        let refused = get_as(&proxy, "203.0.113.1", &[]).await;
        assert_eq!(refused.json()["error"]["policy"], "demo/enforced");
    }
    let trial_denied = proxy.metric(
        "sluice_ratelimit_decisions_total{policy=\"demo/trial\",result=\"dry_run_denied\",tier=\"all\"}",
    );
    assert_eq!(
        trial_denied, None,
        "refused requests never reach the dry run"
    );
}

#[tokio::test]
async fn a_dry_run_policy_warns_from_its_soft_limit() {
    let agent = Agent::named("echo").await;
    let trial = policy(
        "trial",
        "  key: {type: Pool}\n  enforcement: DryRun\n  softLimit: {percent: 50}\n  \
         tiers: [{name: all, limits: [{requests: 4, period: 1h}]}]\n",
    );
    let proxy = proxy(&agent, &trial).await;
    let first = get_as(&proxy, "203.0.113.1", &[]).await;
    assert!(!first.headers.contains_key("x-sluice-ratelimit-warning"));
    let second = get_as(&proxy, "203.0.113.1", &[]).await;
    assert_eq!(
        second.headers["x-sluice-ratelimit-warning"],
        "\"demo/trial/all\";q=4;reached=50%"
    );
}
