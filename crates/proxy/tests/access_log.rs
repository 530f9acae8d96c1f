//! The access log and trace context through real requests: one line per request once
//! its response body has ended (a stream's whole duration), refusals always logged
//! and successes sampled, no credential ever written; the caller's trace continued,
//! forwarded to the agent, and named in the log line and in the proxy's error bodies.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sluice_proxy::access_log::{AccessLogConfig, Format};
use support::{
    Agent, PoolYaml, Proxy, client, compile_yaml, empty, full, get, next_chunk, open_stream, send,
    streaming_agent,
};

/// An agent that answers `hello` and keeps the `traceparent` of each request.
async fn tracing_agent(seen: Arc<Mutex<Vec<String>>>) -> Agent {
    Agent::start(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().expect("ascii").to_owned())
                .unwrap_or_default();
            seen.lock().expect("lock").push(tp);
            Response::new(full("hello"))
        }
    })
    .await
}

fn json_log() -> AccessLogConfig {
    AccessLogConfig::default()
}

#[tokio::test]
async fn a_request_is_logged_once_its_response_ends_and_its_trace_reaches_the_agent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let agent = tracing_agent(seen.clone()).await;
    let table = PoolYaml::new("chat").agents(&[&agent]).table();
    let (proxy, mut lines) = Proxy::with_access_log(table, json_log()).await;

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::post(proxy.url("/v1/chat?token=secret"))
        .header("traceparent", caller)
        .header("authorization", "Bearer not-a-key-of-anyone")
        .header("x-api-key-like", "value-must-not-be-logged")
        .body(full("twelve bytes"))
        .expect("request");
    let reply = send(&client(), req).await;
    // An unknown key is refused: identity is never downgraded to anonymous.
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let refused = lines.next_json().await;
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["reason"], "unknown_key");
    assert_eq!(refused["auth"], "unknown_key");
    assert_eq!(refused["pool"], "demo/chat");
    assert_eq!(refused["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The error body names the same trace.
    assert_eq!(
        reply.json()["error"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let req = Request::post(proxy.url("/v1/chat?token=secret"))
        .header("traceparent", caller)
        .body(full("twelve bytes"))
        .expect("request");
    let reply = send(&client(), req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let line = lines.next_json().await;
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat", "no query string by default");
    assert_eq!(line["pool"], "demo/chat");
    assert_eq!(line["endpoint"], agent.address());
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["auth"], "anonymous");
    assert_eq!(line["bytes_in"], 12);
    assert_eq!(line["bytes_out"], 5);
    assert_eq!(line["retries"], 0);
    assert_eq!(line["completion"], "complete");
    assert!(line.get("reason").is_none());
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The agent sees the caller's trace, with the proxy's attempt as the parent.
    let forwarded = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7");
    assert_eq!(parts[3], "01");

    for text in [refused.to_string(), line.to_string()] {
        for secret in ["not-a-key-of-anyone", "value-must-not-be-logged", "secret"] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_trace() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let agent = tracing_agent(seen.clone()).await;
    let table = PoolYaml::new("chat").agents(&[&agent]).table();
    let (proxy, mut lines) = Proxy::with_access_log(table, json_log()).await;

    assert_eq!(get(&client(), &proxy.url("/")).await.status, StatusCode::OK);
    let line = lines.next_json().await;
    let trace = line["trace_id"].as_str().expect("trace id").to_owned();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, "0".repeat(32));
    let forwarded = seen.lock().expect("lock")[0].clone();
    assert!(
        forwarded.starts_with(&format!("00-{trace}-")),
        "{forwarded}"
    );

    let missing = get(&client(), &proxy.url("/nowhere")).await;
    assert_eq!(missing.status, StatusCode::OK, "a catch-all pool");
    let table = PoolYaml::new("chat")
        .prefix("/only")
        .agents(&[&agent])
        .table();
    proxy.store.apply(table).expect("table applies");
    let _ = lines.next_json().await;
    let not_found = get(&client(), &proxy.url("/nowhere")).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let line = lines.next_json().await;
    assert_eq!(line["reason"], "no_route");
    assert!(line.get("pool").is_none());
    assert_eq!(line["trace_id"], not_found.json()["error"]["trace_id"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_logged_with_its_whole_duration() {
    let (agent, tx) = streaming_agent("text/event-stream").await;
    let table = PoolYaml::new("stream").agents(&[&agent]).table();
    let (proxy, mut lines) = Proxy::with_access_log(table, json_log()).await;

    let mut body = open_stream(&proxy, "/").await;
    tx.send(Bytes::from_static(b"data: one\n\n"))
        .await
        .expect("send");
    assert!(next_chunk(&mut body).await.is_some());
    // Forty seconds of agent work between the two events.
    tokio::time::sleep(Duration::from_secs(40)).await;
    tx.send(Bytes::from_static(b"data: two\n\n"))
        .await
        .expect("send");
    drop(tx);
    while next_chunk(&mut body).await.is_some() {}

    let line = lines.next_json().await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_out"], 22);
    assert_eq!(line["completion"], "complete");
    let ttfb = line["ttfb_ms"].as_f64().expect("ttfb");
    let total = line["duration_ms"].as_f64().expect("duration");
    assert!(ttfb < 1000.0, "{ttfb}");
    assert!(total >= 40_000.0, "{total}");
    let series = |name: &str| proxy.metric(&format!("{name}{{pool=\"demo/stream\"}}"));
    assert_eq!(series("sluice_response_duration_seconds_count"), Some(1.0));
    assert_eq!(
        series("sluice_response_duration_seconds_sum").map(|s| s >= 40.0),
        Some(true)
    );
    assert_eq!(series("sluice_response_bytes_total"), Some(22.0));
}

#[tokio::test]
async fn successes_are_sampled_and_refusals_always_logged() {
    let agent = Agent::named("a").await;
    let table = PoolYaml::new("open")
        .prefix("/open")
        .agents(&[&agent])
        .table();
    let config = AccessLogConfig {
        format: Format::Text,
        sample: 0.0,
        ..AccessLogConfig::default()
    };
    let (proxy, mut lines) = Proxy::with_access_log(table, config).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &proxy.url("/open")).await.status, StatusCode::OK);
    }
    let reply = send(
        &c,
        Request::get(proxy.url("/closed"))
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // The successes were sampled out before reaching the writer: the first line is
    // the refusal.
    let line = lines.next_text().await;
    assert!(
        line.contains(" GET ") && line.contains("/closed status=404"),
        "{line}"
    );
    assert!(line.contains(" reason=no_route"), "{line}");
    assert_eq!(proxy.metric("sluice_access_log_lines_total"), Some(1.0));
    assert_eq!(proxy.metric("sluice_access_log_dropped_total"), Some(0.0));
}

#[tokio::test]
async fn a_line_names_the_binding_limit_with_what_it_has_left_and_a_dry_run_refusal() {
    let agent = Agent::named("echo").await;
    let policy = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
             metadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  targetRefs: [{{kind: AgentPool, name: echo}}]\n  key: {{type: Pool}}\n{spec}"
        )
    };
    let yaml = PoolYaml::new("echo").agents(&[&agent]).yaml()
        + &policy(
            "enforced",
            "  tiers: [{name: all, limits: [{requests: 5, period: 1h}]}]\n",
        )
        + &policy(
            "trial",
            "  enforcement: DryRun\n  tiers: [{name: all, limits: [{requests: 1, period: 1h}]}]\n",
        );
    let (proxy, mut lines) = Proxy::with_access_log(compile_yaml(&yaml), json_log()).await;
    for left in [4, 3] {
        assert_eq!(get(&client(), &proxy.url("/")).await.status, StatusCode::OK);
        let line = lines.next_json().await;
        assert_eq!(line["ratelimit"]["policy"], "demo/enforced");
        assert_eq!(line["ratelimit"]["remaining"], left);
        if left == 4 {
            assert!(line.get("dry_run").is_none(), "{line}");
        } else {
            // The dry-run policy would have refused the second request.
            assert_eq!(line["dry_run"], "\"demo/trial/all\";q=1;w=3600");
        }
        assert!(line.get("tokens_reserved").is_none(), "{line}");
    }
}
