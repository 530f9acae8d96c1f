//! One connection, from accepted to closed: the TLS handshake within its timeout, the
//! first bytes within the header-read timeout, HTTP/1.1 or HTTP/2, closed once idle for
//! the idle timeout, and asked to finish when the listener drains.
//!
//! A cleartext HTTP/1.1 connection is parked whenever it waits for its next request,
//! as nginx's keep-alive connections are: hyper's connection, with its read and write
//! buffers, is taken apart (any bytes of a request already read are kept) and only the
//! socket is held until the client sends again; then a new hyper connection serves
//! it. An idle client then costs the socket and a small task, not some 24 KB of
//! buffers. While parked, the connection is closed once it has had no request in
//! flight for the header-read or the idle timeout, whichever is shorter, as hyper
//! would have closed it.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::activity::{Activity, Tracked};
use crate::stream::{ClientStream, Stream, Version, read_version};
use crate::tls::PeerCertificates;
use crate::{ConnectionMetrics, Held, PARK_AFTER, ServerConfig};

/// A request extension: the request came over a TLS connection (the handler tells
/// agents `X-Forwarded-Proto: https`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverTls;

/// What every connection of a listener shares.
pub(crate) struct Shared<H> {
    /// For connections parked between requests, whose wait for a request head the
    /// connection's task times.
    pub(crate) http1_parked: http1::Builder,
    /// For connections that are not (over TLS), with hyper's header-read timeout.
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
    pub(crate) handler: H,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: ConnectionMetrics,
    /// `true` once the listener drains.
    pub(crate) stop: watch::Receiver<bool>,
}

pin_project_lite::pin_project! {
    /// One accepted connection's task, from accepted to closed.
    #[project = RunProj]
    pub(crate) enum Run<C> {
        /// In clear, served in place.
        Cleartext { #[pin] serve: C },
        /// Over TLS, boxed: a handshake's state is large, and a cleartext connection's
        /// task need not make room for it.
        Tls { handshake: Pin<Box<dyn Future<Output = ()> + Send>> },
    }
}

impl<C: Future<Output = ()>> Future for Run<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self.project() {
            RunProj::Cleartext { serve } => serve.poll(cx),
            RunProj::Tls { handshake } => handshake.as_mut().poll(cx),
        }
    }
}

/// Serves one accepted connection until it ends, holding `held` until then.
pub(crate) fn run<H, F, B>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<H>>,
    held: Held,
) -> Run<impl Future<Output = ()> + Send>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(tls) = shared.config.tls.clone() else {
        return Run::Cleartext {
            serve: serve(stream, peer, None, shared, held),
        };
    };
    Run::Tls {
        handshake: Box::pin(async move {
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
                    serve(stream, peer, Some(certificates), shared, held).await;
                }
            }
        }),
    }
}

/// hyper's view of a client's stream.
type Io<I> = TokioIo<Stream<I>>;

/// A connection's HTTP, as it stands.
enum State<I, S>
where
    S: HttpService<Incoming>,
{
    Http1(Box<http1::UpgradeableConnection<Io<I>, S>>),
    /// HTTP/1.1 between requests: the stream and the service, no hyper connection.
    Parked(Stream<I>, S, ParkedGauge),
    Http2(Pin<Box<http2::Connection<Io<I>, S, TokioExecutor>>>),
    /// Only while the state is being replaced.
    Ended,
}

impl<I, S, B> State<I, S>
where
    I: ClientStream,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Asks the connection to finish: HTTP/1.1 after the exchange in hand, HTTP/2 with
    /// a GOAWAY. `false`: there is nothing to finish (parked), close it.
    fn graceful_shutdown(&mut self) -> bool {
        match self {
            Self::Http1(conn) => Pin::new(&mut **conn).graceful_shutdown(),
            Self::Http2(conn) => conn.as_mut().graceful_shutdown(),
            Self::Parked(..) | Self::Ended => return false,
        }
        true
    }
}

/// Counts a connection as parked while it is.
struct ParkedGauge(IntGauge);

