//! Routing AI traffic through real requests: on the `model` of a JSON body (a name or
//! a prefix) and on the method, with the model renamed per backend; a request no model
//! route could match streams its body as before.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{
    Agent, Proxy, TestClient, channel_body, client, compile_yaml, empty, full, h2_client,
    next_chunk, send, within,
};
use tokio::sync::mpsc;

/// An agent that answers with its name, then the request's content length and body.
async fn echo(name: &'static str) -> Agent {
    Agent::start(move |req: Request<Incoming>| async move {
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let text = format!("{name} {length} {}", String::from_utf8_lossy(&body));
        Response::new(full(text))
    })
    .await
}

/// An AgentPool `demo/NAME` with `matches` and `backends` (YAML flow sequences).
fn pool(name: &str, matches: &str, backends: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  matches: {matches}\n  backends: {backends}\n---\n"
    )
}

fn endpoints(agent: &Agent) -> String {
    format!("[{{endpoints: [\"{}\"]}}]", agent.address())
}

/// `POST path` with a JSON `body`.
fn post(proxy: &Proxy, path: &str, body: &str) -> Request<support::TestBody> {
    Request::post(proxy.url(path))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_owned())))
        .expect("request")
}

async fn routes_on_model_and_method(c: TestClient) {
    let exact = echo("exact").await;
    let family = echo("family").await;
    let posts = echo("posts").await;
    let reads = echo("reads").await;
    let yaml = [
        pool(
            "exact",
            "[{pathPrefix: /v1/chat/completions, model: gpt-4o}]",
            &endpoints(&exact),
        ),
        pool(
            "family",
            "[{pathPrefix: /v1/chat/completions, modelPrefix: gpt-4}]",
            &endpoints(&family),
        ),
        pool(
            "posts",
            "[{pathPrefix: /v1, method: POST}]",
            &endpoints(&posts),
        ),
        pool(
            "reads",
            "[{pathPrefix: /v1, method: GET}]",
            &endpoints(&reads),
        ),
    ]
    .concat();
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let answered = |reply: &support::Reply| reply.text().split(' ').next().map(str::to_owned);

    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    let reply = send(&c, post(&proxy, "/v1/chat/completions", body)).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The body the route was read from goes on whole, with its length.
    assert_eq!(reply.text(), format!("exact {} {body}", body.len()));
    let reply = send(
        &c,
        post(&proxy, "/v1/chat/completions", r#"{"model":"gpt-4-turbo"}"#),
    )
    .await;
    assert_eq!(answered(&reply).as_deref(), Some("family"));
    for other in [r#"{"model":"llama-3"}"#, r#"{"messages":[]}"#, "not json"] {
        let reply = send(&c, post(&proxy, "/v1/chat/completions", other)).await;
        assert_eq!(answered(&reply).as_deref(), Some("posts"), "{other}");
    }
    let reply = send(
        &c,
        Request::get(proxy.url("/v1/models"))
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(answered(&reply).as_deref(), Some("reads"));
    let delete = Request::delete(proxy.url("/v1/models/x"))
        .body(empty())
        .expect("request");
    assert_eq!(send(&c, delete).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_route_on_model_and_method_over_http1() {
    routes_on_model_and_method(client()).await;
}

#[tokio::test]
async fn requests_route_on_model_and_method_over_http2() {
    routes_on_model_and_method(h2_client()).await;
}

#[tokio::test]
async fn each_backend_gets_the_model_by_its_own_name() {
    let provider = echo("provider").await;
    let local = echo("local").await;
    let yaml = pool(
        "chat",
        "[{pathPrefix: /v1/chat/completions, model: gpt-4o}]",
        &format!(
            "[{{endpoints: [\"{}\"]}}, {{endpoints: [\"{}\"], model: {{rewrite: llama-3.1-70b}}}}]",
            provider.address(),
            local.address()
        ),
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();
    let body = r#"{ "model" : "gpt-4o", "stream": false, "meta": {"model": "gpt-4o"} }"#;
    let mut seen = Vec::new();
    for _ in 0..2 {
        // A chunked request body: no length of its own.
        let (tx, streamed) = channel_body();
        let req = Request::post(proxy.url("/v1/chat/completions"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(streamed)
            .expect("request");
        tx.send(Bytes::from_static(body.as_bytes()))
            .await
            .expect("send");
        drop(tx);
        seen.push(send(&c, req).await.text().to_owned());
    }
    seen.sort();
    let rewritten =
        r#"{ "model" : "llama-3.1-70b", "stream": false, "meta": {"model": "gpt-4o"} }"#;
    assert_eq!(
        seen,
        [
            format!("local {} {rewritten}", rewritten.len()),
            // Read to route on its model, the body goes on whole, with its length.
            format!("provider {} {body}", body.len()),
        ]
    );
}

#[tokio::test]
async fn a_request_no_model_route_could_match_streams_its_body() {
    let exact = echo("exact").await;
    let (first_seen_tx, mut first_seen) = mpsc::unbounded_channel::<Bytes>();
    let upload = Agent::start(move |req: Request<Incoming>| {
        let first_seen_tx = first_seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let first = next_chunk(&mut body).await.expect("a first chunk");
            first_seen_tx.send(first).expect("test is listening");
            let _ = body.collect().await;
            Response::new(full("uploaded"))
        }
    })
    .await;
    let yaml = pool(
        "exact",
        "[{pathPrefix: /v1/chat/completions, model: gpt-4o}]",
        &endpoints(&exact),
    ) + &pool("upload", "[{pathPrefix: /upload}]", &endpoints(&upload));
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let (tx, body) = channel_body();
    let req = Request::post(proxy.url("/upload"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("request");
    let c = client();
    let pending = tokio::spawn(async move { c.request(req).await });
    tx.send(Bytes::from_static(b"{\"model\":"))
        .await
        .expect("send");
    // The agent has the first chunk while the client still holds the rest.
    let first = within("the first chunk", first_seen.recv()).await;
    assert_eq!(first.as_deref(), Some(&b"{\"model\":"[..]));
    tx.send(Bytes::from_static(b"\"gpt-4o\"}"))
        .await
        .expect("send");
    drop(tx);
    let resp = within("response", pending)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}
