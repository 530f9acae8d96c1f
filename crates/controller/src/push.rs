//! The push server: every proxy subscribes to a long-lived HTTP stream of tables.
//!
//! `GET /v1/routes/watch?proxy=ID` answers `200` with `application/x-ndjson`: the
//! current table at once (when there is one), then each newly published table, one JSON
//! object per line. An empty line is sent every heartbeat interval so that a proxy can
//! tell a quiet controller from a dead connection.
//!
//! The proxy acknowledges each table it applied with `POST /v1/routes/ack` and an
//! [`Ack`] as the JSON body (`204` when recorded, `404` when no subscription of that
//! name is open here, `409` for a version or revision not published, `400` for a
//! malformed body). The paths, names, acknowledgement and line framing are defined
//! once, for both sides, in [`sluice_api::push`]. The [`ProxyRegistry`] keeps what each
//! named subscription acknowledged; a subscription without `proxy=` is served but not
//! tracked. The proxy sends its acknowledgements over the HTTP/2 connection of its
//! subscription, so that behind a Service they reach the replica that streams to it.
//!
//! Every few seconds each proxy posts its pools' load on `POST /v1/proxies/report`
//! (a [`LoadReport`]; `204` when kept, `404` when no subscription of that name is open
//! here, `400` for a malformed or out-of-bounds report), over the same connection;
//! the registry keeps it with the proxy's entry ([`crate::load`]).
//!
//! Also served: `GET /v1/routes` (the current table), `GET /v1/proxies` (the tracked
//! proxies and their versions, JSON), `/healthz`, `/readyz` (a table has been
//! published) and `/metrics`.
//!
//! Every path but the last three needs a bearer token ([`crate::auth`],
//! [`PushConfig::auth`]): a caller without a valid one is answered `401` (`403` when
//! its identity may not take that path: only proxies subscribe and acknowledge, only
//! controller replicas list the proxies) before anything of the table is read. With a
//! [`PushConfig::subscription_lifetime`], a subscription ends after about that long,
//! and its proxy subscribes again with its current token: a revoked token stops
//! receiving tables within a lifetime. `/metrics` stays open (Prometheus scrapes it; it
//! holds counts, versions and revision digests, nothing of the table's content), as do
//! the health checks.
//!
//! Connections are accepted by [`sluice_listener::serve`], with the limits of
//! [`PushConfig::listener`]: a subscription is a response that never ends, which
//! neither the header-read timeout (only while a request head is awaited) nor the
//! HTTP/2 keep-alive (only a peer that stops answering pings) cuts.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use sluice_api::load::LoadReport;
use sluice_api::push::{
    ACK_PATH, Ack, HEARTBEAT, PROXIES_PATH, PROXY_ID_RULE, REPORT_PATH, ROUTES_PATH, WATCH_PATH,
    proxy_param,
};
use sluice_listener::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{AuthError, PushAuth, Role};
use crate::proxies::{AckError, Acked, ProxyRegistry, RegisterError, Registration, ReportError};
use crate::publisher::{Published, Publisher};

/// The largest acknowledgement body read.
const MAX_ACK_BYTES: usize = 4096;
/// The largest load report read (about 200 bytes a pool).
const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// Longest wait for an acknowledgement's body.
const ACK_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for open connections before closing them, by default.
/// Subscriptions never end on their own: shutdown always waits this long while a
/// proxy is subscribed.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

/// Settings of the push server.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Interval between heartbeat lines on an idle stream.
    pub heartbeat: Duration,
    /// What one connection may cost, and how long shutdown drains
    /// ([`DEFAULT_DRAIN`] by default; the other limits are the listener's defaults),
    /// and TLS.
    pub listener: ServerConfig,
    /// How callers authenticate ([`PushAuth::Open`] by default).
    pub auth: PushAuth,
    /// A subscription ends after between 80% and 100% of this (spread, so that the
    /// proxies of a restart do not come back together), `None`: never.
    pub subscription_lifetime: Option<Duration>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            auth: PushAuth::Open,
            subscription_lifetime: None,
            heartbeat: Duration::from_secs(10),
            listener: ServerConfig {
                drain_timeout: DEFAULT_DRAIN,
                ..ServerConfig::default()
            },
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
    table_bytes: IntGauge,
    table_pools: IntGauge,
    table_endpoints: IntGauge,
    auth_failures: IntCounterVec,
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
        let table_bytes = IntGauge::new(
            "sluice_controller_table_bytes",
            "Size of the current table as pushed (one JSON line)",
        )?;
        let table_pools = IntGauge::new(
            "sluice_controller_table_pools",
            "Pools in the current table",
        )?;
        let table_endpoints = IntGauge::new(
            "sluice_controller_table_endpoints",
            "Endpoints in the current table, over all pools",
        )?;
        for m in [
            &connected,
            &version,
            &table_bytes,
            &table_pools,
            &table_endpoints,
        ] {
            registry.register(Box::new(m.clone()))?;
        }
        for m in [&subscriptions, &pushes] {
            registry.register(Box::new(m.clone()))?;
        }
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "sluice_controller_push_auth_failures_total",
                "Calls to the push API refused before anything was served, by reason (missing, refused, forbidden, unavailable)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(Self {
            registry: registry.clone(),
            connected,
            subscriptions,
            pushes,
            version,
            table_bytes,
            table_pools,
            table_endpoints,
            auth_failures,
        })
    }

    /// The metrics [`PushMetrics::new`] registers (for `sluice metrics`).
    ///
    /// # Errors
    ///
    /// Never in practice: the definitions are fixed and the registry is fresh.
    pub fn metric_descs() -> prometheus::Result<Vec<prometheus::core::Desc>> {
        let m = Self::new(&Registry::new())?;
        let collectors: [&dyn prometheus::core::Collector; 7] = [
            &m.connected,
            &m.subscriptions,
            &m.pushes,
            &m.version,
            &m.table_bytes,
            &m.table_pools,
            &m.table_endpoints,
        ];
        Ok(collectors.iter().flat_map(|c| c.desc()).cloned().collect())
    }
}

