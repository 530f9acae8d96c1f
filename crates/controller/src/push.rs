//! The push server: every proxy subscribes to a long-lived HTTP stream of tables.
//!
//! `GET /v1/routes/watch` answers `200` with `application/x-ndjson`: the current table
//! at once (when there is one), then each newly published table, one JSON object per
//! line. An empty line is sent every heartbeat interval so that a proxy can tell a
//! quiet controller from a dead connection. Also served: `GET /v1/routes` (the current
//! table), `/healthz`, `/readyz` (a table has been published) and `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::publisher::{Published, Publisher};

/// The path proxies subscribe on.
pub const WATCH_PATH: &str = "/v1/routes/watch";

/// How long shutdown waits for open connections before closing them.
const DRAIN: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

/// Settings of the push server.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Interval between heartbeat lines on an idle stream.
    pub heartbeat: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// Metrics of the push server, registered in the registry given to [`PushMetrics::new`].
#[derive(Clone, Debug)]
pub struct PushMetrics {
    registry: Registry,
    connected: IntGauge,
    subscriptions: IntCounter,
    pushes: IntCounter,
    version: IntGauge,
}

impl PushMetrics {
    /// Creates the metrics and registers them.
    ///
    /// # Errors
    ///
    /// When a metric of the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let connected = IntGauge::new(
            "sluice_controller_connected_proxies",
            "Proxies currently subscribed to the table stream",
        )?;
        let subscriptions = IntCounter::new(
            "sluice_controller_subscriptions_total",
            "Subscriptions accepted since start",
        )?;
        let pushes = IntCounter::new(
            "sluice_controller_table_pushes_total",
            "Tables written to subscribers",
        )?;
        let version = IntGauge::new(
            "sluice_controller_table_version",
            "Version of the current table (0 before the first)",
        )?;
        for m in [&connected, &version] {
            registry.register(Box::new(m.clone()))?;
        }
        for m in [&subscriptions, &pushes] {
            registry.register(Box::new(m.clone()))?;
        }
        Ok(Self {
            registry: registry.clone(),
            connected,
            subscriptions,
            pushes,
            version,
        })
    }
}

/// Serves the push API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    publisher: Publisher,
    metrics: PushMetrics,
    config: PushConfig,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let state = Arc::new((publisher, metrics, config));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "push server: accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, &state.0, &state.1, &state.2)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "push server: connection ended");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("push server: closing subscriptions still open after {DRAIN:?}");
    }
}

fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    publisher: &Publisher,
    metrics: &PushMetrics,
    config: &PushConfig,
) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    let current = publisher.current();
    metrics.version.set(
        current
            .as_ref()
            .map_or(0, |p| i64::try_from(p.table.version).unwrap_or(i64::MAX)),
    );
    match req.uri().path() {
        WATCH_PATH => {
            tracing::info!(%peer, "proxy subscribed");
            watch_response(publisher.subscribe(), metrics.clone(), config.heartbeat)
        }
        "/v1/routes" => match current {
            Some(p) => Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(p.line.clone()).boxed())
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no table published yet\n"),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if current.is_some() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "no table published yet\n"),
        "/metrics" => {
            let mut buf = Vec::new();
            let _ = TextEncoder::new().encode(&metrics.registry.gather(), &mut buf);
            Response::builder()
                .header(header::CONTENT_TYPE, TextEncoder::new().format_type())
                .body(Full::new(Bytes::from(buf)).boxed())
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Decrements the connected gauge when a subscription ends, however it ends.
struct Subscription {
    rx: watch::Receiver<Option<Arc<Published>>>,
    metrics: PushMetrics,
    heartbeat: tokio::time::Interval,
    first: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.metrics.connected.dec();
    }
}

fn watch_response(
    rx: watch::Receiver<Option<Arc<Published>>>,
    metrics: PushMetrics,
    heartbeat: Duration,
) -> Response<Body> {
    metrics.connected.inc();
    metrics.subscriptions.inc();
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sub = Subscription {
        rx,
        metrics,
        heartbeat: interval,
        first: true,
    };
    let frames = stream::unfold(sub, |mut sub| async move {
        if sub.first {
            sub.first = false;
            let current = sub.rx.borrow_and_update().clone();
            if let Some(p) = current {
                sub.metrics.pushes.inc();
                return Some((Ok(Frame::data(p.line.clone())), sub));
            }
        }
        tokio::select! {
            changed = sub.rx.changed() => {
                // The publisher lives as long as the server; an error means shutdown.
                changed.ok()?;
                let current = sub.rx.borrow_and_update().clone();
                let line = current.map_or_else(|| Bytes::from_static(b"\n"), |p| {
                    sub.metrics.pushes.inc();
                    p.line.clone()
                });
                Some((Ok(Frame::data(line)), sub))
            }
            _ = sub.heartbeat.tick() => Some((Ok(Frame::data(Bytes::from_static(b"\n"))), sub)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
}
