//! Integration tests: a real agent on 127.0.0.1:0 and a hyper client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_demo_agent::respond::ChannelBody;
use sluice_demo_agent::{AgentConfig, LogNormal, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;
type HttpClient = Client<HttpConnector, Body>;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        self.task
            .await
            .expect("server task")
            .expect("server result");
    }
}

fn config(name: &str) -> AgentConfig {
    AgentConfig {
        name: name.to_owned(),
        latency: LogNormal::constant(Duration::from_millis(1)),
        capacity: 16,
        capabilities: vec!["chat".to_owned(), "search".to_owned()],
        token_interval: Duration::from_millis(1),
        seed: Some(7),
        fail_rate: 0.0,
        request_log: None,
    }
}

async fn start(config: AgentConfig) -> Running {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("bind");
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn empty() -> Body {
    Empty::new().boxed()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

async fn send(client: &HttpClient, request: Request<Body>) -> Response<Incoming> {
    client.request(request).await.expect("request")
}

async fn read(response: Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts, bytes)
}

async fn get(client: &HttpClient, url: &str) -> (http::response::Parts, Bytes) {
    read(send(client, Request::get(url).body(empty()).unwrap()).await).await
}

fn chat_request(url: &str, body: Value) -> Request<Body> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn agent_of(parts: &http::response::Parts) -> &str {
    parts.headers["x-demo-agent"].to_str().unwrap()
}

/// Splits a server-sent-event stream into its `data:` payloads.
fn events(stream: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(stream).unwrap();
    assert!(text.ends_with("\n\n"), "stream must end with a blank line");
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// Checks a complete chat stream and returns the streamed text.
fn check_stream(stream: &[u8], expected_usage: Value) -> String {
    let events = events(stream);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], expected_usage);
    let (finish, tokens) = rest.split_last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let mut text = String::new();
    for (i, chunk) in tokens.iter().enumerate() {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], tokens[0]["id"]);
        let delta = &chunk["choices"][0]["delta"];
        assert_eq!(
            delta.get("role").is_some(),
            i == 0,
            "role only on the first"
        );
        text.push_str(delta["content"].as_str().unwrap());
    }
    text
}

#[tokio::test]
async fn healthz_and_capabilities() {
    let agent = start(config("agent-h")).await;
    let client = http1();

    let (parts, body) = get(&client, &agent.url("/healthz")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    assert_eq!(agent_of(&parts), "agent-h");

    let (parts, body) = get(&client, &agent.url("/capabilities")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-demo-agent-capabilities"], "chat,search");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"agent": "agent-h", "capabilities": ["chat", "search"]})
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn echo_describes_the_request() {
    let agent = start(config("agent-e")).await;
    let payload = vec![b'x'; 100_000];
    let request = Request::builder()
        .method(Method::PUT)
        .uri(agent.url("/agents/echo/hello?x=1"))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-single", "value")
        .body(full(payload))
        .unwrap();
    let (parts, body) = read(send(&http1(), request).await).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(agent_of(&parts), "agent-e");
    assert_eq!(parts.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["agent"], "agent-e");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/agents/echo/hello");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(body["headers"]["x-multi"], "one, two");
    assert_eq!(body["headers"]["x-single"], "value");
    assert_eq!(body["headers"]["host"], agent.addr.to_string());
    assert_eq!(body["headers"]["content-length"], "100000");
    assert_eq!(body["body_length"], 100_000);
    assert_eq!(body["capabilities"], json!(["chat", "search"]));

    let (parts, body) = get(&http1(), &agent.url("/v1/chat/completions")).await;
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "GET on the chat path is echoed"
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["query"].is_null());
    assert_eq!(body["body_length"], 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn echo_counts_a_chunked_body() {
    let agent = start(config("agent-c")).await;
    let (tx, body) = ChannelBody::new(1);
    let request = Request::post(agent.url("/upload"))
        .body(body.boxed())
        .unwrap();
    let client = http1();
    let response = tokio::spawn(async move { client.request(request).await });
    for size in [10, 1_000, 65_536] {
        tx.send(Bytes::from(vec![0u8; size])).await.unwrap();
    }
    drop(tx);
    let (parts, body) = read(response.await.unwrap().unwrap()).await;
    assert_eq!(parts.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["headers"]["transfer-encoding"], "chunked");
    assert_eq!(body["body_length"], 10 + 1_000 + 65_536);
    agent.shutdown().await;
}

#[tokio::test]
async fn serves_h2c() {
    let agent = start(config("agent-2")).await;
    let client = h2c();
    let request = Request::post(agent.url("/h2/path?q"))
        .body(full("12345"))
        .unwrap();
    let (parts, body) = read(send(&client, request).await).await;
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(agent_of(&parts), "agent-2");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["version"], "HTTP/2.0");
    assert_eq!(body["body_length"], 5);
    assert_eq!(body["query"], "q");

    let request = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "over h2"}]}),
    );
    let (parts, body) = read(send(&client, request).await).await;
    assert_eq!(parts.status, StatusCode::OK);
    let text = check_stream(
        &body,
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}),
    );
    assert_eq!(text, "echo from agent-2: over h2");
    agent.shutdown().await;
}