/// Serves the push API on `listener` until `shutdown` completes, with a
/// [`ProxyRegistry`] of its own whose metrics join `metrics`' registry. Use
/// [`serve_with`] to share the registry (with the status writer).
pub async fn serve(
    listener: TcpListener,
    publisher: Publisher,
    metrics: PushMetrics,
    config: PushConfig,
    shutdown: impl Future<Output = ()>,
) {
    let proxies = ProxyRegistry::new(publisher);
    if let Err(e) = proxies.register_metrics(&metrics.registry) {
        tracing::warn!(error = %e, "push server: proxy metrics not registered");
    }
    serve_with(listener, proxies, metrics, config, shutdown).await;
}

/// Serves the push API on `listener` until `shutdown` completes, tracking proxies in
/// `proxies` (whose publisher supplies the tables). Register the registry's metrics
/// with [`ProxyRegistry::register_metrics`] first.
pub async fn serve_with(
    listener: TcpListener,
    proxies: ProxyRegistry,
    metrics: PushMetrics,
    config: PushConfig,
    shutdown: impl Future<Output = ()>,
) {
    let limits = config.listener.clone();
    let state = Arc::new(State {
        proxies,
        metrics,
        config,
    });
    let handler = move |req, peer| {
        let state = state.clone();
        async move { handle(req, peer, &state).await }
    };
    sluice_listener::serve(listener, limits, handler, shutdown).await;
}

struct State {
    proxies: ProxyRegistry,
    metrics: PushMetrics,
    config: PushConfig,
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &State) -> Response<Body> {
    let publisher = state.proxies.publisher();
    let metrics = &state.metrics;
    let current = publisher.current();
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.version.set(
        current
            .as_ref()
            .map_or(0, |p| i64::try_from(p.table.version).unwrap_or(i64::MAX)),
    );
    metrics
        .table_bytes
        .set(current.as_ref().map_or(0, |p| gauge(p.line.len())));
    metrics
        .table_pools
        .set(current.as_ref().map_or(0, |p| gauge(p.table.pools.len())));
    metrics.table_endpoints.set(current.as_ref().map_or(0, |p| {
        gauge(
            p.table
                .pools
                .iter()
                .map(|pool| pool.endpoints().count())
                .sum(),
        )
    }));
    if let Some(refused) = authenticate(&req, peer, state).await {
        return refused;
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, ACK_PATH) => return ack(req, &state.proxies).await,
        (&Method::POST, REPORT_PATH) => return report(req, &state.proxies).await,
        (&Method::GET, _) => {}
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served, and POST on /v1/routes/ack and /v1/proxies/report\n",
            );
        }
    }
    match req.uri().path() {
        WATCH_PATH => {
            let registration = match proxy_param(req.uri().query()) {
                None => {
                    tracing::info!(%peer, "proxy subscribed without a name; not tracked");
                    None
                }
                Some(id) => match state.proxies.register(id, peer) {
                    Ok(r) => {
                        tracing::info!(%peer, proxy = id, "proxy subscribed");
                        Some(r)
                    }
                    Err(RegisterError::InvalidId) => {
                        return text(StatusCode::BAD_REQUEST, format!("proxy: {PROXY_ID_RULE}\n"));
                    }
                    Err(e @ RegisterError::Full(_)) => {
                        tracing::warn!(%peer, proxy = id, error = %e, "proxy subscribed; served but not tracked");
                        None
                    }
                },
            };
            let lifetime = state
                .config
                .subscription_lifetime
                .map(|l| l.mul_f64(0.8 + 0.2 * fastrand::f64()));
            watch_response(
                publisher.subscribe(),
                registration,
                metrics.clone(),
                state.config.heartbeat,
                lifetime,
            )
        }
        ROUTES_PATH => match current {
            Some(p) => Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(p.line.clone()).boxed())
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no table published yet\n"),
        },
        PROXIES_PATH => {
            let summary = state.proxies.summary();
            let body = serde_json::json!({
                "version": summary.version,
                "revision": summary.revision,
                "connected": summary.connected,
                "current": summary.current,
                "stale": summary.stale,
                "proxies": state.proxies.snapshot(),
            });
            json(StatusCode::OK, &body)
        }
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

