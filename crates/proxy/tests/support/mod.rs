//! Shared pieces of the proxy's integration tests: a proxy and fake agents on
//! `127.0.0.1:0`, clients, bodies the test feeds by hand, tables and metric reading.
//!
//! Every test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod redis;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_api::table::{Algorithm, BackendTarget, Endpoint, Millis, Pool, Route};
use sluice_api::{Objects, RouteTable};
use sluice_proxy::access_log::{AccessLog, AccessLogConfig};
use sluice_proxy::admin::Admin;
use sluice_proxy::body::BoxError;
use sluice_proxy::forward::ForwardConfig;
use sluice_proxy::server::{self, ServerConfig};
use sluice_proxy::{Forwarder, Metrics, TableStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The body type tests send and fake agents answer with.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// The HTTP client tests talk to the proxy with.
pub type TestClient = Client<HttpConnector, TestBody>;

/// How long any single step may take before the test fails as hung. A hang guard,
/// never a claim about speed.
pub const HANG: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it does not finish within [`HANG`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still waiting after {HANG:?}"),
    }
}

/// A proxy serving on a local port, with its store and metrics.
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// The routing state it reads.
    pub store: Arc<TableStore>,
    /// Its metrics.
    pub metrics: Metrics,
}

impl Proxy {
    /// Starts a proxy with no table: every request is answered `not_ready`.
    pub async fn start() -> Self {
        Self::start_until(std::future::pending()).await.0
    }

    /// Starts a proxy with no table that shuts down when `shutdown` completes, and the
    /// task that ends once it has drained.
    pub async fn start_until(
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let metrics = Metrics::new();
        let store = Arc::new(TableStore::new(metrics.clone()));
        Self::serve(store, metrics, shutdown).await
    }

    /// Starts a proxy over a store built with `builder`'s settings, and applies
    /// `table`.
    pub async fn with_store(
        builder: impl FnOnce(sluice_proxy::store::StoreBuilder) -> sluice_proxy::store::StoreBuilder,
        table: RouteTable,
    ) -> Self {
        let metrics = Metrics::new();
        let store = Arc::new(builder(TableStore::builder(metrics.clone())).build());
        store.apply(table).expect("table applies");
        Self::serve(store, metrics, std::future::pending()).await.0
    }

    async fn serve(
        store: Arc<TableStore>,
        metrics: Metrics,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let forwarder = Arc::new(Forwarder::new(store.clone(), metrics.clone()));
        let served = tokio::spawn(server::serve(
            listener,
            ServerConfig::default(),
            move |req, peer| Arc::clone(&forwarder).handle(req, peer),
            shutdown,
        ));
        let proxy = Self {
            addr,
            store,
            metrics,
        };
        (proxy, served)
    }

    /// Starts a proxy writing its access log per `config`, applies `table`, and
    /// returns the lines it writes, each parsed as JSON (or as text: the `line` key).
    pub async fn with_access_log(table: RouteTable, config: AccessLogConfig) -> (Self, LogLines) {
        let metrics = Metrics::new();
        let store = Arc::new(TableStore::new(metrics.clone()));
        store.apply(table).expect("table applies");
        let (tx, rx) = std::sync::mpsc::channel();
        let log =
            AccessLog::start(&config, &metrics, Box::new(LineSink(tx, Vec::new()))).expect("log");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let forwarder =
            Arc::new(Forwarder::new(store.clone(), metrics.clone()).with_access_log(log));
        tokio::spawn(server::serve(
            listener,
            ServerConfig::default(),
            move |req, peer| Arc::clone(&forwarder).handle(req, peer),
            std::future::pending::<()>(),
        ));
        let proxy = Self {
            addr,
            store,
            metrics,
        };
        (proxy, LogLines(Arc::new(std::sync::Mutex::new(rx))))
    }

