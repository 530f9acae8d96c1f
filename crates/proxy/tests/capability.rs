//! Capability routing through real requests: a request naming a capability in
//! `x-agent-capability` goes only to pools, and within a pool only to backends, that
//! advertise it; a capability nobody has is a `404 no_capability` naming it.

mod support;

use http::{Request, StatusCode, header};
use support::{Agent, Proxy, Reply, TestClient, client, compile_yaml, empty, send};

async fn ask(c: &TestClient, proxy: &Proxy, capability: Option<&str>) -> Reply {
    let mut req = Request::get(proxy.url("/agents/run"));
    if let Some(capability) = capability {
        req = req.header("x-agent-capability", capability);
    }
    send(c, req.body(empty()).expect("request")).await
}

#[tokio::test]
async fn a_request_naming_a_capability_goes_to_the_pool_that_has_it() {
    let general = Agent::named("general").await;
    let summarizer = Agent::named("summarizer").await;
    // Same match; `general` comes first by key, so it takes requests naming nothing.
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: general, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /agents}}]\n  backends: [{{endpoints: [\"{}\"]}}]\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: summarizer, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /agents}}]\n  capabilities: [summarize]\n\
         \x20 backends: [{{endpoints: [\"{}\"]}}]\n",
        general.address(),
        summarizer.address()
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..3 {
        let reply = ask(&c, &proxy, Some("summarize")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "summarizer");
        let reply = ask(&c, &proxy, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "general");
    }

    let reply = ask(&c, &proxy, Some("nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(reply.error_code(), "no_capability");
    let message = reply.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("\"nope\""), "{message}");
    assert!(!reply.headers.contains_key(header::RETRY_AFTER));
    assert_eq!((general.requests(), summarizer.requests()), (3, 3));
    assert_eq!(
        proxy.metric("sluice_proxy_errors_total{reason=\"no_capability\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn only_the_backend_with_the_capability_is_picked() {
    let plain = Agent::named("plain").await;
    let gpu = Agent::named("gpu").await;
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: mixed, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /agents}}]\n  capabilities: [chat]\n\
         \x20 backends:\n\
         \x20 - endpoints: [\"{}\"]\n\
         \x20 - endpoints: [\"{}\"]\n    capabilities: [summarize]\n",
        plain.address(),
        gpu.address()
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    for _ in 0..10 {
        let reply = ask(&c, &proxy, Some("summarize")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "gpu");
    }
    assert_eq!(plain.requests(), 0);
    // A pool-wide capability, or none, is served by both backends.
    for capability in [Some("chat"), None] {
        let before = (plain.requests(), gpu.requests());
        for _ in 0..10 {
            assert_eq!(ask(&c, &proxy, capability).await.status, StatusCode::OK);
        }
        assert_eq!(plain.requests() - before.0, 5, "{capability:?}");
        assert_eq!(gpu.requests() - before.1, 5, "{capability:?}");
    }
    assert_eq!(
        ask(&c, &proxy, Some("nope")).await.error_code(),
        "no_capability"
    );
}

#[tokio::test]
async fn a_pool_whose_capable_backend_has_no_endpoint_names_the_capability() {
    let plain = Agent::named("plain").await;
    // The summarize backend is a Service with no EndpointSlices yet.
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: mixed, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /agents}}]\n\
         \x20 backends:\n\
         \x20 - endpoints: [\"{}\"]\n\
         \x20 - service: {{name: summarizer, port: 8000}}\n    capabilities: [summarize]\n",
        plain.address()
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let reply = ask(&client(), &proxy, Some("summarize")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "no_endpoints");
    let message = reply.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains("with capability \"summarize\""),
        "{message}"
    );
    assert_eq!(
        plain.requests(),
        0,
        "a backend without the capability never serves it"
    );
}
