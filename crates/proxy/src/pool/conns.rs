//! Kept-alive cleartext HTTP/1.1 connections to one endpoint, one list per worker.
//!
//! A connection is driven by the runtime of the worker that opened it and used only by
//! requests on that worker ([`sluice_listener::workers`]). It is found without hashing
//! (the lists belong to the endpoint) and a request goes straight to hyper's
//! connection: no pooled-client checkout, no task per request. Backends over TLS or
//! HTTP/2, and upgrade requests, go through hyper-util's pooled client instead
//! ([`super::Upstream::client`]).
//!
//! A connection stays in its list from its first request on, busy or not; a request
//! takes the most recently used one that is ready (its last answer read to the end),
//! drops those the agent closed or that sat unused for [`IDLE_TIMEOUT`], and opens a
//! new one when none is ready. A connection whose answer was not read to the end is
//! closed by hyper and dropped from the list.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::dns::DnsCache;

/// How long a connection may sit unused before it is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: Authority,
        /// What failed: the lookup, the connect or its timeout.
        #[source]
        source: io::Error,
    },
    /// The connection failed while the request was sent or the answer awaited.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// hyper-util's pooled client (TLS, HTTP/2, upgrades) failed.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether no connection could be opened, so that nothing was sent.
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Http(_) => false,
            Self::Pooled(e) => e.is_connect(),
        }
    }
}

/// One connection and when it was last given a request.
struct Conn {
    sender: SendRequest<ProxyBody>,
    used: Instant,
}

/// The kept-alive connections to one endpoint: a list per worker.
pub struct Connections {
    lists: Box<[Mutex<Vec<Conn>>]>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("lists", &self.lists.len())
            .finish()
    }
}

