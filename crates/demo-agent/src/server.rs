//! The HTTP server: accepts HTTP/1.1 and h2c connections, routes requests, enforces
//! capacity and drains connections gracefully on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::latency::LatencySampler;
use crate::request_log::RequestLog;
use crate::respond::{self, Body};
use crate::{chat, echo};

/// Header carrying the agent's name on every response.
pub const AGENT_HEADER: &str = "x-demo-agent";

/// Header carrying the agent's comma-separated capabilities (when it has any).
pub const CAPABILITIES_HEADER: &str = "x-demo-agent-capabilities";

/// How long in-flight requests may take to finish after shutdown was requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared state of a running agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    name_header: HeaderValue,
    capabilities_header: Option<HeaderValue>,
    slots: Arc<Semaphore>,
    latency: LatencySampler,
    faults: Mutex<fastrand::Rng>,
    completions: AtomicU64,
    request_log: Option<RequestLog>,
}

impl Agent {
    /// Builds the agent state from a configuration.
    ///
    /// # Errors
    ///
    /// Fails when [`AgentConfig::validate`] does.
    pub fn new(config: AgentConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let name_header = HeaderValue::from_str(&config.name)?;
        let capabilities_header = if config.capabilities.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(&config.capabilities.join(","))?)
        };
        // Distinct streams for latency and failures, so that changing the failure
        // rate does not change the latency sequence of a seeded run.
        let faults = config.seed.map_or_else(fastrand::Rng::new, |seed| {
            fastrand::Rng::with_seed(seed ^ 0x9E37_79B9_7F4A_7C15)
        });
        let request_log = config
            .request_log
            .as_deref()
            .map(RequestLog::open)
            .transpose()?;
        Ok(Self {
            name_header,
            capabilities_header,
            slots: Arc::new(Semaphore::new(config.capacity)),
            latency: LatencySampler::new(config.latency, config.seed),
            faults: Mutex::new(faults),
            completions: AtomicU64::new(0),
            request_log,
            config,
        })
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The agent's capabilities.
    pub fn capabilities(&self) -> &[String] {
        &self.config.capabilities
    }

    /// The delay between streamed tokens.
    pub fn token_interval(&self) -> Duration {
        self.config.token_interval
    }

    /// Requests currently being served.
    pub fn in_flight(&self) -> usize {
        self.config.capacity - self.slots.available_permits()
    }

    /// A fresh chat completion id, unique within this process.
    pub fn next_completion_id(&self) -> String {
        let n = self.completions.fetch_add(1, Ordering::Relaxed) + 1;
        format!("chatcmpl-{}-{n}", self.config.name)
    }

    /// Waits for one sampled latency, then decides whether this request fails on
    /// purpose; `Err` carries the 500 response to send.
    pub(crate) async fn simulate(&self) -> Result<(), Response<Body>> {
        let latency = self.latency.sample();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.config.fail_rate > 0.0 {
            let roll = self
                .faults
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .f64();
            if roll < self.config.fail_rate {
                return Err(respond::simulated_failure(self.name()));
            }
        }
        Ok(())
    }

    /// Appends `request` to the request log, if there is one.
    fn log_request<B>(&self, request: &Request<B>) {
        if let Some(log) = &self.request_log
            && let Err(err) = log.record(request)
        {
            warn!(error = %err, "cannot write the request log");
        }
    }

    /// Answers a chat or echo request within the agent's capacity.
    async fn serve(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        match self.slots.clone().try_acquire_owned() {
            Err(_) => respond::overloaded(self.name(), self.config.capacity),
            Ok(permit)
                if request.method() == Method::POST
                    && request.uri().path() == "/v1/chat/completions" =>
            {
                chat::handle(self, request, permit).await
            }
            Ok(permit) => echo::handle(self, request, permit).await,
        }
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut response = match (&method, path.as_str()) {
            (&Method::GET | &Method::HEAD, "/healthz") => respond::text(StatusCode::OK, "ok"),
            (&Method::GET, "/capabilities") => respond::json(
                StatusCode::OK,
                &json!({ "agent": self.name(), "capabilities": self.capabilities() }),
            ),
            _ => {
                self.log_request(&request);
                self.serve(request).await
            }
        };
        let headers = response.headers_mut();
        headers.insert(AGENT_HEADER, self.name_header.clone());
        if let Some(capabilities) = &self.capabilities_header {
            headers.insert(CAPABILITIES_HEADER, capabilities.clone());
        }
        debug!(
            %method,
            path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "request"
        );
        response
    }
}

/// A bound, not yet running agent server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    agent: Arc<Agent>,
}

impl Server {
    /// Binds `addr` (use port 0 for an ephemeral port).
    ///
    /// # Errors
    ///
    /// Fails when the configuration is invalid or the address cannot be bound.
    pub async fn bind(addr: SocketAddr, config: AgentConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        Self::from_listener(listener, config)
    }

    /// Serves on an already bound listener.
    ///
    /// # Errors
    ///
    /// Fails when the configuration is invalid.
    pub fn from_listener(listener: TcpListener, config: AgentConfig) -> anyhow::Result<Self> {
        Ok(Self {
            listener,
            agent: Arc::new(Agent::new(config)?),
        })
    }

    /// The address the server listens on.
    ///
    /// # Errors
    ///
    /// Fails when the socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared agent state (for inspection, e.g. [`Agent::in_flight`]).
    pub fn agent(&self) -> Arc<Agent> {
        Arc::clone(&self.agent)
    }

    /// Serves connections until `shutdown` completes, then stops accepting and waits
    /// up to [`DRAIN_TIMEOUT`] for open connections to finish their requests.
    ///
    /// # Errors
    ///
    /// Currently always returns `Ok`; accept errors are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { listener, agent } = self;
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Typically out of file descriptors: back off briefly.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            if let Err(err) = stream.set_nodelay(true) {
                debug!(error = %err, "could not set TCP_NODELAY");
            }
            let agent = Arc::clone(&agent);
            let service = service_fn(move |request| {
                let agent = Arc::clone(&agent);
                async move { Ok::<_, Infallible>(agent.handle(request).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(%peer, error = %err, "connection ended with an error");
                }
            });
        }
        drop(listener);
        info!(
            connections = graceful.count(),
            "shutting down, draining connections"
        );
        tokio::select! {
            () = graceful.shutdown() => info!("all connections closed"),
            () = tokio::time::sleep(DRAIN_TIMEOUT) => {
                warn!(timeout = ?DRAIN_TIMEOUT, "gave up waiting for connections to close");
            }
        }
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => info!("received SIGINT"),
        () = terminate => info!("received SIGTERM"),
    }
}
