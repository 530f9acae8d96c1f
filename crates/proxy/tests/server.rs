//! The listener's shutdown: once told to stop, the proxy lets a response that is still
//! streaming finish before `serve` returns.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use support::{Agent, Proxy, catch_all, channel_body, next_chunk, open_stream, pool, within};
use tokio::sync::{Notify, oneshot};

#[tokio::test]
async fn shutdown_drains_a_streaming_response_before_serve_returns() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let agent = Agent::start(move |_req| {
        let gate = gate.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                if tx.send(Bytes::from_static(b"first")).await.is_ok() {
                    gate.notified().await;
                    let _ = tx.send(Bytes::from_static(b"last")).await;
                }
            });
            Response::new(body)
        }
    })
    .await;
    let (stop, stopped) = oneshot::channel::<()>();
    let (proxy, served) = Proxy::start_until(async {
        let _ = stopped.await;
    })
    .await;
    proxy
        .store
        .apply(catch_all(pool("demo/stream", &[agent.address()], 30_000)))
        .expect("table applies");

    let mut body = open_stream(&proxy, "/stream").await;
    assert_eq!(
        within("first chunk", next_chunk(&mut body))
            .await
            .as_deref(),
        Some(&b"first"[..])
    );

    stop.send(()).expect("serve is running");
    // Let the serve task (woken by `stop`, on this single-threaded runtime) act on the
    // signal. The response cannot end before `release`, so neither can the drain.
    tokio::task::yield_now().await;
    assert!(!served.is_finished(), "serve returned before the drain");
    release.notify_one();
    assert_eq!(
        within("last chunk", next_chunk(&mut body)).await.as_deref(),
        Some(&b"last"[..])
    );
    assert!(within("end of body", next_chunk(&mut body)).await.is_none());
    within("serve returns after the drain", served)
        .await
        .expect("serve task");
}