    /// Starts a proxy with a plaintext listener and a TLS one (`tls`, asking for the
    /// client certificates the table's pools require, as the binary does), writing a
    /// JSON access log, and applies `table`: the proxy (its `addr` the plaintext
    /// listener's), the TLS listener's address and the log lines.
    pub async fn with_tls(
        table: RouteTable,
        tls: sluice_proxy::server::TlsConfig,
    ) -> (Self, SocketAddr, LogLines) {
        let metrics = Metrics::new();
        let store = Arc::new(TableStore::new(metrics.clone()));
        store.apply(table).expect("table applies");
        store.request_client_certificates_on(tls.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let log = AccessLog::start(
            &AccessLogConfig::default(),
            &metrics,
            Box::new(LineSink(tx, Vec::new())),
        )
        .expect("log");
        let forwarder =
            Arc::new(Forwarder::new(store.clone(), metrics.clone()).with_access_log(log));
        let mut addrs = Vec::new();
        for tls in [None, Some(tls)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            addrs.push(listener.local_addr().expect("proxy address"));
            let forwarder = forwarder.clone();
            tokio::spawn(server::serve(
                listener,
                ServerConfig {
                    tls,
                    ..ServerConfig::default()
                },
                move |req, peer| Arc::clone(&forwarder).handle(req, peer),
                std::future::pending::<()>(),
            ));
        }
        let proxy = Self {
            addr: addrs[0],
            store,
            metrics,
        };
        (
            proxy,
            addrs[1],
            LogLines(Arc::new(std::sync::Mutex::new(rx))),
        )
    }

    /// Starts a proxy and applies `table`.
    pub async fn with_table(table: RouteTable) -> Self {
        let proxy = Self::start().await;
        proxy.store.apply(table).expect("table applies");
        proxy
    }

    /// Starts a proxy with request-path settings other than the defaults (trusted
    /// proxies, say), as the binary builds it, and applies `table`.
    pub async fn with_config(config: ForwardConfig, table: RouteTable) -> Self {
        let metrics = Metrics::new();
        let store = Arc::new(TableStore::new(metrics.clone()));
        store.apply(table).expect("table applies");
        Self::over(store, metrics, config).await
    }

    /// Starts a proxy over a store built by the test (with Redis, say).
    pub async fn over(store: Arc<TableStore>, metrics: Metrics, config: ForwardConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let forwarder = Arc::new(Forwarder::with_config(
            store.clone(),
            metrics.clone(),
            config,
        ));
        tokio::spawn(server::serve(
            listener,
            ServerConfig::default(),
            move |req, peer| Arc::clone(&forwarder).handle(req, peer),
            std::future::pending::<()>(),
        ));
        Self {
            addr,
            store,
            metrics,
        }
    }

    /// The URL of `path_and_query` on the proxy.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The value of one series, such as `sluice_proxy_errors_total{reason="no_route"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics.render(), series)
    }

    /// Starts the admin listener over this proxy's store and metrics, as the binary
    /// does, and returns its address.
    pub async fn start_admin(&self) -> SocketAddr {
        let admin = Admin::new(self.store.clone(), self.metrics.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("admin address");
        tokio::spawn(server::serve(
            listener,
            ServerConfig::default(),
            move |req, _peer| {
                let resp = admin.handle(&req);
                async move { resp }
            },
            std::future::pending::<()>(),
        ));
        addr
    }
}

/// Under paused time (`#[tokio::test(start_paused = true)]`), returns once every task
/// has run as far as it can without the clock moving: Tokio only advances a paused
/// clock when the runtime is idle, and the proxy, its agents and clients all run in
/// the test's runtime over loopback. Use it instead of polling for background work
/// (a request reaching a queue, a probe, a closed connection) to finish.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// The value of `series` (the metric name with its labels, as rendered) in the
/// Prometheus text `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A fake agent: an HTTP/1.1 server whose every answer the test writes.
pub struct Agent {
    /// Where the agent listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Agent {
    /// Starts an agent answering each request with `handler`. HTTP/1.1, with protocol
    /// upgrades enabled (a handler that answers `101` gets the connection).
    pub async fn start<H, F>(handler: H) -> Self
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::serve(handler, false).await
    }

