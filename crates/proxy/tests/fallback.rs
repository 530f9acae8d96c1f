//! Fallback pools through real requests: a pool with no live endpoint (none resolved,
//! only draining ones, all failing their health check, or all ejected) hands its
//! requests to its fallback pool, along a chain if need be; without a fallback the
//! client gets `503 no_endpoints`. A request that waited in a pool follows the newest
//! table's fallback.

mod support;

use std::sync::Arc;

use http::{Response, StatusCode, header};
use support::{Agent, Proxy, client, compile_yaml, full, get, settle, within};
use tokio::sync::Notify;

/// An AgentPool in namespace `demo` on `path` with `backends` (a YAML flow sequence)
/// and extra spec lines.
fn pool(name: &str, path: &str, backends: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: {path}}}]\n  backends: {backends}\n{extra}---\n"
    )
}

/// Pool `primary` on `/` over `backends` (with the spec lines `extra`), falling back
/// to pool `backup` on `/backup-only` over the agent `backup`.
fn primary_with_backup(backends: &str, extra: &str, backup: &Agent) -> String {
    [
        pool(
            "primary",
            "/",
            backends,
            &format!("{extra}  fallback: {{name: backup}}\n"),
        ),
        pool("backup", "/backup-only", &static_backend(backup), ""),
    ]
    .concat()
}

fn static_backend(agent: &Agent) -> String {
    format!("[{{endpoints: [\"{}\"]}}]", agent.address())
}

