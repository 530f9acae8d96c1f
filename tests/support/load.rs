//! A small load generator for the fault tests: workers on a runtime of their own send
//! requests in a loop through a pooled hyper client and count what came back, by
//! request kind and outcome, so that a test can assert "zero errors" with numbers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The longest a request may take before it counts as [`Outcome::Timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One request a worker sends.
#[derive(Debug, Clone)]
pub struct Req {
    /// The kind it is counted under (`"get"`, `"post"`...).
    pub kind: &'static str,
    /// The method.
    pub method: http::Method,
    /// The path (and query).
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
    /// When set, the value of its `x-request-id` header, kept with its outcome.
    pub id: Option<String>,
}

impl Req {
    /// A `GET path` counted as `kind`.
    pub fn get(kind: &'static str, path: impl Into<String>) -> Self {
        Self {
            kind,
            method: http::Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            id: None,
        }
    }

    /// A `POST path` with `body` counted as `kind`, named `id` in `x-request-id`.
    pub fn post(kind: &'static str, path: impl Into<String>, id: String, body: Bytes) -> Self {
        Self {
            kind,
            method: http::Method::POST,
            path: path.into(),
            headers: vec![("x-request-id", id.clone())],
            body,
            id: Some(id),
        }
    }

    /// This request with header `name: value` added.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A response with this status, its body read to the end.
    Status(u16),
    /// The connection was refused: nothing was sent.
    Refused,
    /// The connection broke before the response (or its body) was complete.
    Broken,
    /// No complete response within [`REQUEST_TIMEOUT`].
    Timeout,
}

impl Outcome {
    /// A 2xx response.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(&s))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Broken => f.write_str("broken"),
            Outcome::Timeout => f.write_str("timeout"),
        }
    }
}

/// What the load saw so far.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests by kind and outcome.
    pub counts: BTreeMap<(&'static str, Outcome), u64>,
    /// The slowest request of each kind.
    pub slowest: BTreeMap<&'static str, Duration>,
    /// The outcome of every request sent with an id.
    pub ids: Vec<(String, Outcome)>,
}

impl Tally {
    /// Requests of `kind` (every kind with `None`) whose outcome passes `check`.
    pub fn count(&self, kind: Option<&str>, check: impl Fn(Outcome) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|((k, o), _)| kind.is_none_or(|kind| kind == *k) && check(*o))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `kind` (every kind with `None`).
    pub fn total(&self, kind: Option<&str>) -> u64 {
        self.count(kind, |_| true)
    }

    /// Requests of `kind` that did not get a 2xx response.
    pub fn failed(&self, kind: Option<&str>) -> u64 {
        self.count(kind, |o| !o.is_success())
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((kind, outcome), n) in &self.counts {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{kind}:{outcome}={n}")?;
        }
        for (kind, slowest) in &self.slowest {
            write!(f, " {kind}:slowest={}ms", slowest.as_millis())?;
        }
        Ok(())
    }
}

/// Load running in the background until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<()>>,
}

/// How to send the load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workers, each with one request in flight at a time.
    pub workers: usize,
    /// A worker's pause between two requests (keeps two shared cores usable).
    pub pause: Duration,
    /// Reuse connections (keep-alive); otherwise a new connection per request.
    pub keep_alive: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            workers: 8,
            pause: Duration::from_millis(2),
            keep_alive: true,
        }
    }
}

impl Load {
    /// Starts `shape.workers` workers sending `plan(n)` (n = 0, 1, 2... across all
    /// workers) to `target` until stopped.
    ///
    /// # Panics
    ///
    /// When the runtime cannot be built.
    pub fn start(
        target: SocketAddr,
        shape: Shape,
        plan: impl Fn(u64) -> Req + Send + Sync + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load runtime");
        let (stop_w, tally_w) = (stop.clone(), tally.clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(run(target, shape, Arc::new(plan), stop_w, tally_w));
        });
        Self {
            stop,
            tally,
            thread: Some(thread),
        }
    }

    /// What the load saw so far.
    pub fn tally(&self) -> Tally {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `more` requests were answered since this call (or `timeout`).
    ///
    /// # Errors
    ///
    /// When they were not within `timeout`.
    pub fn wait_for(&self, more: u64, timeout: Duration) -> anyhow::Result<()> {
        let from = self.tally().total(None);
        crate::eventually(timeout, &format!("{more} more requests"), || {
            Ok((self.tally().total(None) >= from + more).then_some(()))
        })
    }

    /// Stops the workers, waits for the requests in flight and returns the tally.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.tally()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Plan = Arc<dyn Fn(u64) -> Req + Send + Sync>;

async fn run(
    target: SocketAddr,
    shape: Shape,
    plan: Plan,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut builder = Client::builder(TokioExecutor::new());
    if !shape.keep_alive {
        builder.pool_max_idle_per_host(0);
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = builder.build(connector);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shape.workers {
        let (client, plan, stop, tally, next) = (
            client.clone(),
            plan.clone(),
            stop.clone(),
            tally.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = plan(next.fetch_add(1, Ordering::Relaxed));
                let started = Instant::now();
                let outcome = send(&client, target, &req).await;
                let took = started.elapsed();
                {
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    *t.counts.entry((req.kind, outcome)).or_default() += 1;
                    let slowest = t.slowest.entry(req.kind).or_default();
                    *slowest = (*slowest).max(took);
                    if let Some(id) = req.id {
                        t.ids.push((id, outcome));
                    }
                }
                tokio::time::sleep(shape.pause).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: SocketAddr,
    req: &Req,
) -> Outcome {
    let mut builder = http::Request::builder()
        .method(req.method.clone())
        .uri(format!("http://{target}{}", req.path));
    for (name, value) in &req.headers {
        builder = builder.header(*name, value);
    }
    let Ok(request) = builder.body(Full::new(req.body.clone())) else {
        return Outcome::Broken;
    };
    let exchange = async {
        match client.request(request).await {
            Err(e) if e.is_connect() => Outcome::Refused,
            Err(_) => Outcome::Broken,
            Ok(response) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => Outcome::Status(status),
                    Err(_) => Outcome::Broken,
                }
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or(Outcome::Timeout)
}