#[tokio::test]
async fn chat_completion_with_usage() {
    let agent = start(config("agent-1")).await;
    let request = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({
            "model": "demo-model",
            "messages": [
                {"role": "system", "content": "You are a helpful agent."},
                {"role": "user", "content": "What is the weather today?"}
            ]
        }),
    );
    let (parts, body) = read(send(&http1(), request).await).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(agent_of(&parts), "agent-1");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "demo-model");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "echo from agent-1: What is the weather today?"
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18})
    );

    let request = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 5}),
    );
    let (_, body) = read(send(&http1(), request).await).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo from agent-1: a b"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    agent.shutdown().await;
}

#[tokio::test]
async fn chat_streams_token_by_token() {
    let interval = Duration::from_millis(200);
    let agent = start(AgentConfig {
        token_interval: interval,
        ..config("s")
    })
    .await;
    let request = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let response = send(&http1(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-demo-agent"], "s");
    let mut body = response.into_body();

    // The first token arrives on its own, and the stream is not finished yet: the
    // next token is only produced one interval later.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = Instant::now();
    let first_events = events(&first);
    assert_eq!(first_events.len(), 1, "only the first token so far");
    let chunk: Value = serde_json::from_str(&first_events[0]).unwrap();
    assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunk["choices"][0]["delta"]["content"], "echo");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), body.frame())
            .await
            .is_err(),
        "the body must still be open right after the first token"
    );

    let mut stream = first.to_vec();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            stream.extend_from_slice(&data);
        }
    }
    // "echo from s: hi" is four tokens, so three intervals separate first and last.
    let spread = first_at.elapsed();
    assert!(
        spread >= interval * 3 - Duration::from_millis(60),
        "tokens arrived too close together: {spread:?}"
    );
    let text = check_stream(
        &stream,
        json!({"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}),
    );
    assert_eq!(text, "echo from s: hi");
    agent.shutdown().await;
}

#[tokio::test]
async fn capacity_limit_answers_503() {
    let agent = start(AgentConfig {
        capacity: 1,
        token_interval: Duration::from_millis(200),
        ..config("busy")
    })
    .await;
    let client = http1();
    // A slow streamed completion holds the only slot until its body ends.
    let slow = send(
        &client,
        chat_request(
            &agent.url("/v1/chat/completions"),
            json!({"stream": true, "messages": [{"role": "user", "content": "slow"}]}),
        ),
    )
    .await;
    assert_eq!(slow.status(), StatusCode::OK);

    let (parts, body) = get(&client, &agent.url("/agents/x")).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(parts.headers["retry-after"], "1");
    assert_eq!(agent_of(&parts), "busy");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded");

    let request = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "x"}]}),
    );
    let (parts, _) = read(send(&client, request).await).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);

    let (parts, _) = get(&client, &agent.url("/healthz")).await;
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "health checks bypass capacity"
    );

    // Once the slow stream is complete, the slot is free again.
    let (_, stream) = read(slow).await;
    assert!(stream.ends_with(b"data: [DONE]\n\n"));
    let (parts, _) = get(&client, &agent.url("/agents/x")).await;
    assert_eq!(parts.status, StatusCode::OK);
    agent.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let agent = start(config("agent-b")).await;
    let url = agent.url("/v1/chat/completions");
    let bad_bodies = [
        full("{not json"),
        full(r#"{"model": "m"}"#),
        full(r#"{"messages": "hello"}"#),
        full(r#"{"messages": []}"#),
    ];
    for body in bad_bodies {
        let request = Request::post(&url).body(body).unwrap();
        let (parts, body) = read(send(&http1(), request).await).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST);
        assert_eq!(agent_of(&parts), "agent-b");
        assert_eq!(parts.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn the_request_log_records_each_request_as_it_arrives() {
    let path = std::env::temp_dir().join(format!("demo-agent-requests-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let agent = start(AgentConfig {
        request_log: Some(path.clone()),
        ..config("logged")
    })
    .await;
    let client = http1();
    let post = Request::post(agent.url("/agents/echo/a"))
        .header("x-request-id", "post-1")
        .body(full("body"))
        .unwrap();
    assert_eq!(
        read(send(&client, post).await).await.0.status,
        StatusCode::OK
    );
    get(&client, &agent.url("/healthz")).await;
    get(&client, &agent.url("/other")).await;
    let chat = chat_request(
        &agent.url("/v1/chat/completions"),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    read(send(&client, chat).await).await;
    agent.shutdown().await;
    let log = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        log,
        "post-1 POST /agents/echo/a\n- GET /other\n- POST /v1/chat/completions\n"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn fail_rate_one_always_fails() {
    let agent = start(AgentConfig {
        fail_rate: 1.0,
        ..config("agent-f")
    })
    .await;
    let client = http1();
    for path in ["/agents/x", "/other"] {
        let (parts, body) = get(&client, &agent.url(path)).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(agent_of(&parts), "agent-f");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "simulated_failure");
    }
    let (parts, _) = get(&client, &agent.url("/healthz")).await;
    assert_eq!(parts.status, StatusCode::OK);
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_streams() {
    let agent = start(AgentConfig {
        token_interval: Duration::from_millis(50),
        ..config("drain")
    })
    .await;
    let response = send(
        &http1(),
        chat_request(
            &agent.url("/v1/chat/completions"),
            json!({"stream": true, "messages": [{"role": "user", "content": "a b c"}]}),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let addr = agent.addr;
    let stopping = tokio::spawn(agent.shutdown());
    let (_, stream) = read(response).await;
    let text = check_stream(
        &stream,
        json!({"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}),
    );
    assert_eq!(text, "echo from drain: a b c");
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener is closed after shutdown"
    );
}
