//! Accepting connections for Sluice's servers: the proxy's traffic and admin listeners
//! and the controller's push server.
//!
//! [`serve`] owns everything between `accept()` and a request handed to the handler:
//!
//! * TLS termination when [`ServerConfig::tls`] is set ([`tls`]: certificates chosen by
//!   SNI and reloaded when their files change, ALPN `h2` and `http/1.1`, TLS 1.2 and
//!   1.3), the handshake bounded by [`ServerConfig::tls_handshake_timeout`];
//! * HTTP/1.1 and HTTP/2 (over TLS by ALPN, in clear by prior knowledge) on one
//!   listener through hyper-util's auto builder;
//! * what one connection may cost: a header-read timeout that also bounds the wait for
//!   a connection's first bytes, an idle timeout (no request in flight) for HTTP/1.1
//!   keep-alive and HTTP/2 alike, header and stream limits, HTTP/2 keep-alive pings;
//! * how many connections are open: a cap per listener and, optionally, per client
//!   address; a connection over a cap is closed at once and counted;
//! * a pause after a failed `accept()` (out of file descriptors, say) instead of a
//!   spin, logged once per run of failures and counted;
//! * graceful shutdown: stop accepting, let open connections finish for a while, then
//!   close them.
//!
//! What happens is counted in [`ListenerMetrics`]. It knows nothing of what is served.
//! Connections parked or closed are also counted in [`memory::RELEASED`], after which
//! [`memory::trim_when_released`] has the allocator return the pages they freed.
//!
//! Long-lived responses (the controller's table stream, a streamed completion) are not
//! cut by any of this: a response counts as in flight until its body ends, the
//! header-read timeout applies only while a request head is awaited, and the HTTP/2
//! keep-alive disconnects only a peer that stops answering pings.

mod activity;
mod connection;
mod limits;
pub mod memory;
mod metrics;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::connection::OverTls;
use crate::connection::Shared;
use crate::limits::{Limits, Refused};
pub use crate::metrics::{ConnectionMetrics, ListenerMetrics};
pub use crate::tls::{CertificateFiles, PeerCertificates, TlsConfig, TlsError};
pub use crate::workers::Workers;

/// The pause after a failed `accept()` before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a cleartext HTTP/1.1 connection whose client came back within this time
/// of its last parked wait is left in hyper's hands, buffers and all, while it waits
/// for its next request, before it is parked (its task looks once per this time, so
/// it is parked within twice it). Connections that come back later, and a
/// connection's first wait, are parked at once: a new hyper connection for every
/// request would cost some 12% more instructions per request.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The default cap on a listener's open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Listener settings: what one client connection may cost in memory and time, and how
/// many may be open.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A client must send each request's headers within this time (the first request
    /// of a connection: its first bytes, then its headers, each within this time); an
    /// idle HTTP/1.1 keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY).
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
    /// Most connections open at once; beyond it a new connection is closed at once.
    /// `None`: no cap.
    pub max_connections: Option<NonZeroUsize>,
    /// Most connections open at once from one client address (an IPv4 address, an
    /// IPv6 /64). `None`: no cap. Behind a load balancer that does not preserve client
    /// addresses, every client shares one.
    pub max_connections_per_client: Option<NonZeroUsize>,
    /// Most headers in an HTTP/1.1 request.
    pub max_headers: usize,
    /// Largest HTTP/1.1 read buffer (bounds the request head), and largest HTTP/2
    /// header list, in bytes.
    pub max_header_bytes: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within the same
    /// time is disconnected.
    pub h2_keep_alive: Duration,
    /// Terminate TLS with these certificates; `None`: cleartext.
    pub tls: Option<TlsConfig>,
    /// A TLS client must complete its handshake within this time.
    pub tls_handshake_timeout: Duration,
    /// Where connections are counted (by default, nowhere).
    pub metrics: ConnectionMetrics,
    /// Accept and serve on these workers, each connection on the worker that accepted
    /// it; `None`: on the runtime that runs [`serve`].
    pub workers: Option<Workers>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_connections: NonZeroUsize::new(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client: None,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            h2_keep_alive: Duration::from_secs(30),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            metrics: ConnectionMetrics::default(),
            workers: None,
        }
    }
}

impl ServerConfig {
    /// The HTTP/1.1 connection builder with these limits. `timed`: hyper's own
    /// header-read timeout, for connections that are not parked between requests.
    /// Otherwise the connection's own deadline bounds the wait for a head, and hyper
    /// gets a timer whose sleeps never end ([`Untimed`]).
    fn http1(&self, timed: bool) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes.max(8192))
            // hyper's queue of buffers for `writev` stays (as on agent connections):
            // writing from one buffer costs fewer instructions, but that buffer keeps
            // the size of the largest body chunk written for as long as the connection
            // lives.
            .header_read_timeout(self.header_read_timeout);
        if timed {
            builder.timer(TokioTimer::new());
        } else {
            builder.timer(Untimed);
        }
        builder
    }

    /// The HTTP/2 connection builder with these limits.
    fn http2(&self) -> http2::Builder<TokioExecutor> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(20)
            .keep_alive_interval(self.h2_keep_alive)
            .keep_alive_timeout(self.h2_keep_alive);
        builder
    }
}

/// hyper's timer for connections the listener times itself (cleartext HTTP/1.1,
/// parked between requests). A header-read timeout is what makes hyper read again as
/// soon as it has answered a request (the read that finds nothing is how the listener
/// sees the connection wait, and parks it), so one is set; but the connection's own
/// deadline closes one whose head is late, and these sleeps never end. They cost
/// neither an allocation nor an entry in the runtime's timers, which hyper's own
/// timer (a 30-second default if none were set) would take for every request.
#[derive(Clone, Copy, Debug)]
struct Untimed;

