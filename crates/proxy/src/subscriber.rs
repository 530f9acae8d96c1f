//! Subscribing to the controller: a long-lived HTTP stream of newline-delimited tables.
//!
//! The proxy subscribes under its name (`GET /v1/routes/watch?proxy=ID`) and, after
//! applying each table (or finding it already in force), acknowledges it with
//! `POST /v1/routes/ack` and `{"proxy": ID, "version": N, "revision": "..."}`. It speaks
//! HTTP/2 with prior knowledge, so the acknowledgements share the subscription's
//! connection and reach the controller replica that streams to it. Acknowledgements
//! go out from a task of their own, the latest only when several are due, so a slow
//! answer never holds up the stream.
//!
//! The proxy keeps the last table it applied while the controller is away, reconnects
//! with jittered exponential backoff ([`Backoff`], full jitter: each delay is drawn
//! between zero and the ceiling, the first reconnect after a healthy stream included,
//! so proxies that lost the controller together do not return together), and treats a
//! stream silent for longer than `idle_timeout` (the controller sends a heartbeat line
//! well within it) as dead.
//!
//! With a [`TableCache`], each applied table is also saved to a file. At start, a valid
//! cached table is put in force when the controller is unreachable (the first attempt
//! fails) or has sent no table within `cache_grace`; the controller's first table
//! replaces it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use tokio::sync::watch;

use crate::store::{Applied, TableStore};
use crate::table_cache::{CacheWriter, TableCache};

/// The path the controller serves the stream on.
pub const WATCH_PATH: &str = "/v1/routes/watch";
/// The path the controller takes acknowledgements on.
pub const ACK_PATH: &str = "/v1/routes/ack";
/// The longest line (one table) the proxy accepts.
const MAX_LINE: usize = 64 * 1024 * 1024;
/// The longest proxy name (a DNS name's length).
pub const MAX_PROXY_ID_LEN: usize = 253;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Settings of the subscription.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The controller's base URL, for example `http://sluice-controller:9090`.
    pub controller: Uri,
    /// The name this proxy subscribes and acknowledges under (see
    /// [`valid_proxy_id`]); unique among the proxies of a controller.
    pub proxy_id: String,
    /// Ceiling of the first reconnect delay; doubles with each failed attempt up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    /// Ceiling of the longest reconnect delay.
    pub max_backoff: Duration,
    /// A stream that sends nothing, not even a heartbeat, for this long is reconnected.
    pub idle_timeout: Duration,
    /// Deadline to connect and receive the response headers.
    pub connect_timeout: Duration,
    /// Deadline of one acknowledgement.
    pub ack_timeout: Duration,
    /// Where the last applied table is saved, and read from at start.
    pub table_cache: Option<TableCache>,
    /// How long a reachable controller may take to send its first table before the
    /// cached one is put in force.
    pub cache_grace: Duration,
}

impl SubscriberConfig {
    /// Defaults for a controller at `controller`, named by [`default_proxy_id`], with no
    /// table cache.
    pub fn new(controller: Uri) -> Self {
        Self {
            controller,
            proxy_id: default_proxy_id(),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            table_cache: None,
            cache_grace: Duration::from_secs(3),
        }
    }
}

/// Whether `id` is an acceptable proxy name: 1 to [`MAX_PROXY_ID_LEN`] characters among
/// ASCII letters, digits and `.`, `_`, `-`, `:`, `@` (the controller's rule).
pub fn valid_proxy_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PROXY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

/// `HOSTNAME-PID`: the host name (the pod's name on Kubernetes) from `$HOSTNAME` or the
/// kernel, with characters a proxy name cannot hold replaced by `-`.
pub fn default_proxy_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    proxy_id_from(host.trim(), std::process::id())
}

fn proxy_id_from(host: &str, pid: u32) -> String {
    let mut host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_PROXY_ID_LEN - 11)
        .collect();
    if host.is_empty() {
        host.push_str("proxy");
    }
    format!("{host}-{pid}")
}

/// Reconnect delays: exponential ceilings with full jitter.
///
/// The ceiling of attempt `n` (0 after a healthy stream) is `min × 2ⁿ`, at most `max`;
/// the delay is `ceiling × unit` for a uniform `unit` in `[0, 1]` drawn by the caller.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Ceilings from `min` to `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Back to the first ceiling: the stream was healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay for the random `unit` (clamped to `[0, 1]`), and one more attempt.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = full_jitter(self.ceiling(), unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

/// `ceiling × unit`, with `unit` clamped to `[0, 1]` (anything not finite counts as 0).
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(unit)
}

