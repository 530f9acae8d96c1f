//! Rate limits through the proxy: what a limit is kept per, and that a refused request
//! charges none of the limits it met.

mod support;

use http::{Request, StatusCode};
use sluice_proxy::forward::ForwardConfig;
use sluice_proxy::hygiene::TrustedProxies;
use support::{Agent, PoolYaml, Proxy, Reply, client, compile_yaml, empty, send};

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