/// The roles that may take `path`; `None` for the open paths.
fn roles(path: &str) -> Option<&'static [Role]> {
    match path {
        WATCH_PATH | ACK_PATH | REPORT_PATH => Some(&[Role::Proxy]),
        PROXIES_PATH => Some(&[Role::Peer]),
        ROUTES_PATH => Some(&[Role::Proxy, Role::Peer]),
        _ => None,
    }
}

/// The answer to a call that is not authenticated or not allowed; `None` to serve it.
async fn authenticate(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &State,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    let roles = roles(path)?;
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (status, reason, error) = match state.config.auth.check(authorization).await {
        Ok(caller) if roles.iter().any(|&r| caller.is(r)) => return None,
        Ok(caller) => (
            StatusCode::FORBIDDEN,
            "forbidden",
            AuthError::Forbidden(caller.name),
        ),
        Err(e @ AuthError::Missing) => (StatusCode::UNAUTHORIZED, "missing", e),
        Err(e @ AuthError::Refused(_)) => (StatusCode::UNAUTHORIZED, "refused", e),
        Err(e @ AuthError::Forbidden(_)) => (StatusCode::FORBIDDEN, "forbidden", e),
        Err(e @ AuthError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    state
        .metrics
        .auth_failures
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(%peer, path, error = %error, "push API call refused");
    let mut resp = json(status, &serde_json::json!({ "error": error.to_string() }));
    let headers = resp.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        _ => {}
    }
    Some(resp)
}

/// The body of `req`, at most `max` bytes read within [`ACK_READ_TIMEOUT`], or the
/// answer to give.
async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(ACK_READ_TIMEOUT, body.collect()).await {
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "body too slow\n")),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"))
        }
        Ok(Err(_)) => Err(text(StatusCode::BAD_REQUEST, "body unreadable\n")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// `POST /v1/proxies/report`.
async fn report(req: Request<Incoming>, proxies: &ProxyRegistry) -> Response<Body> {
    let bytes = match read_body(req, MAX_REPORT_BYTES).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let report = match serde_json::from_slice::<LoadReport>(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("not a load report: {e}") }),
            );
        }
    };
    let proxy = report.proxy.clone();
    match proxies.report(report) {
        Ok(()) => no_content(),
        Err(e @ ReportError::UnknownProxy(_)) => {
            tracing::debug!(error = %e, "load report refused");
            json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": e.to_string() }),
            )
        }
        Err(e @ ReportError::Invalid(_)) => {
            tracing::warn!(%proxy, error = %e, "load report refused");
            json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": e.to_string() }),
            )
        }
    }
}

/// `POST /v1/routes/ack`.
async fn ack(req: Request<Incoming>, proxies: &ProxyRegistry) -> Response<Body> {
    let bytes = match read_body(req, MAX_ACK_BYTES).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Ok(ack) = serde_json::from_slice::<Ack>(&bytes) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected {\"proxy\": ID, \"version\": N, \"revision\": \"...\"}\n",
        );
    };
    match proxies.ack(&ack) {
        Ok(Acked::Recorded(latency)) => {
            tracing::debug!(proxy = %ack.proxy, version = ack.version, ?latency, "proxy acknowledged a table");
            no_content()
        }
        Ok(Acked::Ignored) => no_content(),
        Err(e @ AckError::UnknownProxy(_)) => {
            tracing::debug!(error = %e, "acknowledgement refused");
            json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": e.to_string() }),
            )
        }
        Err(e) => {
            tracing::warn!(proxy = %ack.proxy, error = %e, "acknowledgement refused");
            json(
                StatusCode::CONFLICT,
                &serde_json::json!({ "error": e.to_string() }),
            )
        }
    }
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Decrements the connected gauge, and removes the proxy from the registry, when a
/// subscription ends, however it ends.
struct Subscription {
    rx: watch::Receiver<Option<Arc<Published>>>,
    metrics: PushMetrics,
    heartbeat: tokio::time::Interval,
    /// When the subscription ends, if it does.
    ends: Option<tokio::time::Instant>,
    first: bool,
    _registration: Option<Registration>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.metrics.connected.dec();
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn watch_response(
    rx: watch::Receiver<Option<Arc<Published>>>,
    registration: Option<Registration>,
    metrics: PushMetrics,
    heartbeat: Duration,
    lifetime: Option<Duration>,
) -> Response<Body> {
    metrics.connected.inc();
    metrics.subscriptions.inc();
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sub = Subscription {
        rx,
        metrics,
        heartbeat: interval,
        ends: lifetime.map(|l| tokio::time::Instant::now() + l),
        first: true,
        _registration: registration,
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
                let line = current.map_or_else(|| Bytes::from_static(HEARTBEAT), |p| {
                    sub.metrics.pushes.inc();
                    p.line.clone()
                });
                Some((Ok(Frame::data(line)), sub))
            }
            _ = sub.heartbeat.tick() => Some((Ok(Frame::data(Bytes::from_static(HEARTBEAT))), sub)),
            // The proxy subscribes again, with its current token.
            () = sleep_until_some(sub.ends) => None,
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
}