/// Why one subscription attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The controller URL cannot be joined with the watch path. Not retryable.
    #[error("bad controller URL: {0}")]
    Url(String),
    /// Connecting or the request failed. Retryable.
    #[error("request failed: {0}")]
    Request(String),
    /// The controller answered with another status than 200. Retryable.
    #[error("controller answered {0}")]
    Status(StatusCode),
    /// No byte arrived within the idle timeout. Retryable.
    #[error("stream idle for {0:?}")]
    Idle(Duration),
    /// The stream broke. Retryable.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The controller closed the stream. Retryable.
    #[error("controller closed the stream")]
    Closed,
}

/// Subscribes forever, applying each table to `store`.
pub async fn run(config: SubscriberConfig, store: Arc<TableStore>) {
    run_with_rng(config, store, fastrand::Rng::new()).await;
}

/// [`run`] with the random source of the reconnect jitter given.
pub async fn run_with_rng(
    config: SubscriberConfig,
    store: Arc<TableStore>,
    mut rng: fastrand::Rng,
) {
    // Small frames (acknowledgements, heartbeats) must not wait for Nagle.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let writer = config.table_cache.clone().map(TableCache::spawn_writer);
    let mut cached = match &config.table_cache {
        Some(cache) => load_cache(cache).await,
        None => None,
    };
    let grace = tokio::time::sleep(config.cache_grace);
    tokio::pin!(grace);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        let mut applied_any = false;
        let err = {
            let attempt =
                subscribe_once(&client, &config, &store, writer.as_ref(), &mut applied_any);
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    err = &mut attempt => break err,
                    () = &mut grace, if cached.is_some() => {
                        apply_cached(&mut cached, &store, "the controller sent no table in time");
                    }
                }
            }
        };
        if cached.is_some() {
            apply_cached(&mut cached, &store, "the controller is unreachable");
        }
        if matches!(err, SubscribeError::Url(_)) {
            tracing::error!(error = %err, "cannot subscribe to the controller");
            return;
        }
        if applied_any {
            backoff.reset();
        }
        let delay = backoff.next_delay(rng.f64());
        let serving = store.load().map(|rt| rt.table.version);
        tracing::warn!(error = %err, retry_in = ?delay, serving_version = ?serving, "controller stream ended; keeping the last table");
        tokio::time::sleep(delay).await;
    }
}

/// Reads the cache file off the runtime's threads; a bad file is logged and ignored.
async fn load_cache(cache: &TableCache) -> Option<RouteTable> {
    let path = cache.path().display().to_string();
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || cache.load()).await {
        Ok(Ok(Some(table))) => {
            tracing::info!(path, version = table.version, revision = %table.revision, "cached route table found");
            Some(table)
        }
        Ok(Ok(None)) => {
            tracing::info!(path, "no cached route table yet");
            None
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cached route table ignored");
            None
        }
        Err(e) => {
            tracing::error!(path, error = %e, "reading the cached route table failed");
            None
        }
    }
}

/// Puts the cached table in force unless the controller's is already there.
fn apply_cached(cached: &mut Option<RouteTable>, store: &TableStore, why: &str) {
    let Some(table) = cached.take() else {
        return;
    };
    if store.load().is_some() {
        return;
    }
    let (version, revision) = (table.version, table.revision.clone());
    match store.apply(table) {
        Ok(_) => tracing::warn!(version, %revision, "{why}: serving the cached route table"),
        Err(e) => tracing::error!(error = %e, "cached route table refused"),
    }
}

fn join(base: &Uri, path_and_query: &str) -> Result<Uri, SubscribeError> {
    let base = base.to_string();
    format!("{}{path_and_query}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| SubscribeError::Url(e.to_string()))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn subscribe_once(
    client: &HttpClient,
    config: &SubscriberConfig,
    store: &TableStore,
    writer: Option<&CacheWriter>,
    applied_any: &mut bool,
) -> SubscribeError {
    let uri = match join(
        &config.controller,
        &format!("{WATCH_PATH}?proxy={}", config.proxy_id),
    ) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let ack_uri = match join(&config.controller, ACK_PATH) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let req = match Request::get(uri).body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return SubscribeError::Url(e.to_string()),
    };
    let resp = match tokio::time::timeout(config.connect_timeout, client.request(req)).await {
        Err(_) => {
            return SubscribeError::Request(format!(
                "no answer within {:?}",
                config.connect_timeout
            ));
        }
        Ok(Err(e)) => return SubscribeError::Request(e.to_string()),
        Ok(Ok(resp)) => resp,
    };
    if resp.status() != StatusCode::OK {
        return SubscribeError::Status(resp.status());
    }
    tracing::info!(controller = %config.controller, proxy = %config.proxy_id, "subscribed to the controller");
    let (acks, pending) = watch::channel(None);
    let _acker = AbortOnDrop(tokio::spawn(acknowledge(
        client.clone(),
        ack_uri,
        config.proxy_id.clone(),
        pending,
        config.ack_timeout,
    )));
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    // Bytes of `buf` known to hold no newline: a table line arrives in many frames,
    // and each frame is searched once, not the whole line again at every frame.
    let mut scanned = 0;
    loop {
        let frame = match tokio::time::timeout(config.idle_timeout, body.frame()).await {
            Err(_) => return SubscribeError::Idle(config.idle_timeout),
            Ok(None) => return SubscribeError::Closed,
            Ok(Some(Err(e))) => return SubscribeError::Stream(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(found) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + found;
            scanned = 0;
            let line = buf.split_to(end + 1).freeze().slice(..end);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // heartbeat
            }
            if let Some((applied, version, revision)) = apply_line(&line, store) {
                *applied_any = true;
                if applied == Applied::Swapped
                    && let Some(writer) = writer
                {
                    writer.save(line);
                }
                acks.send_replace(Some((version, revision)));
            }
        }
        scanned = buf.len();
        if buf.len() > MAX_LINE {
            return SubscribeError::Stream(format!("a line is longer than {MAX_LINE} bytes"));
        }
    }
}

