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
//!
//! A connection left ready and unused for [`PARK_AFTER`] is parked: hyper's task and
//! buffers (some 25 KB) are given up and only the socket is kept, until a request takes
//! it and a new hyper connection is made over it (no new TCP connection). A sweep task
//! per list, running while the list holds connections, parks them and closes those
//! unused for [`IDLE_TIMEOUT`] or closed by the agent, so that a list nobody sends to
//! any more empties on its own.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::dns::DnsCache;

/// How long a connection may sit unused before it is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a ready connection sits unused before it is parked: between this and
/// twice this, as its list is swept once per `PARK_AFTER`.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

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

/// A connection hyper drives: its sender and its task, which hands the socket back
/// once the sender is dropped with no request on the connection.
struct Live {
    sender: SendRequest<ProxyBody>,
    task: JoinHandle<Option<TcpStream>>,
}

/// What a connection holds.
enum Link {
    /// Driven by hyper, with its buffers.
    Live(Live),
    /// Its socket alone.
    Parked(TcpStream),
}

/// One connection and when it was last given a request.
struct Conn {
    link: Link,
    used: Instant,
}

/// One worker's connections, parked ones first (they are the least recently used).
#[derive(Default)]
struct List {
    conns: Vec<Conn>,
    /// Whether a sweep task runs for this list.
    swept: bool,
    /// Whether that task waits for the first parked connection's idle timeout, or
    /// until `wake` tells it a connection is hyper's again.
    resting: bool,
    wake: Arc<Notify>,
}

type Shared = Arc<Mutex<List>>;

