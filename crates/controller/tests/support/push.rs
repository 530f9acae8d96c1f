//! A push server on `127.0.0.1:0` with its publisher, metrics and a client, and what
//! a subscriber does: read the table stream, acknowledge.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use sluice_api::push::{ACK_PATH, Ack, LineDecoder, PROXIES_PATH, WATCH_PATH};
use sluice_controller::Publisher;
use sluice_controller::proxies::ProxyRegistry;
use sluice_controller::push::{self, PushConfig, PushMetrics};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The client the tests speak to the push server with.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The shutdown signal handed to the server.
type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A push server on `127.0.0.1:0`, its publisher and metrics, and an HTTP/1.1 client.
pub struct PushServer {
    /// `http://ADDRESS`.
    pub base: String,
    /// Publishes the tables the server streams.
    pub publisher: Publisher,
    /// The registry of the server's metrics.
    pub metrics: prometheus::Registry,
    /// An HTTP/1.1 client.
    pub client: HttpClient,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PushServer {
    /// [`push::serve`] (a registry of its own) with a heartbeat of one hour.
    pub async fn start() -> Self {
        Self::start_config(PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        })
        .await
    }

    /// [`push::serve`] with `config`.
    pub async fn start_config(config: PushConfig) -> Self {
        let publisher = Publisher::new();
        Self::spawn(publisher.clone(), |listener, metrics, stop| {
            tokio::spawn(push::serve(listener, publisher, metrics.push, config, stop))
        })
        .await
    }

    /// [`push::serve_with`] tracking proxies in `proxies`, whose metrics it registers.
    pub async fn with_registry(proxies: ProxyRegistry, config: PushConfig) -> Self {
        Self::spawn(proxies.publisher().clone(), |listener, metrics, stop| {
            proxies
                .register_metrics(&metrics.registry)
                .expect("registry metrics");
            tokio::spawn(push::serve_with(
                listener,
                proxies,
                metrics.push,
                config,
                stop,
            ))
        })
        .await
    }

    async fn spawn(
        publisher: Publisher,
        serve: impl FnOnce(TcpListener, Metrics, Stop) -> JoinHandle<()>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let registry = prometheus::Registry::new();
        let metrics = Metrics {
            push: PushMetrics::new(&registry).expect("metrics"),
            registry: registry.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = serve(
            listener,
            metrics,
            Box::pin(async {
                let _ = stopped.await;
            }),
        );
        Self {
            base,
            publisher,
            metrics: registry,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop,
            task,
        }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        get(&self.client, &self.url(path)).await
    }

    /// `POST /v1/routes/ack` with `body`.
    pub async fn ack(&self, body: &str) -> (u16, String) {
        let req = http::Request::post(self.url(ACK_PATH))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        answer(&self.client, req).await
    }

    /// Subscribes over HTTP/1.1 with `query` (`""` or `?proxy=ID`).
    pub async fn subscribe(&self, query: &str) -> (u16, Stream) {
        subscribe(&self.client, &self.base, query).await
    }

    /// `GET /v1/proxies`.
    pub async fn listed(&self) -> serde_json::Value {
        let (status, body) = self.get(PROXIES_PATH).await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("json")
    }

    /// Stops the server and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server stops");
    }
}

/// The push server's metrics and the registry they are in.
struct Metrics {
    push: PushMetrics,
    registry: prometheus::Registry,
}

/// Sends `req`: status and body.
pub async fn answer(client: &HttpClient, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET url`: status and body.
pub async fn get(client: &HttpClient, url: &str) -> (u16, String) {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    answer(client, req).await
}

/// Reads table lines from a subscription, skipping heartbeats.
pub struct Stream {
    body: Incoming,
    lines: LineDecoder,
}

impl Stream {
    /// The next table of the stream.
    pub async fn next_table(&mut self) -> RouteTable {
        loop {
            if let Some(line) = self.lines.next_line().expect("short lines") {
                return serde_json::from_slice(&line).expect("a table");
            }
            let frame = self.body.frame().await.expect("open").expect("frame");
            if let Ok(data) = frame.into_data() {
                self.lines.feed(&data);
            }
        }
    }
}

impl Stream {
    /// Reads until the stream ends: `true` when it ended cleanly, `false` on an error.
    pub async fn end(&mut self) -> bool {
        loop {
            match self.body.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Subscribes through `client` with `query` (`""` or `?proxy=ID`): the status, and
/// the stream (read it only after a `200`).
pub async fn subscribe(client: &HttpClient, base: &str, query: &str) -> (u16, Stream) {
    let req = http::Request::get(format!("{base}{WATCH_PATH}{query}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("subscribe");
    let status = resp.status().as_u16();
    assert!(
        status != 200 || resp.headers()["content-type"] == "application/x-ndjson",
        "{:?}",
        resp.headers()
    );
    (
        status,
        Stream {
            body: resp.into_body(),
            lines: LineDecoder::default(),
        },
    )
}

/// Proxy `proxy` acknowledges `table`.
pub fn ack(proxy: &str, table: &RouteTable) -> Ack {
    Ack::of(proxy.parse().expect("a proxy name"), table)
}
