//! One connection, from accepted to closed: the TLS handshake within its timeout, the
//! first bytes within the header-read timeout, HTTP/1.1 or HTTP/2, closed once idle for
//! the idle timeout, and asked to finish when the listener drains.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::activity::{Activity, Tracked};
use crate::detection::Detection;
use crate::tls::PeerCertificates;
use crate::{ConnectionMetrics, ServerConfig};

/// A request extension: the request came over a TLS connection (the handler tells
/// agents `X-Forwarded-Proto: https`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverTls;

/// What every connection of a listener shares.
pub(crate) struct Shared<H> {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) handler: H,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: ConnectionMetrics,
    /// `true` once the listener drains.
    pub(crate) stop: watch::Receiver<bool>,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn run<H, F, B>(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared<H>>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(tls) = &shared.config.tls else {
        return serve_io(stream, peer, None, &shared).await;
    };
    let timeout = shared.config.tls_handshake_timeout;
    match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Err(_) => {
            shared.metrics.timed_out_handshake.inc();
            tracing::debug!(%peer, "TLS handshake not done within {timeout:?}");
        }
        Ok(Err(e)) => {
            shared.metrics.handshake_failed.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Ok(Ok(stream)) => {
            shared.metrics.handshake_ok.inc();
            let certificates = stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|chain| !chain.is_empty())
                .map(|chain| {
                    PeerCertificates::new(
                        chain
                            .iter()
                            .map(|c| c.clone().into_owned())
                            .collect::<Vec<_>>(),
                    )
                });
            serve_io(stream, peer, Some(certificates), &shared).await;
        }
    }
}

/// HTTP over `io` until the connection ends. Over TLS (`tls` is the client's
/// certificates, if any), each request carries [`OverTls`], and [`PeerCertificates`]
/// when the client presented some.
async fn serve_io<I, H, F, B>(
    io: I,
    peer: SocketAddr,
    tls: Option<Option<PeerCertificates>>,
    shared: &Shared<H>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = &shared.config;
    // The header-read timeout covers the wait for the first bytes too.
    let io = Detection::new(
        io,
        config.header_read_timeout,
        shared.metrics.timed_out_first_bytes.clone(),
    );
    let activity = Activity::new();
    let handler = shared.handler.clone();
    let requests = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        if let Some(certificates) = &tls {
            req.extensions_mut().insert(OverTls);
            if let Some(certificates) = certificates {
                req.extensions_mut().insert(certificates.clone());
            }
        }
        let busy = requests.begin();
        // Boxed: hyper keeps room for one request's future in every connection,
        // idle or not, and the handler's is several kilobytes. The room is taken
        // before the handler is called, so that its future can be made in place
        // rather than on the stack and copied in.
        let slot = Box::new_uninit();
        let response = Box::into_pin(Box::write(slot, handler(req, peer)));
        async move { Ok::<_, Infallible>(response.await.map(|body| Tracked::new(body, busy))) }
    });
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    let mut closing = *stop.borrow_and_update();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let idle = config.idle_timeout;
    loop {
        let wake = activity
            .idle_since()
            .map_or_else(|| tokio::time::Instant::now() + idle, |since| since + idle);
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow_and_update() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake), if !closing => {
                if activity.idle_since().is_some_and(|since| since.elapsed() >= idle) {
                    tracing::debug!(%peer, "closing a connection idle for {idle:?}");
                    shared.metrics.timed_out_idle.inc();
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