/// The kept-alive connections to one endpoint: a list per worker.
pub struct Connections {
    lists: Box<[Shared]>,
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
            lists: (0..=workers).map(|_| Shared::default()).collect(),
        }
    }

    /// The list of the calling thread's worker.
    fn list(&self) -> &Shared {
        &self.lists[sluice_listener::workers::current() % self.lists.len()]
    }

    /// How many connections the calling thread's worker holds (busy, ready or
    /// parked).
    pub fn len(&self) -> usize {
        lock(self.list()).conns.len()
    }

    /// Whether the calling thread's worker holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the calling thread's worker's connections are parked.
    pub fn parked(&self) -> usize {
        parked(&lock(self.list()))
    }

    /// How many connections every worker holds, and how many of those are parked.
    pub fn counts(&self) -> (usize, usize) {
        self.lists
            .iter()
            .fold((0, 0), |(all, parked_in_all), list| {
                let l = lock(list);
                (all + l.conns.len(), parked_in_all + parked(&l))
            })
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
        loop {
            // A new connection's failure is the request's; a kept one may have been
            // closed before the request went out, and the next is tried.
            let (mut live, kept) = match take_ready(list, now) {
                Some(Link::Live(live)) => (live, true),
                // Boxed, as a new connection is below: the rare case.
                Some(Link::Parked(stream)) => match Box::pin(drive(stream)).await {
                    Ok(live) => (live, true),
                    Err(_) => continue,
                },
                // Boxed: every request's future has room for what it awaits, and a
                // new connection (a lookup, a connect) is the rare case.
                None => {
                    let stream = Box::pin(connect(endpoint, dns, connect_timeout)).await?;
                    (Box::pin(drive(stream)).await?, false)
                }
            };
            match live.sender.try_send_request(req).await {
                Ok(resp) => {
                    put(
                        list,
                        Conn {
                            link: Link::Live(live),
                            used: now,
                        },
                    );
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if kept => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

fn parked(list: &List) -> usize {
    list.conns
        .iter()
        .filter(|c| matches!(c.link, Link::Parked(_)))
        .count()
}

fn lock(list: &Mutex<List>) -> std::sync::MutexGuard<'_, List> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Puts `conn` (just given a request) back at the end of `list`, starting the list's
/// sweep task if it has none, waking it if it rests.
fn put(list: &Shared, conn: Conn) {
    let mut l = lock(list);
    l.conns.push(conn);
    if !l.swept {
        l.swept = true;
        let wake = l.wake.clone();
        drop(l);
        tokio::spawn(sweep(Arc::downgrade(list), wake));
    } else if l.resting {
        l.resting = false;
        l.wake.notify_one();
    }
}

/// The most recently used ready connection of `list`, taken out of it; closed ones,
/// and ready ones unused for [`IDLE_TIMEOUT`], are dropped on the way.
fn take_ready(list: &Mutex<List>, now: Instant) -> Option<Link> {
    let mut list = lock(list);
    let mut i = list.conns.len();
    while i > 0 {
        i -= 1;
        match &list.conns[i].link {
            Link::Live(live) if live.sender.is_closed() => drop(list.conns.remove(i)),
            Link::Live(live) if !live.sender.is_ready() => {}
            Link::Parked(stream) if !open(stream) => drop(list.conns.remove(i)),
            _ => {
                let conn = list.conns.remove(i);
                if now.duration_since(conn.used) <= IDLE_TIMEOUT {
                    return Some(conn.link);
                }
            }
        }
    }
    None
}

/// Whether a parked socket is still open with nothing unasked for to read: the
/// agent's close, or bytes it sent with no request, make it unusable. Asked of the
/// kernel (a peek), not of the runtime's last readiness event, which can lag.
fn open(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::uninit()];
    matches!(
        socket2::SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// Runs while `list` holds connections, once per [`PARK_AFTER`] while some are
/// hyper's, else at the first parked one's [`IDLE_TIMEOUT`] (or when woken): parks the
/// ready ones unused for `PARK_AFTER`, drops the closed ones and those unused for
/// `IDLE_TIMEOUT`.
async fn sweep(list: Weak<Mutex<List>>, wake: Arc<Notify>) {
    let mut sweeping = Sweeping(list.clone());
    let mut at = Instant::now() + PARK_AFTER;
    let mut resting = false;
    loop {
        if resting {
            let _ = tokio::time::timeout_at(at, wake.notified()).await;
        } else {
            tokio::time::sleep_until(at).await;
        }
        let now = Instant::now();
        let parking: Vec<Conn> = {
            let Some(list) = list.upgrade() else { return };
            let mut l = lock(&list);
            let held = l.conns.len();
            l.conns.retain(|c| match &c.link {
                Link::Live(live) => {
                    !live.sender.is_closed()
                        && (!live.sender.is_ready() || now.duration_since(c.used) < IDLE_TIMEOUT)
                }
                Link::Parked(stream) => open(stream) && now.duration_since(c.used) < IDLE_TIMEOUT,
            });
            sluice_listener::memory::RELEASED.add(held - l.conns.len());
            l.conns
                .extract_if(.., |c| match &c.link {
                    Link::Live(live) => {
                        live.sender.is_ready() && now.duration_since(c.used) >= PARK_AFTER
                    }
                    Link::Parked(_) => false,
                })
                .collect()
        };
        let mut parked = Vec::with_capacity(parking.len());
        for Conn { link, used } in parking {
            if let Link::Live(Live { sender, task }) = link {
                drop(sender);
                // An idle hyper connection hands its socket back at once; one that
                // does not within a sweep's period is left to end on its own.
                if let Ok(Ok(Some(stream))) = tokio::time::timeout(PARK_AFTER, task).await {
                    parked.push(Conn {
                        link: Link::Parked(stream),
                        used,
                    });
                }
            }
        }
        sluice_listener::memory::RELEASED.add(parked.len());
        let Some(list) = list.upgrade() else { return };
        let mut l = lock(&list);
        l.conns.splice(..0, parked);
        let first_used = l.conns.iter().map(|c| c.used).min();
        let Some(first_used) = first_used else {
            l.swept = false;
            // Reset under the lock: a `put` after it starts a new task.
            sweeping.0 = Weak::new();
            return;
        };
        resting = !l.conns.iter().any(|c| matches!(c.link, Link::Live(_)));
        l.resting = resting;
        at = if resting {
            first_used + IDLE_TIMEOUT
        } else {
            now + PARK_AFTER
        };
    }
}

/// Marks its list as having no sweep task when the task ends other than by finding
/// the list empty: dropped with its runtime, its next `put` starts a new one.
struct Sweeping(Weak<Mutex<List>>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(list) = self.0.upgrade() {
            lock(&list).swept = false;
        }
    }
}

/// A hyper connection over `stream`, its task spawned on the calling thread's runtime.
async fn drive(stream: TcpStream) -> Result<Live, hyper::Error> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        match conn.without_shutdown().await {
            // Handed back once the sender is dropped, the connection idle: parked if
            // the agent sent nothing more.
            Ok(parts) if parts.read_buf.is_empty() => {
                // Registered with the runtime anew. The old registration may hold
                // this task's waker from hyper's last read, which would keep the
                // finished task's memory for as long as the socket is parked; and it
                // was allocated when the connection opened, among buffers freed
                // since, whose pages it would keep resident after a burst
                // (`bench/idle.py --upstream`).
                match parts
                    .io
                    .into_inner()
                    .into_std()
                    .and_then(TcpStream::from_std)
                {
                    Ok(stream) => Some(stream),
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream connection not parked");
                        None
                    }
                }
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "upstream connection ended");
                None
            }
        }
    });
    Ok(Live { sender, task })
}

