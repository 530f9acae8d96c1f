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
use sluice_api::RouteTable;
use sluice_api::load::LoadReport;
use sluice_api::push::{ACK_PATH, REPORT_PATH, encode_line as line};
use tokio::sync::mpsc;

use super::{SubscriberConfig, run};
use crate::table_cache::TableCache;
use crate::{Metrics, TableStore};

fn table(prefix: &str, version: u64) -> RouteTable {
    crate::test_tables::one_pool(prefix, version)
}

/// A controller stand-in: records subscriptions (HTTP version, query and
/// `Authorization`) and acknowledgements (with their `Authorization`); the first
/// subscription streams what the test sends.
struct Fake {
    url: Uri,
    subscriptions: mpsc::UnboundedReceiver<(Version, String, Option<String>)>,
    acks: mpsc::UnboundedReceiver<serde_json::Value>,
    ack_tokens: mpsc::UnboundedReceiver<Option<String>>,
    /// Load reports, with their `Authorization`.
    reports: mpsc::UnboundedReceiver<(LoadReport, Option<String>)>,
    lines: mpsc::UnboundedSender<Bytes>,
    /// The listener's metrics (TLS handshakes).
    registry: prometheus::Registry,
}

async fn fake_controller() -> Fake {
    fake_controller_with(None).await
}

/// A stand-in served by the listener, with `tls` when given, at
/// `http(s)://localhost:PORT`.
async fn fake_controller_with(tls: Option<sluice_listener::TlsConfig>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!(
        "{scheme}://localhost:{}",
        listener.local_addr().expect("addr").port()
    )
    .parse()
    .expect("url");
    let (sub_tx, subscriptions) = mpsc::unbounded_channel();
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let (ack_token_tx, ack_tokens) = mpsc::unbounded_channel();
    let (report_tx, reports) = mpsc::unbounded_channel();
    let (lines, line_rx) = mpsc::unbounded_channel::<Bytes>();
    let stream = Arc::new(Mutex::new(Some(line_rx)));
    let registry = prometheus::Registry::new();
    let metrics = sluice_listener::ListenerMetrics::new(&registry).expect("metrics");
    let handler = move |req: Request<hyper::body::Incoming>, _peer: SocketAddr| {
        let (sub_tx, ack_tx, ack_token_tx, report_tx, stream) = (
            sub_tx.clone(),
            ack_tx.clone(),
            ack_token_tx.clone(),
            report_tx.clone(),
            stream.clone(),
        );
        async move {
            let mut resp = http::Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            );
            let authorization = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().expect("ascii").to_owned());
            if req.uri().path() == ACK_PATH {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let _ = ack_token_tx.send(authorization);
                let _ = ack_tx.send(serde_json::from_slice(&body).expect("json"));
                *resp.status_mut() = StatusCode::NO_CONTENT;
            } else if req.uri().path() == REPORT_PATH {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let report = serde_json::from_slice(&body).expect("a load report");
                let _ = report_tx.send((report, authorization));
                *resp.status_mut() = StatusCode::NO_CONTENT;
            } else {
                let _ = sub_tx.send((
                    req.version(),
                    req.uri().query().unwrap_or_default().to_owned(),
                    authorization,
                ));
                let rx = stream.lock().expect("lock").take();
                let frames = futures_util::stream::unfold(rx, |rx| async move {
                    let mut rx = rx?;
                    let line = rx.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(line)), Some(rx)))
                });
                *resp.body_mut() = BodyExt::boxed(StreamBody::new(frames));
            }
            resp
        }
    };
    let config = sluice_listener::ServerConfig {
        tls,
        metrics: metrics.listener("fake"),
        ..sluice_listener::ServerConfig::default()
    };
    tokio::spawn(sluice_listener::serve(
        listener,
        config,
        handler,
        std::future::pending::<()>(),
    ));
    Fake {
        url,
        subscriptions,
        acks,
        ack_tokens,
        reports,
        lines,
        registry,
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

    let (version, query, authorization) = recv(&mut fake.subscriptions, "the subscription").await;
    assert_eq!(authorization, None, "no token configured");
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

/// Writes `token` to `path` at once.
fn write_token(path: &std::path::Path, token: &str) {
    sluice_listener::testing::write_atomically(path, token);
}

#[tokio::test]
async fn subscribes_over_tls_and_presents_its_current_token() {
    let cache = temp_cache("tls");
    let dir = cache.path().parent().expect("dir").to_owned();
    let ca = sluice_listener::testing::TestCa::new("controller CA");
    let tls = sluice_listener::TlsConfig::new(
        vec![ca.leaf(&["localhost"]).write(&dir, "controller")],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    let mut fake = fake_controller_with(Some(tls)).await;
    let token = dir.join("token");
    write_token(&token, "first-token\n");
    let mut cfg = config(fake.url.clone(), &cache);
    cfg.ca = Some(ca.write(&dir, "ca.crt"));
    cfg.token = Some(token.clone());
    let (store, task) = start(cfg);

    let (version, _, authorization) = recv(&mut fake.subscriptions, "the subscription").await;
    assert_eq!(version, Version::HTTP_2, "HTTP/2 by ALPN");
    assert_eq!(authorization.as_deref(), Some("Bearer first-token"));
    fake.lines.send(line(&table("/a", 1))).expect("send");
    recv(&mut fake.acks, "the acknowledgement").await;
    let ack_token = recv(&mut fake.ack_tokens, "the acknowledgement's token").await;
    assert_eq!(ack_token.as_deref(), Some("Bearer first-token"));
    assert_eq!(store.load().map(|rt| rt.table.version), Some(1));

    // The kubelet rotates the projected token: the next acknowledgement has the new one.
    write_token(&token, "second-token");
    fake.lines.send(line(&table("/b", 2))).expect("send");
    recv(&mut fake.acks, "the second acknowledgement").await;
    let ack_token = recv(&mut fake.ack_tokens, "the second acknowledgement's token").await;
    assert_eq!(ack_token.as_deref(), Some("Bearer second-token"));
    finish(task, &cache);
}

/// An expired certificate, or one for another name: the subscriber refuses the
/// controller (its handshakes fail) and never subscribes.
#[tokio::test]
async fn refuses_a_controller_whose_certificate_does_not_check_out() {
    let ca = sluice_listener::testing::TestCa::new("controller CA");
    for (name, leaf) in [
        ("expired", ca.expired_leaf(&["localhost"])),
        ("wrong-host", ca.leaf(&["controller.example"])),
    ] {
        let cache = temp_cache(name);
        let dir = cache.path().parent().expect("dir").to_owned();
        let tls = sluice_listener::TlsConfig::new(
            vec![leaf.write(&dir, "controller")],
            Duration::from_secs(3600),
        )
        .expect("certificate");
        let mut fake = fake_controller_with(Some(tls)).await;
        let mut cfg = config(fake.url.clone(), &cache);
        cfg.ca = Some(ca.write(&dir, "ca.crt"));
        let (store, task) = start(cfg);
        let failed = || {
            fake.registry
                .gather()
                .iter()
                .filter(|f| f.name() == "sluice_listener_tls_handshakes_total")
                .flat_map(|f| f.get_metric().iter())
                .filter(|m| m.get_label().iter().any(|l| l.value() == "failed"))
                .map(|m| m.get_counter().get_value())
                .sum::<f64>()
        };
        until("two refused handshakes", || (failed() >= 2.0).then_some(())).await;
        assert!(fake.subscriptions.try_recv().is_err(), "{name}: subscribed");
        assert!(store.load().is_none());
        finish(task, &cache);
    }
}

#[test]
fn an_https_controller_needs_a_ca_bundle() {
    let cfg = SubscriberConfig::new("https://controller:9090".parse().expect("url"));
    assert!(matches!(cfg.client(), Err(super::SubscribeError::Tls(_))));
}

/// The values of the series of `family` for pool `key` in the text exposition, in
/// order.
fn series(text: &str, family: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{pool=\"{key}\"")))
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse().ok())
                .expect("a count")
        })
        .collect()
}