    /// Starts an agent that speaks only HTTP/2 over cleartext with prior knowledge
    /// (h2c), as gRPC agents do: an HTTP/1.1 request gets no answer.
    pub async fn start_h2c<H, F>(handler: H) -> Self
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::serve(handler, true).await
    }

    async fn serve<H, F>(handler: H, h2c: bool) -> Self
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let addr = listener.local_addr().expect("agent address");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let reqs = reqs.clone();
                let service = service_fn(move |req| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                tokio::spawn(async move {
                    // A connection the proxy drops mid-response ends with an error here.
                    let io = TokioIo::new(stream);
                    let _ = if h2c {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .with_upgrades()
                            .await
                    };
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    /// Starts an agent that answers `200` with its `name` as the body.
    pub async fn named(name: &'static str) -> Self {
        Self::start(move |_req| async move {
            Response::builder()
                .header("x-agent", name)
                .body(full(name))
                .expect("response")
        })
        .await
    }

    /// The agent's address as a table endpoint.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An agent that reports its name when a request arrives and holds requests carrying
/// `x-hold` until the gate opens.
pub async fn holding_agent(
    name: &'static str,
    arrived: mpsc::UnboundedSender<&'static str>,
    gate: watch::Receiver<bool>,
) -> Agent {
    Agent::start(move |req: Request<Incoming>| {
        let (arrived, mut gate) = (arrived.clone(), gate.clone());
        async move {
            arrived.send(name).expect("test is listening");
            if req.headers().contains_key("x-hold") {
                gate.wait_for(|open| *open).await.expect("gate kept");
            }
            Response::new(full(name))
        }
    })
    .await
}

/// An agent whose answer to its first request streams, as `content_type`, the chunks
/// the test sends on the returned sender; dropping the sender ends the body. A second
/// request gets an empty body.
pub async fn streaming_agent(content_type: &'static str) -> (Agent, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let agent = Agent::start(move |_req| {
        let rx = rx.lock().expect("lock").take();
        async move {
            let frames = futures_util::stream::unfold(rx, |rx| async move {
                let mut rx = rx?;
                let chunk = rx.recv().await?;
                Some((Ok::<_, BoxError>(Frame::data(chunk)), Some(rx)))
            });
            Response::builder()
                .header(http::header::CONTENT_TYPE, content_type)
                .body(StreamBody::new(frames).boxed())
                .expect("response")
        }
    })
    .await;
    (agent, tx)
}

/// An address nothing listens on: bound, then released.
pub async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    addr.to_string()
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body streamed by hand: each chunk sent on the sender becomes a frame; dropping the
/// sender ends the body. No length is known, so HTTP/1.1 sends it chunked.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, BoxError>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

/// The next non-empty data chunk of `body`; `None` at its end. Trailers and empty
/// chunks (HTTP/2 may end a stream with an empty DATA frame) are skipped.
///
/// # Panics
///
/// When the body fails.
pub async fn next_chunk<B>(body: &mut B) -> Option<Bytes>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        let frame = body.frame().await?.expect("body frame");
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Some(data);
        }
    }
}