impl ParkedGauge {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ParkedGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What woke a connection's task.
enum Event {
    /// The listener drains.
    Stop,
    /// The idle deadline passed.
    Deadline,
    /// hyper's connection ended.
    Ended(hyper::Result<()>),
    /// A parked connection's client sent more, or closed.
    Readable(std::io::Result<()>),
}

/// HTTP over `io` until the connection ends. Over TLS (`tls` is the client's
/// certificates, if any), each request carries [`OverTls`], and [`PeerCertificates`]
/// when the client presented some.
///
/// In two phases, the second made by the first: what only the wait for the first
/// bytes needs (the raw stream before it is wrapped, the bytes read, that wait's
/// timers) is gone from the connection's task, not kept beside the exchanges for as
/// long as it is open.
#[expect(
    clippy::async_yields_async,
    reason = "the first phase yields the second, which `flatten` then runs"
)]
fn serve<I, H, F, B>(
    mut io: I,
    peer: SocketAddr,
    tls: Option<Option<PeerCertificates>>,
    shared: Arc<Shared<H>>,
    held: Held,
) -> impl Future<Output = ()> + Send
where
    I: ClientStream,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        // The header-read timeout covers the wait for the first bytes too; a connection
        // that has sent none when the listener drains is closed.
        let mut stop = shared.stop.clone();
        let timeout = shared.config.header_read_timeout;
        let first = tokio::time::timeout(timeout, read_version(&mut io));
        let first = tokio::select! {
            first = first => first,
            _ = stop.wait_for(|stop| *stop) => return Either::Right(std::future::ready(())),
        };
        let (version, first) = match first {
            Err(_) => {
                shared.metrics.timed_out_first_bytes.inc();
                tracing::debug!(%peer, "no request within the header-read timeout");
                return Either::Right(std::future::ready(()));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "connection ended before a request");
                return Either::Right(std::future::ready(()));
            }
            Ok(Ok(read)) => read,
        };
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
        let stream = TokioIo::new(Stream::new(io, first, activity.clone()));
        let state = match version {
            Version::Http1 => State::Http1(Box::new(
                http1_builder::<I, H>(&shared)
                    .serve_connection(stream, service)
                    .with_upgrades(),
            )),
            Version::Http2 => {
                State::Http2(Box::pin(shared.http2.serve_connection(stream, service)))
            }
        };
        Either::Left(exchange(state, activity, stop, peer, shared, held))
    }
    .flatten()
}

/// How long a connection may go without a request.
struct Timeouts {
    /// With no request in flight.
    idle: Duration,
    /// Waiting for a request head, parked or not: hyper closes a connection that does
    /// not send it within the header-read timeout.
    parked_for: Duration,
    /// How soon the deadline looks again when nothing is due before.
    recheck: Duration,
}

impl Timeouts {
    fn of(config: &ServerConfig) -> Self {
        let idle = config.idle_timeout;
        let parked_for = idle.min(config.header_read_timeout);
        Self {
            idle,
            parked_for,
            recheck: PARK_AFTER.min(parked_for),
        }
    }
}

/// The HTTP/1.1 builder for connections over `I`.
fn http1_builder<I: ClientStream, H>(shared: &Shared<H>) -> &http1::Builder {
    if I::PARKS {
        &shared.http1_parked
    } else {
        &shared.http1
    }
}

