//! Accepting connections for Sluice's servers: the proxy's traffic and admin listeners
//! and the controller's push server.
//!
//! [`serve`] owns everything between `accept()` and a request handed to the handler:
//! HTTP/1.1 and HTTP/2 (prior knowledge, h2c) on one listener through hyper-util's auto
//! builder, what one connection may cost ([`ServerConfig`]: a header-read timeout that
//! also bounds the wait for a connection's first bytes, header and stream limits,
//! HTTP/2 keep-alive), a pause after a failed `accept()`
//! (out of file descriptors, say) instead of a spin, and graceful shutdown: stop
//! accepting, let open connections finish for a while, then close them.
//!
//! It knows nothing of what is served. TLS termination and a cap on open connections
//! belong here too when they come, so that every listener gets them at once.
//!
//! Long-lived responses (the controller's table stream) are not cut by any of this:
//! the header-read timeout applies only while a request head is awaited, and the
//! HTTP/2 keep-alive disconnects only a peer that stops answering pings.

mod detection;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The pause after a failed `accept()` before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Listener settings: what one client connection may cost in memory and time.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A client must send each request's headers within this time (the first request
    /// of a connection: its first bytes, then its headers, each within this time); an
    /// idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            h2_keep_alive: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// The auto (HTTP/1.1 and HTTP/2) connection builder with these limits.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(20)
            .keep_alive_interval(self.h2_keep_alive)
            .keep_alive_timeout(self.h2_keep_alive);
        builder
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains: the
/// listener is closed, open connections are asked to finish (HTTP/1.1 after the
/// response in flight, HTTP/2 with a GOAWAY) and get [`ServerConfig::drain_timeout`]
/// to do so, then those still open are closed.
///
/// `handler` is called with each request and the address of the peer that sent it.
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
    let builder = config.builder();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Forget the connections that ended.
            Some(_) = connections.join_next() => continue,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, listener = ?local, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        // Small writes (stream lines, acknowledgements, short answers) must not wait
        // for Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "TCP_NODELAY not set");
        }
        // The header-read timeout covers the wait for the first bytes too.
        let io = detection::Detection::new(stream, config.header_read_timeout);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        );
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    // New connections are refused from now on, not left waiting in the backlog.
    drop(listener);
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = ?local,
            "closing connections still busy after {:?}",
            config.drain_timeout
        );
    }
    connections.shutdown().await;
}