/// An HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client speaking cleartext with prior knowledge (h2c).
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A finished response: status, headers and the whole body.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The `code` of a proxy error body `{"error": {"code": ...}}`.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_owned()
    }
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &TestClient, req: Request<TestBody>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    within(&what, async {
        let resp = client.request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
}

/// `GET url` and the whole response.
pub async fn get(client: &TestClient, url: &str) -> Reply {
    let req = Request::get(url).body(empty()).expect("request");
    send(client, req).await
}

/// A round-robin pool `key` with one backend holding `addresses`, a generous connect
/// timeout and the given request timeout.
pub fn pool(key: &str, addresses: &[String], request_timeout_ms: u64) -> Pool {
    Pool {
        key: key.into(),
        algorithm: Algorithm::RoundRobin,
        backends: vec![backend("static[0]", 1, addresses)],
        connect_timeout: Millis::at_least_one(5_000),
        request_timeout: Millis::new(request_timeout_ms).expect("a positive timeout"),
        ..Default::default()
    }
}

/// A backend of a table pool.
pub fn backend(name: &str, weight: u32, addresses: &[String]) -> BackendTarget {
    BackendTarget {
        name: name.into(),
        weight: std::num::NonZeroU32::new(weight).expect("a positive weight"),
        endpoints: addresses.iter().map(|a| Endpoint::new(a.clone())).collect(),
        ..Default::default()
    }
}

/// A route on `path_prefix` (and `host`, if given) to `pool`.
pub fn route(pool: &str, host: Option<&str>, path_prefix: &str) -> Route {
    Route {
        host: host.map(Into::into),
        ..Route::new(pool, path_prefix)
    }
}

/// A table sending every request to `pool`.
pub fn catch_all(pool: Pool) -> RouteTable {
    RouteTable::new(vec![route(&pool.key, None, "/")], vec![pool])
}

/// Compiles AgentPool manifests into a table, failing on any error diagnostic.
pub fn compile_yaml(yaml: &str) -> RouteTable {
    let mut objects = Objects::default();
    sluice_api::manifest::parse_into(yaml, "test.yaml", &mut objects).expect("manifests parse");
    let (table, diagnostics) = sluice_api::compile(&objects);
    assert!(!diagnostics.has_errors(), "{diagnostics:?}");
    table
}

/// An AgentPool manifest `demo/NAME` for tests: a catch-all route (or the given
/// prefix), one static backend over the given endpoints, and any further `spec`
/// fields, each a line of YAML such as `loadBalancing: {algorithm: PeakEwma}`.
#[derive(Clone, Debug)]
pub struct PoolYaml {
    name: String,
    prefix: String,
    endpoints: Vec<String>,
    backend: String,
    spec: Vec<String>,
}

impl PoolYaml {
    /// A pool named `name` in namespace `demo`, on `/`, with no endpoints yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            prefix: "/".to_owned(),
            endpoints: Vec::new(),
            backend: String::new(),
            spec: Vec::new(),
        }
    }

    /// Adds the agents as endpoints.
    pub fn agents(mut self, agents: &[&Agent]) -> Self {
        self.endpoints.extend(agents.iter().map(|a| a.address()));
        self
    }

    /// Adds endpoints by address.
    pub fn endpoints(mut self, addresses: &[String]) -> Self {
        self.endpoints.extend(addresses.iter().cloned());
        self
    }

    /// Routes `prefix` instead of `/`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Adds fields to the backend, in YAML flow style (`maxConcurrency: 1`).
    pub fn backend(mut self, fields: &str) -> Self {
        self.backend.push_str(", ");
        self.backend.push_str(fields);
        self
    }

    /// Adds a `spec` field, as one line of YAML (flow style).
    pub fn spec(mut self, line: &str) -> Self {
        self.spec.push(line.to_owned());
        self
    }

    /// The manifest.
    pub fn yaml(&self) -> String {
        let endpoints: Vec<String> = self.endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        let mut yaml = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
             metadata: {{name: {}, namespace: demo}}\n\
             spec:\n  matches: [{{pathPrefix: {}}}]\n\
             \x20 backends: [{{endpoints: [{}]{}}}]\n",
            self.name,
            self.prefix,
            endpoints.join(", "),
            self.backend,
        );
        for line in &self.spec {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    }

    /// The manifest compiled into a table.
    pub fn table(&self) -> RouteTable {
        compile_yaml(&self.yaml())
    }
}

/// `GET path` on the proxy, expecting `200`: the response body, to read as it streams.
pub async fn open_stream(proxy: &Proxy, path: &str) -> Incoming {
    let req = Request::get(proxy.url(path))
        .body(empty())
        .expect("request");
    let resp = within("response head", client().request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

/// The access log lines a proxy writes, as they come.
pub struct LogLines(Arc<std::sync::Mutex<std::sync::mpsc::Receiver<String>>>);

impl LogLines {
    /// The next line, parsed as JSON.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = self.next_text().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next line as written. The writer is a thread of its own, outside the
    /// runtime, so the wait is a blocking one with a real-time hang guard: a paused
    /// clock does not jump ahead while a blocking task runs.
    pub async fn next_text(&mut self) -> String {
        let rx = self.0.clone();
        tokio::task::spawn_blocking(move || rx.lock().expect("lock").recv_timeout(HANG))
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("an access log line: {e} after {HANG:?}"))
    }
}

/// Hands what the access log writes to the test, a whole line at a time.
struct LineSink(std::sync::mpsc::Sender<String>, Vec<u8>);

impl std::io::Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(end) = self.1.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=end).collect();
            let _ = self
                .0
                .send(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