/// Sends the latest table to acknowledge each time one is due, until the subscription
/// ends. A failed acknowledgement is logged, not retried: the next table, or the next
/// subscription, acknowledges again.
async fn acknowledge(
    client: HttpClient,
    uri: Uri,
    proxy: String,
    mut pending: watch::Receiver<Option<(u64, String)>>,
    timeout: Duration,
) {
    while pending.changed().await.is_ok() {
        let Some((version, revision)) = pending.borrow_and_update().clone() else {
            continue;
        };
        let body = serde_json::json!({"proxy": proxy, "version": version, "revision": revision});
        let req = match Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot build an acknowledgement");
                return;
            }
        };
        match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                tracing::debug!(version, "route table acknowledged");
            }
            Ok(Ok(resp)) => {
                tracing::warn!(version, status = %resp.status(), "the controller refused the acknowledgement");
            }
            Ok(Err(e)) => tracing::warn!(version, error = %e, "acknowledgement failed"),
            Err(_) => tracing::warn!(version, "acknowledgement unanswered within {timeout:?}"),
        }
    }
}

/// Parses and applies one table line; returns what was done, with the table's version
/// and revision, when it is in force.
fn apply_line(line: &[u8], store: &TableStore) -> Option<(Applied, u64, String)> {
    let table: RouteTable = match serde_json::from_slice(line) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "controller sent a line that is not a route table; ignored");
            return None;
        }
    };
    let (version, revision) = (table.version, table.revision.clone());
    match store.apply(table) {
        Ok(applied) => {
            if applied == Applied::Swapped {
                tracing::info!(version, %revision, "route table applied");
            }
            Some((applied, version, revision))
        }
        Err(e) => {
            tracing::error!(version, error = %e, "controller sent an invalid route table; keeping the last one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use http::Version;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use tokio::sync::mpsc;

    use super::*;
    use crate::Metrics;

    fn table(prefix: &str, version: u64) -> RouteTable {
        crate::test_tables::one_pool(prefix, version)
    }

    fn line(t: &RouteTable) -> Bytes {
        let mut l = serde_json::to_vec(t).expect("json");
        l.push(b'\n');
        Bytes::from(l)
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
        let dir =
            std::env::temp_dir().join(format!("sluice-subscriber-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TableCache::new(dir.join("table.json"))
    }

    fn config(url: Uri, cache: &TableCache) -> SubscriberConfig {
        SubscriberConfig {
            proxy_id: "unit-proxy".into(),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            table_cache: Some(cache.clone()),
            ..SubscriberConfig::new(url)
        }
    }

    #[tokio::test]
    async fn subscribes_by_name_acknowledges_and_caches_each_table() {
        let mut fake = fake_controller().await;
        let cache = temp_cache("ack");
        let store = Arc::new(TableStore::new(Metrics::new()));
        let task = tokio::spawn(run(config(fake.url.clone(), &cache), store.clone()));

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
        until("the cache to hold version 2", || {
            (cache.load().ok().flatten().as_ref() == Some(&v2)).then_some(())
        })
        .await;
        task.abort();
        let _ = std::fs::remove_dir_all(cache.path().parent().expect("dir"));
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
        let store = Arc::new(TableStore::new(Metrics::new()));
        let mut cfg = config(format!("http://{addr}").parse().expect("url"), &cache);
        cfg.cache_grace = Duration::from_secs(3600);
        let task = tokio::spawn(run(cfg, store.clone()));
        let rt = until("the cached table", || store.load()).await;
        assert_eq!(rt.table, cached);
        task.abort();
        let _ = std::fs::remove_dir_all(cache.path().parent().expect("dir"));
    }

    #[tokio::test]
    async fn a_silent_controller_gets_the_cache_served_after_the_grace_then_replaces_it() {
        let mut fake = fake_controller().await;
        let cache = temp_cache("grace");
        let cached = table("/cached", 7);
        cache.save_table(&cached).expect("saved");
        let store = Arc::new(TableStore::new(Metrics::new()));
        let mut cfg = config(fake.url.clone(), &cache);
        cfg.cache_grace = Duration::from_millis(50);
        let task = tokio::spawn(run(cfg, store.clone()));
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
        until("the cache to hold the live table", || {
            (cache.load().ok().flatten().as_ref() == Some(&live)).then_some(())
        })
        .await;
        task.abort();
        let _ = std::fs::remove_dir_all(cache.path().parent().expect("dir"));
    }

    #[tokio::test]
    async fn a_corrupt_cache_is_ignored_and_overwritten() {
        let mut fake = fake_controller().await;
        let cache = temp_cache("corrupt");
        std::fs::write(cache.path(), b"{ not a table").expect("write");
        let store = Arc::new(TableStore::new(Metrics::new()));
        let mut cfg = config(fake.url.clone(), &cache);
        cfg.cache_grace = Duration::ZERO;
        let task = tokio::spawn(run(cfg, store.clone()));
        recv(&mut fake.subscriptions, "the subscription").await;
        assert!(store.load().is_none(), "nothing served from a corrupt file");
        let live = table("/live", 1);
        fake.lines.send(line(&live)).expect("send");
        recv(&mut fake.acks, "the acknowledgement").await;
        until("the cache to be rewritten", || {
            (cache.load().ok().flatten().as_ref() == Some(&live)).then_some(())
        })
        .await;
        task.abort();
        let _ = std::fs::remove_dir_all(cache.path().parent().expect("dir"));
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay(1.0);
                u64::try_from(c.as_millis()).expect("small")
            })
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        for _ in 0..100 {
            b.next_delay(0.5);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(10), "no overflow");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).ceiling(),
            Duration::from_secs(2),
            "max below min is raised to min"
        );
    }

    #[test]
    fn delays_lie_between_zero_and_the_ceiling() {
        let ceiling = Duration::from_millis(800);
        assert_eq!(full_jitter(ceiling, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(ceiling, 0.5), Duration::from_millis(400));
        assert_eq!(full_jitter(ceiling, 1.0), ceiling);
        assert_eq!(full_jitter(ceiling, 7.0), ceiling, "clamped");
        assert_eq!(full_jitter(ceiling, -1.0), Duration::ZERO, "clamped");
        assert_eq!(full_jitter(ceiling, f64::NAN), Duration::ZERO);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay(rng.f64());
            assert!(
                d <= ceiling && ceiling <= Duration::from_secs(5),
                "{d:?} {ceiling:?}"
            );
        }
    }

    #[test]
    fn proxies_that_lose_the_controller_together_do_not_return_together() {
        // 1,000 proxies whose healthy stream ended at the same instant: their first
        // reconnect delays spread over [0, min_backoff], none beyond.
        let min = Duration::from_millis(500);
        let mut seeds = fastrand::Rng::with_seed(42);
        let mut delays: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut rng = fastrand::Rng::with_seed(seeds.u64(..));
                let mut b = Backoff::new(min, Duration::from_secs(10));
                b.next_delay(2.0); // a failed attempt, then a healthy stream
                b.reset();
                b.next_delay(rng.f64())
            })
            .collect();
        delays.sort();
        assert!(delays.iter().all(|d| *d <= min));
        // Each tenth of the window takes roughly a tenth of the proxies.
        for tenth in 0..10u32 {
            let (lo, hi) = (min * tenth / 10, min * (tenth + 1) / 10);
            let n = delays.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((50..=150).contains(&n), "{n} proxies in [{lo:?}, {hi:?})");
        }
    }

    #[test]
    fn proxy_names() {
        assert_eq!(proxy_id_from("sluice-proxy-7f9c", 1), "sluice-proxy-7f9c-1");
        assert_eq!(proxy_id_from("a b/c", 42), "a-b-c-42");
        assert_eq!(proxy_id_from("", 3), "proxy-3");
        let long = proxy_id_from(&"h".repeat(1000), u32::MAX);
        assert!(valid_proxy_id(&long), "{}", long.len());
        assert!(valid_proxy_id(&default_proxy_id()));
        assert!(!valid_proxy_id("a%20b"));
        assert!(!valid_proxy_id(""));
    }
}