fn fallbacks(proxy: &Proxy, from: &str, to: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_fallbacks_total{{pool=\"demo/{from}\",to=\"demo/{to}\"}}"
        ))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_pool_without_endpoints_sends_to_its_fallback() {
    let backup = Agent::named("backup").await;
    // A Service with no EndpointSlices resolves to no endpoint (a warning, not an error).
    let yaml = primary_with_backup("[{service: {name: missing, port: 8080}}]", "", &backup);
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..3 {
        let reply = get(&c, &proxy.url("/chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "backup");
    }
    assert_eq!(fallbacks(&proxy, "primary", "backup"), 3.0);
}

#[tokio::test]
async fn without_a_fallback_a_pool_without_endpoints_answers_503() {
    let yaml = pool(
        "primary",
        "/",
        "[{service: {name: missing, port: 8080}}]",
        "",
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;

    let reply = get(&client(), &proxy.url("/chat")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "no_endpoints");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn fallbacks_chain_from_pool_to_pool() {
    // `b` has one endpoint, draining: a real agent that must get nothing.
    let draining = Agent::named("draining").await;
    let last = Agent::named("last").await;
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: b-1, namespace: demo, labels: {{kubernetes.io/service-name: b}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {}}}]\n\
         endpoints:\n- addresses: [\"127.0.0.1\"]\n\
         \x20 conditions: {{ready: false, serving: true, terminating: true}}\n---\n",
        draining.addr.port()
    );
    let yaml = [
        pool(
            "a",
            "/",
            "[{service: {name: missing, port: 8080}}]",
            "  fallback: {name: b}\n",
        ),
        pool(
            "b",
            "/b-only",
            "[{service: {name: b, port: http}}]",
            "  fallback: {name: c}\n",
        ),
        pool("c", "/c-only", &static_backend(&last), ""),
        slice,
    ]
    .concat();
    let table = compile_yaml(&yaml);
    let b = table.pool("demo/b").expect("pool b");
    assert!(b.endpoints().all(|e| e.terminating), "{b:?}");
    let proxy = Proxy::with_table(table).await;
    let c = client();

    for _ in 0..3 {
        let reply = get(&c, &proxy.url("/chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "last");
    }
    assert_eq!(fallbacks(&proxy, "a", "b"), 3.0);
    assert_eq!(fallbacks(&proxy, "b", "c"), 3.0);
    assert_eq!(draining.requests(), 0);
    // `b` also falls back for its own route.
    assert_eq!(get(&c, &proxy.url("/b-only")).await.text(), "last");
    assert_eq!(fallbacks(&proxy, "b", "c"), 4.0);
}

#[tokio::test(start_paused = true)]
async fn a_pool_whose_endpoints_fail_their_health_check_falls_back() {
    let sick = Agent::start(|req: http::Request<hyper::body::Incoming>| async move {
        let status = if req.uri().path() == "/healthz" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .body(full("sick"))
            .expect("response")
    })
    .await;
    let backup = Agent::named("backup").await;
    let yaml = primary_with_backup(
        &static_backend(&sick),
        "  healthCheck: {interval: 100ms, unhealthyThreshold: 1}\n",
        &backup,
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let healthy = format!(
        "sluice_endpoint_healthy{{endpoint=\"{}\",pool=\"demo/primary\"}}",
        sick.address()
    );
    // The first probe goes out at once and fails: one failure marks it unhealthy.
    settle().await;
    assert_eq!(proxy.metric(&healthy), Some(0.0), "marked unhealthy");

    let reply = get(&client(), &proxy.url("/chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "backup");
    assert_eq!(fallbacks(&proxy, "primary", "backup"), 1.0);
}

#[tokio::test]
async fn a_pool_whose_only_endpoint_is_ejected_falls_back() {
    let failing = Agent::start(|_req| async move {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(full("failing"))
            .expect("response")
    })
    .await;
    let backup = Agent::named("backup").await;
    let yaml = primary_with_backup(
        &static_backend(&failing),
        "  outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1m}\n",
        &backup,
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    // The failure reaches the client; it ejects the pool's only endpoint.
    let reply = get(&c, &proxy.url("/chat")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    for _ in 0..3 {
        let reply = get(&c, &proxy.url("/chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "backup");
    }
    assert_eq!(failing.requests(), 1);
    assert_eq!(fallbacks(&proxy, "primary", "backup"), 3.0);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_in_an_unchanged_pool_falls_back_by_the_newest_table() {
    // The primary's one endpoint holds the first request until released, then fails it
    // with a 500, which ejects the endpoint: the queued second request finds no live
    // endpoint and falls back.
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let slow = Agent::start(move |_req| {
        let held = held.clone();
        async move {
            held.notified().await;
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full("slow"))
                .expect("response")
        }
    })
    .await;
    let old_backup = Agent::named("old-backup").await;
    let new_backup = Agent::named("new-backup").await;
    let table = |backup: &Agent| {
        compile_yaml(&primary_with_backup(
            &format!(
                "[{{endpoints: [\"{}\"], maxConcurrency: 1}}]",
                slow.address()
            ),
            "  queue: {maxDepth: 4, timeout: 30s}\n  \
                     outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1m, \
                     maxEjectionTime: 2m, maxEjectionPercent: 100}\n",
            backup,
        ))
    };
    let proxy = Proxy::with_table(table(&old_backup)).await;
    let c = client();
    let send = |path: &str| {
        let (c, url) = (c.clone(), proxy.url(path));
        tokio::spawn(async move { get(&c, &url).await })
    };
    let first = send("/chat");
    settle().await;
    assert_eq!(slow.requests(), 1, "the first request is at the agent");
    let second = send("/chat");
    settle().await;
    assert_eq!(
        proxy.metric(r#"sluice_queue_depth{pool="demo/primary"}"#),
        Some(1.0),
        "the second request is queued"
    );

    // A new table changes the fallback pool only: the primary is shared, unchanged.
    proxy
        .store
        .apply(table(&new_backup))
        .expect("table applies");
    release.notify_one();

    let first = within("the first reply", first).await.expect("task");
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let second = within("the second reply", second).await.expect("task");
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(second.text(), "new-backup");
    assert_eq!(old_backup.requests(), 0);
}

#[tokio::test]
async fn a_fallback_pool_applies_its_own_rate_limits() {
    let backup = Agent::named("backup").await;
    let policy = "apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
        metadata: {name: backup-cap, namespace: demo}\n\
        spec:\n  targetRefs: [{kind: AgentPool, name: backup}]\n  key: {type: Pool}\n  \
        defaultTier: all\n  tiers: [{name: all, limits: [{requests: 2, period: 1m}]}]\n";
    let yaml = [
        primary_with_backup("[{service: {name: missing, port: 8080}}]", "", &backup),
        policy.to_owned(),
    ]
    .concat();
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..2 {
        let reply = get(&c, &proxy.url("/chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let refused = get(&c, &proxy.url("/chat")).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert!(
        refused.text().contains("demo/backup-cap"),
        "{}",
        refused.text()
    );
    assert_eq!(backup.requests(), 2);
    // The backup's own route shares the same counter.
    assert_eq!(
        get(&c, &proxy.url("/backup-only")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}