/// The exchanges of a connection whose first bytes came: `state` until it ends,
/// parked between requests where it can be, closed when idle or when the listener
/// drains; `held` is held until then.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future, an async block once"
)]
fn exchange<I, S, B, H>(
    mut state: State<I, S>,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    shared: Arc<Shared<H>>,
    held: Held,
) -> impl Future<Output = ()> + Send
where
    I: ClientStream,
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    H: Send + Sync + 'static,
{
    async move {
        // Held (as a capture, not a second copy) until the connection ends.
        let _ = &held;
        let shared = &*shared;
        let config = &shared.config;
        let metrics = &shared.metrics;
        let http1 = http1_builder::<I, H>(shared);
        let mut closing = *stop.borrow_and_update();
        if closing {
            state.graceful_shutdown();
        }
        let stopped = stop.wait_for(|stop| *stop);
        tokio::pin!(stopped);
        // Armed for the first moment the connection could be due, and moved only when it
        // fires: requests do not touch it.
        let deadline = tokio::time::sleep(Timeouts::of(config).recheck);
        tokio::pin!(deadline);
        // Requests begun when hyper's connection was made: it is parked only once it has
        // answered one (before, it may hold part of a head it would go on waiting for).
        let mut begun = 0;
        // Parked as soon as it waits: a connection's first hyper connection, and one whose
        // client stayed parked for `PARK_AFTER` or longer. A client that came back sooner
        // is likely to come back soon again, and is parked once it has waited for
        // `PARK_AFTER`: a new hyper connection per request would cost some 6 000
        // instructions a request.
        let mut cold = true;
        let mut parked_at = Instant::now();
        let mut stop_registered = false;
        loop {
            let next = poll_fn(|cx| {
                // Polled once, to register this task, then only once the listener
                // drains: a poll takes a lock the workers' connections share.
                if !closing
                    && (!stop_registered || shared.stop.has_changed().unwrap_or(true))
                    && stopped.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::Stop);
                }
                stop_registered = true;
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Deadline);
                }
                match &mut state {
                    State::Http1(conn) => {
                        let polled = Pin::new(&mut **conn).poll(cx);
                        if polled.is_ready()
                            || !I::PARKS
                            || closing
                            || !activity.waiting()
                            || activity.begun() == begun
                            || !(cold
                                || activity
                                    .idle_since()
                                    .is_some_and(|since| since.elapsed() >= PARK_AFTER))
                        {
                            return polled.map(Event::Ended);
                        }
                        // Between requests: end hyper's connection without shutting
                        // the stream down, and park.
                        activity.set_parking(true);
                        Pin::new(&mut **conn).graceful_shutdown();
                        let again = Pin::new(&mut **conn).poll(cx);
                        if again.is_pending() {
                            // Not between requests after all: hyper now closes the
                            // connection after the exchange in hand.
                            activity.set_parking(false);
                            closing = true;
                        }
                        again.map(Event::Ended)
                    }
                    State::Parked(stream, ..) => {
                        stream.get_ref().poll_read_ready(cx).map(Event::Readable)
                    }
                    State::Http2(conn) => conn.as_mut().poll(cx).map(Event::Ended),
                    State::Ended => Poll::Ready(Event::Ended(Ok(()))),
                }
            })
            .await;
            match next {
                Event::Stop => {
                    closing = true;
                    if !state.graceful_shutdown() {
                        return;
                    }
                }
                Event::Deadline => {
                    // Worked out here, not kept in the task for as long as it runs.
                    let Timeouts {
                        idle,
                        parked_for,
                        recheck,
                    } = Timeouts::of(config);
                    let now = Instant::now();
                    // Waiting for a request head, with nothing in hand.
                    let waiting = match state {
                        State::Parked(..) => true,
                        State::Http1(_) => activity.waiting(),
                        State::Http2(_) | State::Ended => false,
                    };
                    let limit = if waiting { parked_for } else { idle };
                    let at = match activity.idle_since() {
                        Some(since) if now >= since + limit => {
                            if waiting || !closing {
                                tracing::debug!(%peer, "closing a connection idle for {limit:?}");
                                metrics.timed_out_idle.inc();
                            }
                            if waiting {
                                return;
                            }
                            closing = true;
                            state.graceful_shutdown();
                            // Looked at again in case it then waits for a head.
                            now + parked_for
                        }
                        Some(since) => [since + PARK_AFTER, since + parked_for, since + idle]
                            .into_iter()
                            .find(|at| *at > now)
                            .unwrap_or(now + recheck),
                        None => now + recheck,
                    };
                    deadline.as_mut().reset(at);
                }
                Event::Ended(ended) => {
                    if activity.parking() && ended.is_ok() {
                        activity.set_parking(false);
                        if let State::Http1(conn) = std::mem::replace(&mut state, State::Ended) {
                            // `None`: the connection was upgraded and is the upgrade's now.
                            if let Some(parts) = conn.into_parts() {
                                let mut stream = parts.io.into_inner();
                                stream.unread(&parts.read_buf);
                                let gauge = ParkedGauge::new(&metrics.parked);
                                crate::memory::RELEASED.add(1);
                                parked_at = Instant::now();
                                state = State::Parked(stream, parts.service, gauge);
                                continue;
                            }
                        }
                    }
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    return;
                }
                Event::Readable(ready) => {
                    let State::Parked(stream, service, gauge) =
                        std::mem::replace(&mut state, State::Ended)
                    else {
                        return;
                    };
                    drop(gauge);
                    if let Err(e) = ready {
                        tracing::debug!(error = %e, %peer, "a parked connection failed");
                        return;
                    }
                    let conn = http1.serve_connection(TokioIo::new(stream), service);
                    state = State::Http1(Box::new(conn.with_upgrades()));
                    begun = activity.begun();
                    cold = parked_at.elapsed() >= PARK_AFTER;
                }
            }
        }
    }
}
