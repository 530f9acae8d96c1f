//! The subscriber against a controller stand-in on `127.0.0.1:0`: it subscribes by
//! name over HTTP/2, applies, acknowledges and caches each table, and serves the
//! cached table when the controller is unreachable or silent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_api::RouteTable;
use sluice_api::push::{ACK_PATH, encode_line as line};
use tokio::sync::mpsc;

use super::{SubscriberConfig, run};
use crate::table_cache::TableCache;
use crate::{Metrics, TableStore};

fn table(prefix: &str, version: u64) -> RouteTable {
    crate::test_tables::one_pool(prefix, version)
}

/// A controller stand-in: records subscriptions (HTTP version and query) and
/// acknowledgements; the first subscription streams what the test sends.
struct Fake {
    url: Uri,
    subscriptions: mpsc::UnboundedReceiver<(Version, String)>,
    acks: mpsc::UnboundedReceiver<serde_json::Value>,
    lines: mpsc::UnboundedSender<Bytes>,
}

async fn fake_controller() -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("url");
    let (sub_tx, subscriptions) = mpsc::unbounded_channel();
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let (lines, line_rx) = mpsc::unbounded_channel::<Bytes>();
    let stream = Arc::new(Mutex::new(Some(line_rx)));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (sub_tx, ack_tx, stream) = (sub_tx.clone(), ack_tx.clone(), stream.clone());
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (sub_tx, ack_tx, stream) = (sub_tx.clone(), ack_tx.clone(), stream.clone());
                async move {
                    let mut resp = http::Response::new(
                        Full::new(Bytes::new())
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    if req.uri().path() == ACK_PATH {
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let _ = ack_tx.send(serde_json::from_slice(&body).expect("json"));
                        *resp.status_mut() = StatusCode::NO_CONTENT;
                    } else {
                        let _ = sub_tx.send((
                            req.version(),
                            req.uri().query().unwrap_or_default().to_owned(),
                        ));
                        let rx = stream.lock().expect("lock").take();
                        let frames = futures_util::stream::unfold(rx, |rx| async move {
                            let mut rx = rx?;
                            let line = rx.recv().await?;
                            Some((Ok::<_, Infallible>(Frame::data(line)), Some(rx)))
                        });
                        *resp.body_mut() = BodyExt::boxed(StreamBody::new(frames));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    Fake {
        url,
        subscriptions,
        acks,
        lines,
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

/// Bounded polling on a condition.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn temp_cache(name: &str) -> TableCache {
    let dir = std::env::temp_dir().join(format!("sluice-subscriber-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TableCache::new(dir.join("table.json"))
}

fn config(url: Uri, cache: &TableCache) -> SubscriberConfig {
    SubscriberConfig {
        proxy_id: "unit-proxy".parse().expect("a proxy name"),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        table_cache: Some(cache.clone()),
        ..SubscriberConfig::new(url)
    }
}

/// Runs the subscriber with `config` on a store of its own.
fn start(config: SubscriberConfig) -> (Arc<TableStore>, tokio::task::JoinHandle<()>) {
    let store = Arc::new(TableStore::new(Metrics::new()));
    (store.clone(), tokio::spawn(run(config, store)))
}

/// Waits until `cache` holds `table`.
async fn until_cached(cache: &TableCache, table: &RouteTable) {
    until("the cache to hold the table", || {
        (cache.load().ok().flatten().as_ref() == Some(table)).then_some(())
    })
    .await;
}

/// Ends the subscriber and removes the cache's folder.
fn finish(task: tokio::task::JoinHandle<()>, cache: &TableCache) {
    task.abort();
    let _ = std::fs::remove_dir_all(cache.path().parent().expect("dir"));
}

#[tokio::test]
async fn subscribes_by_name_acknowledges_and_caches_each_table() {
    let mut fake = fake_controller().await;
    let cache = temp_cache("ack");
    let (store, task) = start(config(fake.url.clone(), &cache));

    let (version, query) = recv(&mut fake.subscriptions, "the subscription").await;
    assert_eq!(version, Version::HTTP_2, "prior-knowledge HTTP/2");
    assert_eq!(query, "proxy=unit-proxy");
    let v1 = table("/a", 1);
    fake.lines.send(line(&v1)).expect("send");
    let ack = recv(&mut fake.acks, "the first acknowledgement").await;
    assert_eq!(
        ack,
        serde_json::json!({"proxy": "unit-proxy", "version": 1, "revision": v1.revision})
    );
    assert_eq!(store.load().map(|rt| rt.table.version), Some(1));

    let v2 = table("/b", 2);
    fake.lines
        .send(Bytes::from_static(b"\n"))
        .expect("heartbeat");
    fake.lines.send(line(&v2)).expect("send");
    let ack = recv(&mut fake.acks, "the second acknowledgement").await;
    assert_eq!(
        (&ack["version"], &ack["revision"]),
        (&2.into(), &v2.revision.clone().into())
    );
    until_cached(&cache, &v2).await;
    finish(task, &cache);
}

#[tokio::test]
async fn serves_the_cached_table_when_the_controller_is_unreachable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = closed.local_addr().expect("addr");
    drop(closed);
    let cache = temp_cache("unreachable");
    let cached = table("/cached", 7);
    cache.save_table(&cached).expect("saved");
    let mut cfg = config(format!("http://{addr}").parse().expect("url"), &cache);
    cfg.cache_grace = Duration::from_secs(3600);
    let (store, task) = start(cfg);
    let rt = until("the cached table", || store.load()).await;
    assert_eq!(rt.table, cached);
    finish(task, &cache);
}

#[tokio::test]
async fn a_silent_controller_gets_the_cache_served_after_the_grace_then_replaces_it() {
    let mut fake = fake_controller().await;
    let cache = temp_cache("grace");
    let cached = table("/cached", 7);
    cache.save_table(&cached).expect("saved");
    let mut cfg = config(fake.url.clone(), &cache);
    cfg.cache_grace = Duration::from_millis(50);
    let (store, task) = start(cfg);
    recv(&mut fake.subscriptions, "the subscription").await;
    let rt = until("the cached table", || store.load()).await;
    assert_eq!(rt.table, cached);

    let live = table("/live", 1);
    fake.lines.send(line(&live)).expect("send");
    until("the controller's table", || {
        store.load().filter(|rt| rt.table.revision == live.revision)
    })
    .await;
    recv(&mut fake.acks, "the acknowledgement").await;
    until_cached(&cache, &live).await;
    finish(task, &cache);
}

#[tokio::test]
async fn a_corrupt_cache_is_ignored_and_overwritten() {
    let mut fake = fake_controller().await;
    let cache = temp_cache("corrupt");
    std::fs::write(cache.path(), b"{ not a table").expect("write");
    let mut cfg = config(fake.url.clone(), &cache);
    cfg.cache_grace = Duration::ZERO;
    let (store, task) = start(cfg);
    recv(&mut fake.subscriptions, "the subscription").await;
    assert!(store.load().is_none(), "nothing served from a corrupt file");
    let live = table("/live", 1);
    fake.lines.send(line(&live)).expect("send");
    recv(&mut fake.acks, "the acknowledgement").await;
    until_cached(&cache, &live).await;
    finish(task, &cache);
}