#[tokio::test]
async fn load_reports_carry_what_the_metrics_export() {
    let mut fake = fake_controller().await;
    let cache = temp_cache("report");
    let metrics = Metrics::new();
    let store = Arc::new(TableStore::new(metrics.clone()));
    let config = SubscriberConfig {
        report_interval: Some(Duration::from_millis(20)),
        ..config(fake.url.clone(), &cache)
    };
    let task = tokio::spawn(run(config, store.clone()));
    recv(&mut fake.subscriptions, "the subscription").await;
    fake.lines.send(line(&table("/a", 1))).expect("send");
    recv(&mut fake.acks, "the acknowledgement").await;
    // Some traffic, as the request path records it.
    let rt = store.load().expect("a table");
    let pool = &rt.pools[0];
    for seconds in [0.003, 0.2, 0.2, 7.0] {
        pool.metrics.observe(StatusCode::OK, seconds);
    }
    pool.metrics.in_flight.add(2);
    pool.metrics.queue_depth.add(1);
    let key = pool.key().to_owned();
    let report = loop {
        let (report, _) = recv(&mut fake.reports, "a load report").await;
        assert_eq!(report.proxy.as_str(), "unit-proxy");
        if report.pools.first().is_some_and(|p| p.in_flight == 2) {
            break report;
        }
    };
    let text = metrics.render();
    let reported = &report.pools[0];
    assert_eq!(reported.pool, key);
    assert_eq!(
        reported.latency,
        series(&text, "sluice_request_duration_seconds_bucket", &key)
    );
    assert_eq!(reported.latency.last(), Some(&4));
    assert_eq!(
        vec![reported.in_flight],
        series(&text, "sluice_requests_in_flight", &key)
    );
    assert_eq!(
        vec![reported.queued],
        series(&text, "sluice_queue_depth", &key)
    );
    // No endpoint sets maxConcurrency: no capacity, and no utilisation exported.
    assert_eq!(reported.capacity, None);
    assert!(!text.contains("sluice_pool_utilisation{"), "{text}");
    pool.metrics.in_flight.sub(2);
    pool.metrics.queue_depth.sub(1);
    finish(task, &cache);
}