/// A sleep that never ends (see [`Untimed`]): it keeps no waker, as none is woken.
struct Endless;

impl Future for Endless {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Endless {}

impl hyper::rt::Timer for Untimed {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Endless)
    }

    fn sleep_until(&self, _: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Endless)
    }

    fn reset(&self, _: &mut Pin<Box<dyn hyper::rt::Sleep>>, _: std::time::Instant) {}
}

/// Whether a failed `accept()` says the process or the system ran out of file
/// descriptors (`EMFILE`, `ENFILE`).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Whether a failed `accept()` concerns only the connection it would have returned
/// (its client gave up first): accept the next at once.
fn connection_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// What an accepted connection holds until its task ends, however it ends: its place
/// under the connection caps and its count among the open ones. Its end also counts
/// as a connection's buffers released ([`memory`]).
pub(crate) struct Held {
    _permit: limits::Permit,
    open: IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
        memory::RELEASED.add(1);
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains: the
/// listener is closed, open connections are asked to finish (HTTP/1.1 after the
/// response in flight, HTTP/2 with a GOAWAY) and get [`ServerConfig::drain_timeout`]
/// to do so, then those still open are closed.
///
/// `handler` is called with each request and the address of the peer that sent it.
/// With [`ServerConfig::tls`], the certificate files are read for changes while this
/// runs. With [`ServerConfig::workers`], every worker accepts on the listener and
/// serves the connections it accepted; otherwise connections are served on the
/// runtime that runs this.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    config: ServerConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let local = listener.local_addr().ok();
    let limits = Arc::new(Limits::new(
        config.max_connections,
        config.max_connections_per_client,
    ));
    let metrics = config.metrics.clone();
    let reloader = config
        .tls
        .clone()
        .map(|tls| AbortOnDrop(tokio::spawn(tls::watch(tls, metrics.clone(), local))));
    let (stop, stopped) = watch::channel(false);
    let workers = config.workers.clone();
    let shared = Arc::new(Shared {
        http1_parked: config.http1(false),
        http1: config.http1(true),
        http2: config.http2(),
        handler,
        config,
        metrics,
        stop: stopped,
    });
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    match workers {
        None => {
            tokio::join!(signal, accept(listener, local, shared, limits));
        }
        Some(workers) => {
            let listener = match listener.into_std() {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, listener = ?local, "the listener cannot be handed to the workers");
                    return;
                }
            };
            let mut loops = Vec::with_capacity(workers.len());
            for handle in workers.handles() {
                let listener = match listener.try_clone() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, listener = ?local, "the listener cannot be shared with a worker");
                        continue;
                    }
                };
                let (shared, limits) = (shared.clone(), limits.clone());
                loops.push(AbortOnDrop(handle.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept(listener, local, shared, limits).await,
                        Err(e) => {
                            tracing::error!(error = %e, listener = ?local, "a worker cannot accept on the listener");
                        }
                    }
                })));
            }
            drop(listener);
            let finished = async {
                for l in &mut loops {
                    let _ = (&mut l.0).await;
                }
            };
            tokio::join!(signal, finished);
        }
    }
    drop(reloader);
}

/// Aborts a task when dropped: the tasks `serve` started end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts on `listener` and serves each connection until `shared.stop` turns true,
/// then drains as [`serve`] says.
async fn accept<H, F, B>(
    listener: TcpListener,
    local: Option<SocketAddr>,
    shared: Arc<Shared<H>>,
    limits: Arc<Limits>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let metrics = &shared.metrics;
    let drain_timeout = shared.config.drain_timeout;
    let mut stopped = shared.stop.clone();
    let shutdown = stopped.wait_for(|stop| *stop);
    let mut connections = JoinSet::new();
    // Failed accepts in a row.
    let mut failing: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Forget the connections that ended.
            Some(_) = connections.join_next() => continue,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if connection_gone(&e) => continue,
            Err(e) => {
                let descriptors = out_of_descriptors(&e);
                if descriptors {
                    metrics.accept_descriptors.inc();
                } else {
                    metrics.accept_other.inc();
                }
                if failing == 0 {
                    tracing::warn!(
                        error = %e, listener = ?local, open = limits.open(), out_of_descriptors = descriptors,
                        "accept failed; trying again every {ACCEPT_BACKOFF:?} until it succeeds"
                    );
                }
                failing += 1;
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        if failing > 0 {
            tracing::info!(listener = ?local, failed = failing, "accepting connections again");
            failing = 0;
        }
        let permit = match limits.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                // Dropping the stream closes the connection.
                let (counter, cap) = match refused {
                    Refused::Listener => (&metrics.refused_listener, "max connections"),
                    Refused::ClientAddress => {
                        (&metrics.refused_client, "max connections per client")
                    }
                };
                counter.inc();
                tracing::debug!(%peer, listener = ?local, "connection refused: {cap} reached");
                continue;
            }
        };
        metrics.accepted.inc();
        metrics.open.inc();
        let held = Held {
            _permit: permit,
            open: metrics.open.clone(),
        };
        // Small writes (stream lines, acknowledgements, short answers) must not wait
        // for Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "TCP_NODELAY not set");
        }
        // The connection's future is the task's, not wrapped in another that would
        // keep a second copy of its arguments for as long as the connection is open.
        connections.spawn(connection::run(stream, peer, shared.clone(), held));
    }
    // New connections are refused from now on, not left waiting in the backlog.
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        tracing::warn!(
            listener = ?local,
            "closing connections still busy after {drain_timeout:?}"
        );
    }
    connections.shutdown().await;
}
