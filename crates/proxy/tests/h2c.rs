//! HTTP/2 to agents over cleartext (h2c, as gRPC agents speak) when the backend says
//! `protocol: H2c`: the request reaches an agent that only speaks HTTP/2, whatever the
//! client spoke to the proxy, and requests share one connection.

mod support;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{Agent, Proxy, client, compile_yaml, full, get, h2_client, send};

/// An h2c-only agent answering with the HTTP version and the body it received.
async fn h2c_agent() -> Agent {
    Agent::start_h2c(|req: Request<Incoming>| async move {
        let version = format!("{:?}", req.version());
        let body = req
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        Response::builder()
            .header("x-version", version)
            .body(full(body))
            .expect("response")
    })
    .await
}

fn manifest(agent: &Agent, protocol: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: grpc, namespace: demo}}\n\
         spec:\n  matches: [{{pathPrefix: /}}]\n\
         \x20 backends: [{{endpoints: [\"{}\"], protocol: {protocol}}}]\n",
        agent.address()
    )
}

#[tokio::test]
async fn an_h2c_backend_gets_http2() {
    let agent = h2c_agent().await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "H2c"))).await;

    for c in [client(), h2_client()] {
        for i in 0..3 {
            let body = format!("request {i}");
            let req = Request::post(proxy.url("/pkg.Service/Method"))
                .body(full(body.clone()))
                .expect("request");
            let reply = send(&c, req).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.headers["x-version"], "HTTP/2.0");
            assert_eq!(reply.text(), body);
        }
    }
    assert_eq!(agent.requests(), 6);
    assert_eq!(
        agent.connections(),
        1,
        "HTTP/2 requests share one connection"
    );
}

#[tokio::test]
async fn without_h2c_the_same_agent_cannot_be_reached() {
    // The control: an HTTP/1.1 backend cannot talk to the h2c-only agent.
    let agent = h2c_agent().await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&agent, "Http1"))).await;

    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(agent.requests(), 0);
}