impl Connections {
    /// Lists for `workers` workers and one for the threads off them.
    pub fn new(workers: usize) -> Self {
        Self {
            lists: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The list of the calling thread's worker.
    fn list(&self) -> &Mutex<Vec<Conn>> {
        &self.lists[sluice_listener::workers::current() % self.lists.len()]
    }

    /// How many connections the calling thread's worker holds (busy or not).
    pub fn len(&self) -> usize {
        self.list()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the calling thread's worker holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `req` (its URI in origin form, its `Host` set) to `endpoint` over a ready
    /// kept-alive connection, or a new one opened within `connect_timeout` (names
    /// looked up through `dns`); `now` is when the attempt started.
    ///
    /// # Errors
    ///
    /// [`SendError::Connect`] when no connection could be opened (nothing was sent);
    /// [`SendError::Http`] when the connection failed with the request on it.
    pub async fn send(
        &self,
        endpoint: &Authority,
        dns: &DnsCache,
        connect_timeout: Duration,
        mut req: Request<ProxyBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let list = self.list();
        while let Some(mut conn) = take_ready(list, now) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.used = now;
                    lock(list).push(conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // Boxed: every request's future has room for what it awaits, and a new
        // connection (a lookup, a connect) is the rare case.
        let mut sender = Box::pin(connect(endpoint, dns, connect_timeout)).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => {
                lock(list).push(Conn { sender, used: now });
                Ok(resp)
            }
            Err(e) => Err(SendError::Http(e.into_error())),
        }
    }
}

fn lock(list: &Mutex<Vec<Conn>>) -> std::sync::MutexGuard<'_, Vec<Conn>> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most recently used ready connection of `list`, taken out of it; closed ones,
/// and ready ones unused for [`IDLE_TIMEOUT`], are dropped on the way.
fn take_ready(list: &Mutex<Vec<Conn>>, now: Instant) -> Option<Conn> {
    let mut list = lock(list);
    // The oldest is looked at on every call, so that connections nobody takes any more
    // still go once they are stale.
    if let Some(oldest) = list.first()
        && (oldest.sender.is_closed()
            || (oldest.sender.is_ready() && now.duration_since(oldest.used) > IDLE_TIMEOUT))
    {
        list.remove(0);
    }
    let mut i = list.len();
    while i > 0 {
        i -= 1;
        let conn = &list[i];
        if conn.sender.is_closed() {
            list.remove(i);
        } else if conn.sender.is_ready() {
            let conn = list.remove(i);
            if now.duration_since(conn.used) <= IDLE_TIMEOUT {
                return Some(conn);
            }
        }
    }
    None
}

/// A new connection to `endpoint`, its task spawned on the calling thread's runtime.
async fn connect(
    endpoint: &Authority,
    dns: &DnsCache,
    timeout: Duration,
) -> Result<SendRequest<ProxyBody>, SendError> {
    let failed = |source| SendError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let open = async {
        let port = endpoint
            .port_u16()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no port"))?;
        let host = endpoint.host();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addresses = match literal.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => dns.lookup(host).await?.to_vec(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for ip in addresses {
            match TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let stream = match tokio::time::timeout(timeout, open).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => {
            return Err(failed(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    // Small requests and answers must not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, %endpoint, "TCP_NODELAY not set");
    }
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;
    use crate::clock::TokioClock;
    use crate::dns::SystemResolver;

    /// An agent on `127.0.0.1:0`, counting the connections it accepted.
    struct Agent {
        at: Authority,
        accepted: Arc<AtomicUsize>,
        /// Answers' bodies end once this is `true`.
        release: watch::Sender<bool>,
    }

    impl Agent {
        /// Answers `ok`, the body ending once released (at once if `released`); with
        /// `close_after`, it closes each connection after one answer without saying
        /// so (no `Connection: close`), as an agent that restarts or times out does.
        async fn start(released: bool, close_after: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let at = listener
                .local_addr()
                .expect("addr")
                .to_string()
                .parse()
                .expect("authority");
            let accepted = Arc::new(AtomicUsize::new(0));
            let (release, released_rx) = watch::channel(released);
            let count = accepted.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let released = released_rx.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |_req| {
                            let mut released = released.clone();
                            async move {
                                let end = futures_util::stream::once(async move {
                                    let _ = released.wait_for(|r| *r).await;
                                    Ok::<_, std::convert::Infallible>(Frame::data(
                                        Bytes::from_static(b"ok"),
                                    ))
                                });
                                Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(
                                    end,
                                )))
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(!close_after)
                            .serve_connection(TokioIo::new(stream), service);
                        let _ = conn.await;
                    });
                }
            });
            Self {
                at,
                accepted,
                release,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    fn dns() -> DnsCache {
        DnsCache::new(
            Arc::new(SystemResolver),
            Duration::from_secs(30),
            TokioClock::shared(),
        )
    }

    fn get() -> Request<ProxyBody> {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *req.uri_mut() = http::Uri::from_static("/");
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("agent"));
        req
    }

    async fn answer(c: &Connections, to: &Authority, now: Instant) -> Response<Incoming> {
        c.send(to, &dns(), Duration::from_secs(5), get(), now)
            .await
            .expect("answer")
    }

    async fn text(resp: Response<Incoming>) -> String {
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(text(answer(&c, &agent.at, now).await).await, "ok");
        }
        assert_eq!(agent.accepted(), 1);
        assert_eq!(c.len(), 1);
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_ended_and_not_before() {
        let agent = Agent::start(false, false).await;
        let c = Connections::new(0);
        let now = Instant::now();
        // Answers whose bodies have not ended keep their connections busy.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(answer(&c, &agent.at, now).await);
        }
        assert_eq!(agent.accepted(), 3);
        agent.release.send_replace(true);
        for resp in held {
            assert_eq!(text(resp).await, "ok");
        }
        for _ in 0..3 {
            assert_eq!(text(answer(&c, &agent.at, now).await).await, "ok");
        }
        assert_eq!(agent.accepted(), 3);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_dropped_unread_is_not_reused() {
        let agent = Agent::start(false, false).await;
        let c = Connections::new(0);
        let now = Instant::now();
        drop(answer(&c, &agent.at, now).await);
        agent.release.send_replace(true);
        assert_eq!(text(answer(&c, &agent.at, now).await).await, "ok");
        assert_eq!(agent.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_agent_closed_is_replaced_without_failing_a_request() {
        let agent = Agent::start(true, true).await;
        let c = Connections::new(0);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(text(answer(&c, &agent.at, now).await).await, "ok");
        }
        assert_eq!(agent.accepted(), 10);
    }

    #[tokio::test]
    async fn a_connection_unused_for_the_idle_timeout_is_closed_not_reused() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        let start = Instant::now();
        assert_eq!(text(answer(&c, &agent.at, start).await).await, "ok");
        let at_timeout = start + IDLE_TIMEOUT;
        assert_eq!(text(answer(&c, &agent.at, at_timeout).await).await, "ok");
        assert_eq!(agent.accepted(), 1, "still fresh");
        let later = at_timeout + IDLE_TIMEOUT + Duration::from_secs(1);
        assert_eq!(text(answer(&c, &agent.at, later).await).await, "ok");
        assert_eq!(agent.accepted(), 2, "a new one after the timeout");
        assert_eq!(c.len(), 1, "the stale one is gone");
    }

    #[tokio::test]
    async fn an_endpoint_that_refuses_is_a_connect_error() {
        // A port nobody listens on: bound, then closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let to: Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        drop(listener);
        let c = Connections::new(0);
        let e = c
            .send(&to, &dns(), Duration::from_secs(5), get(), Instant::now())
            .await
            .expect_err("refused");
        assert!(e.is_connect(), "{e}");
        assert!(c.is_empty());
    }
}
