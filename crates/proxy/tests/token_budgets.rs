//! LLM token budgets through the proxy: each request reserves its `max_tokens`, and
//! the usage the agent reports gives back what it did not use, whether the answer is
//! one JSON document (with a known length) or a stream of server-sent events, to an
//! HTTP/1.1 or an HTTP/2 client.
//!
//! Real time: a budget of 1000 tokens a minute drains one token every 60 ms, and the
//! few milliseconds these tests take leave every refund whole.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use sluice_proxy::access_log::AccessLogConfig;
use support::{Agent, PoolYaml, Proxy, TestClient, client, compile_yaml, full, h2_client, send};

/// 1000 tokens a minute for the whole pool `demo/chat`.
const BUDGET: &str = "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
    metadata: {name: tokens, namespace: demo}\n\
    spec:\n  targetRefs: [{kind: AgentPool, name: chat}]\n  key: {type: Pool}\n\
    \x20 tiers: [{name: all, tokenLimits: [{tokens: 1000, period: 1m}]}]\n";

/// A chat completion that used 9 tokens, as one JSON document.
const JSON_ANSWER: &str = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#;

/// The same answer streamed: the usage comes in the last event before `[DONE]`.
const SSE_ANSWER: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
    data: {\"choices\":[],\"usage\":{\"total_tokens\":9}}\n\ndata: [DONE]\n\n";

/// An agent answering every request with `body` as `content_type`.
async fn agent(content_type: &'static str, body: &'static str) -> Agent {
    Agent::start(move |_req| async move {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(full(body))
            .expect("response")
    })
    .await
}

/// A chat completion asking for up to 400 tokens.
fn completion(proxy: &Proxy, stream: bool) -> Request<support::TestBody> {
    Request::post(proxy.url("/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(format!(
            r#"{{"model":"m","max_tokens":400,"stream":{stream},"messages":[]}}"#
        ))))
        .expect("request")
}

fn tokens(proxy: &Proxy, kind: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_ratelimit_tokens_total{{kind=\"{kind}\",policy=\"demo/tokens\",tier=\"all\"}}"
        ))
        .unwrap_or(0.0)
}

/// Five requests of 400 tokens each fit a budget of 1000 when each uses 9: every
/// answer gives back the 391 it did not use.
async fn five_requests_fit(client: TestClient, content_type: &'static str, body: &'static str) {
    let agent = agent(content_type, body).await;
    let yaml = PoolYaml::new("chat").agents(&[&agent]).yaml() + BUDGET;
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    for i in 0..5 {
        let reply = send(
            &client,
            completion(&proxy, content_type != "application/json"),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        assert_eq!(reply.text(), body);
    }
    assert_eq!(tokens(&proxy, "reserved"), 2000.0);
    assert_eq!(tokens(&proxy, "refunded"), 5.0 * 391.0);
    // The pool's LLM tokens, for an anonymous caller (no tier).
    let llm = |kind: &str| {
        proxy.metric(&format!(
            "sluice_llm_tokens_total{{kind=\"{kind}\",pool=\"demo/chat\",tier=\"\"}}"
        ))
    };
    assert_eq!(llm("reserved"), Some(2000.0));
    assert_eq!(llm("used"), Some(45.0));
}

#[tokio::test]
async fn a_json_answer_settles_for_an_http1_client() {
    five_requests_fit(client(), "application/json", JSON_ANSWER).await;
}

#[tokio::test]
async fn a_json_answer_settles_for_an_http2_client() {
    five_requests_fit(h2_client(), "application/json", JSON_ANSWER).await;
}

#[tokio::test]
async fn a_streamed_answer_settles_for_an_http1_client() {
    five_requests_fit(client(), "text/event-stream", SSE_ANSWER).await;
}

#[tokio::test]
async fn a_streamed_answer_settles_for_an_http2_client() {
    five_requests_fit(h2_client(), "text/event-stream", SSE_ANSWER).await;
}

#[tokio::test]
async fn a_soft_limit_warns_from_its_share_of_a_token_budget() {
    let agent = agent("application/json", JSON_ANSWER).await;
    let soft = BUDGET.replace(
        "  key: {type: Pool}\n",
        "  key: {type: Pool}\n  softLimit: {percent: 50}\n",
    );
    let yaml = PoolYaml::new("chat").agents(&[&agent]).yaml() + &soft;
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let first = send(&client(), completion(&proxy, false)).await;
    assert!(first.headers.get("x-sluice-ratelimit-warning").is_none());
    assert_eq!(
        first.headers["ratelimit-policy"],
        "\"demo/tokens/all\";q=1000;w=60"
    );
    // 400 reserved with 9 already used: 409 of 1000 is short of half.
    let second = send(&client(), completion(&proxy, false)).await;
    assert!(second.headers.get("x-sluice-ratelimit-warning").is_none());
    // Another request asking for 500 reaches it.
    let req = Request::post(proxy.url("/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(r#"{"max_tokens":500}"#))
        .expect("request");
    let third = send(&client(), req).await;
    assert_eq!(
        third.headers["x-sluice-ratelimit-warning"],
        "\"demo/tokens/all\";q=1000;reached=50%"
    );
}

#[tokio::test]
async fn the_access_log_has_the_tokens_reserved_and_used_and_the_budget_left() {
    let agent = agent("application/json", JSON_ANSWER).await;
    let yaml = PoolYaml::new("chat").agents(&[&agent]).yaml() + BUDGET;
    let (proxy, mut lines) =
        Proxy::with_access_log(compile_yaml(&yaml), AccessLogConfig::default()).await;
    let reply = send(&client(), completion(&proxy, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let line = lines.next_json().await;
    assert_eq!(line["tokens_reserved"], 400);
    assert_eq!(line["tokens_used"], 9);
    // The token budget is the binding limit: 600 of 1000 were left at admission.
    assert_eq!(line["ratelimit"]["policy"], "demo/tokens");
    assert_eq!(line["ratelimit"]["tier"], "all");
    assert_eq!(line["ratelimit"]["remaining"], 600);
    // A stream whose agent reports no usage keeps its reservation, and says so.
    let silent = Agent::start(|_req| async {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(full("data: {}\n\ndata: [DONE]\n\n"))
            .expect("response")
    })
    .await;
    let yaml = PoolYaml::new("chat").agents(&[&silent]).yaml() + BUDGET;
    let (proxy, mut lines) =
        Proxy::with_access_log(compile_yaml(&yaml), AccessLogConfig::default()).await;
    let reply = send(&client(), completion(&proxy, true)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let line = lines.next_json().await;
    assert_eq!(line["tokens_reserved"], 400);
    assert!(line.get("tokens_used").is_none(), "{line}");
}
