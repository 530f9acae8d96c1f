//! OTLP export through real requests (a build with the `otlp` feature): a request
//! becomes a server span and its attempt a client span, posted as protobuf to a
//! stand-in collector, with the ids the caller and the agent saw.
#![cfg(feature = "otlp")]

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sluice_proxy::{Forwarder, Metrics, TableStore, otlp};
use support::{Agent, PoolYaml, client, full, send, within};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A stand-in OTLP/HTTP collector: each POST's path, content type and body.
async fn collector() -> (String, mpsc::UnboundedReceiver<(String, String, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = Agent::start(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let content_type = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().expect("ascii").to_owned())
                .unwrap_or_default();
            let body = req.into_body().collect().await.expect("body").to_bytes();
            tx.send((path, content_type, body)).expect("test listening");
            Response::new(full(""))
        }
    })
    .await;
    (format!("http://{}", agent.addr), rx)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_request_and_its_attempt_are_exported_as_spans() {
    let (endpoint, mut posts) = collector().await;
    let seen = Arc::new(Mutex::new(String::new()));
    let agent = {
        let seen = seen.clone();
        Agent::start(move |req: Request<Incoming>| {
            let tp = req.headers()["traceparent"]
                .to_str()
                .expect("ascii")
                .to_owned();
            *seen.lock().expect("lock") = tp;
            async move { Response::new(full("hi")) }
        })
        .await
    };
    let metrics = Metrics::new();
    let store = Arc::new(TableStore::new(metrics.clone()));
    store
        .apply(PoolYaml::new("chat").agents(&[&agent]).table())
        .expect("table applies");
    let queue = otlp::start(&endpoint, &metrics).expect("exporter");
    let forwarder = Arc::new(Forwarder::new(store, metrics.clone()).with_spans(queue));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(sluice_proxy::server::serve(
        listener,
        sluice_proxy::server::ServerConfig::default(),
        move |req, peer| Arc::clone(&forwarder).handle(req, peer),
        std::future::pending::<()>(),
    ));

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get(format!("http://{addr}/hello"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(support::empty())
        .expect("request");
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);

    let (path, content_type, body) = within("an OTLP export", posts.recv())
        .await
        .expect("collector running");
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    // Protobuf carries ids as raw bytes: the trace, the caller's span (the server
    // span's parent) and the attempt span the agent was told about are all there.
    let forwarded = seen.lock().expect("lock").clone();
    let attempt = forwarded.split('-').nth(2).expect("parent id").to_owned();
    assert!(contains(&body, &unhex(trace)));
    assert!(contains(&body, &unhex("00f067aa0ba902b7")));
    assert!(contains(&body, &unhex(&attempt)));
    assert!(contains(&body, b"GET demo/chat"));
    assert!(contains(&body, b"sluice-proxy"));
    assert_eq!(
        support::metric(&metrics.render(), "sluice_trace_spans_dropped_total"),
        Some(0.0)
    );
}