/// A new TCP connection to `endpoint`.
async fn connect(
    endpoint: &Authority,
    dns: &DnsCache,
    timeout: Duration,
) -> Result<TcpStream, SendError> {
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
    Ok(stream)
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
        /// The tasks serving its connections.
        serving: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
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
            let serving = Arc::new(std::sync::Mutex::new(Vec::new()));
            let tasks = serving.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let released = released_rx.clone();
                    let task = tokio::spawn(async move {
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
                    tasks.lock().expect("tasks").push(task);
                }
            });
            Self {
                at,
                accepted,
                release,
                serving,
            }
        }

        /// Closes every connection it holds, returning once they are closed.
        async fn close_all(&self) {
            let tasks = std::mem::take(&mut *self.serving.lock().expect("tasks"));
            for task in tasks {
                task.abort();
                let _ = task.await;
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

    /// A request sent now through `c` to `agent`, answered `ok`.
    async fn ok_now(c: &Connections, agent: &Agent) {
        assert_eq!(text(answer(c, &agent.at, Instant::now()).await).await, "ok");
    }

    /// A request, then time for the sweep to park its connection.
    async fn parked_after_one_request(c: &Connections, agent: &Agent) {
        ok_now(c, agent).await;
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked(), 1, "parked once unused for a second");
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_left_unused_is_parked_and_carries_the_next_request() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        parked_after_one_request(&c, &agent).await;
        for _ in 0..3 {
            ok_now(&c, &agent).await;
        }
        assert_eq!(agent.accepted(), 1, "the parked socket carried them");
        assert_eq!((c.len(), c.parked()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_not_parked() {
        let agent = Agent::start(false, false).await;
        let c = Connections::new(0);
        let held = answer(&c, &agent.at, Instant::now()).await;
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!((c.len(), c.parked()), (1, 0));
        agent.release.send_replace(true);
        assert_eq!(text(held).await, "ok");
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked(), 1, "parked once its answer ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_the_agent_closed_is_replaced_without_failing_a_request() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        parked_after_one_request(&c, &agent).await;
        agent.close_all().await;
        ok_now(&c, &agent).await;
        assert_eq!(agent.accepted(), 2);
        assert_eq!((c.len(), c.parked()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn parked_connections_are_closed_at_the_idle_timeout_with_no_request() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        parked_after_one_request(&c, &agent).await;
        assert_eq!(c.len(), 1);
        tokio::time::sleep(IDLE_TIMEOUT).await;
        assert!(c.is_empty(), "closed by the sweep, not by a request");
        // The list, empty, is swept again once it holds a connection.
        parked_after_one_request(&c, &agent).await;
        assert_eq!(agent.accepted(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resting_sweep_parks_a_connection_used_again() {
        let agent = Agent::start(true, false).await;
        let c = Connections::new(0);
        parked_after_one_request(&c, &agent).await;
        // The sweep now waits for the idle timeout; a request wakes it.
        ok_now(&c, &agent).await;
        assert_eq!(c.parked(), 0);
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked(), 1, "parked again long before the idle timeout");
    }

    #[test]
    fn a_list_whose_sweep_ended_with_its_runtime_is_swept_again() {
        let c = Connections::new(0);
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let agent = Agent::start(true, false).await;
                parked_after_one_request(&c, &agent).await;
            });
            // Dropped with the sweep task asleep in it.
        }
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
