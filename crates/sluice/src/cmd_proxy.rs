//! `sluice proxy`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_api::push::PROXY_ID_RULE;
use sluice_controller::from_dir::DirWatcher;
use sluice_controller::publisher::Publisher;
use sluice_proxy::access_log::{self, AccessLog, AccessLogConfig};
use sluice_proxy::admin::Admin;
use sluice_proxy::body::MinRate;
use sluice_proxy::clock::TokioClock;
use sluice_proxy::forward::{DEFAULT_CAPABILITY_HEADER, ForwardConfig};
use sluice_proxy::hygiene::client_ip::TrustedProxies;
use sluice_proxy::server::{
    self, CertificateFiles, ListenerMetrics, ServerConfig, TlsConfig, Workers,
};
use sluice_proxy::subscriber::{self, SubscriberConfig};
use sluice_proxy::table_cache::TableCache;
use sluice_proxy::{Forwarder, Metrics, TableStore};
use sluice_ratelimit::{RedisBackend, RedisConfig};

use crate::cmd_controller::{PollOutcome, on_poll, parse_duration, parse_interval};

/// Arguments of `sluice proxy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run standalone from this manifest file or folder (reloaded on change).
    #[arg(long, env = "SLUICE_CONFIG", conflicts_with = "controller")]
    config: Option<PathBuf>,
    /// Subscribe to route tables from this controller, e.g. http://127.0.0.1:9090.
    #[arg(long, env = "SLUICE_CONTROLLER")]
    controller: Option<http::Uri>,
    /// The name this proxy subscribes and acknowledges tables under; unique among the
    /// controller's proxies (1 to 253 of A-Z a-z 0-9 . _ - : @). Default: HOSTNAME-PID.
    #[arg(long, env = "SLUICE_PROXY_ID")]
    proxy_id: Option<String>,
    /// Save each table received from --controller to this file (atomically), and serve
    /// it at start when the controller is unreachable. A corrupt file is ignored.
    #[arg(long, env = "SLUICE_TABLE_CACHE", requires = "controller")]
    table_cache: Option<PathBuf>,
    /// The bearer token presented to --controller: a file, read again for every
    /// subscription and acknowledgement (a projected ServiceAccount token, or the
    /// controller's --push-token-file).
    #[arg(long, env = "SLUICE_CONTROLLER_TOKEN_FILE", requires = "controller")]
    controller_token_file: Option<PathBuf>,
    /// The CA bundle (PEM) an https:// --controller's certificate is checked against.
    #[arg(long, env = "SLUICE_CONTROLLER_CA", requires = "controller")]
    controller_ca: Option<PathBuf>,
    /// How often the pools' load (in flight, queued, capacity, latency histogram) is
    /// reported to --controller, which serves it as external metrics. 0s: never.
    #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "controller")]
    report_interval: Duration,
    /// Address for agent traffic in clear (HTTP/1.1 and h2c), or `off`.
    #[arg(long, default_value = "0.0.0.0:8080", env = "SLUICE_LISTEN", value_parser = parse_listen)]
    listen: Listen,
    /// Address for agent traffic over TLS (with --tls-cert).
    #[arg(long, default_value = "0.0.0.0:8443", env = "SLUICE_TLS_LISTEN")]
    tls_listen: SocketAddr,
    /// A PEM certificate chain served on --tls-listen; repeat for several, each with
    /// its --tls-key in the same order. A client gets the first certificate valid for
    /// the name it asks for (SNI), else the first.
    #[arg(long = "tls-cert", value_name = "FILE")]
    tls_certs: Vec<PathBuf>,
    /// The PEM private key of the --tls-cert of the same rank.
    #[arg(long = "tls-key", value_name = "FILE")]
    tls_keys: Vec<PathBuf>,
    /// How often the certificate files are read for changes (a renewed Secret is
    /// served without a restart).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    tls_reload_interval: Duration,
    /// A TLS client must complete its handshake within this time.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    tls_handshake_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    idle_timeout: Duration,
    /// Most client connections open at once on each traffic listener; beyond it new
    /// ones are closed at once. 0: no cap.
    #[arg(long, default_value_t = sluice_listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most client connections open at once from one address (an IPv4 address, an
    /// IPv6 /64) on each traffic listener. 0: no cap. Behind a load balancer that hides
    /// client addresses, every client shares one.
    #[arg(long, default_value_t = 0)]
    max_connections_per_client: usize,
    /// Threads that serve traffic, each with its own runtime, accepting on the
    /// listeners and serving every connection it accepted to its end (as nginx's
    /// worker processes do). Default: one per CPU the process may use. 0: one
    /// work-stealing runtime for everything.
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// Address for /healthz, /readyz, /metrics and /routes.
    #[arg(long, default_value = "127.0.0.1:9901", env = "SLUICE_ADMIN_LISTEN")]
    admin: SocketAddr,
    /// How often --config is read for changes.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    poll_interval: Duration,
    /// A client must send its request headers within this time.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// After SIGTERM, keep accepting connections this long before draining, while
    /// load balancers and kube-proxy stop sending new ones (a pod leaves its Service's
    /// endpoints only after it is told to stop).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// After the shutdown delay, how long requests in flight (streams included) get to
    /// finish before their connections are closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Bearer token required for /metrics and /routes; needed when --admin is not a
    /// loopback address.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For is
    /// believed; from anyone else the TCP peer is the client.
    #[arg(long, env = "SLUICE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Redis for `scope: Global` rate limits, e.g. redis://127.0.0.1:6379. Without
    /// it, global policies follow their failureMode as if Redis were down.
    #[arg(long, env = "SLUICE_REDIS_URL")]
    redis_url: Option<String>,
    /// Deadline of each Redis call.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    redis_timeout: Duration,
    /// Most keys (consumers, IPs...) one rate limit tracks; beyond it idle keys are
    /// evicted, and new keys are refused while none is idle.
    #[arg(long, default_value_t = 100_000)]
    rate_limit_max_keys: usize,
    /// The request header that names a capability.
    #[arg(long, default_value = DEFAULT_CAPABILITY_HEADER, env = "SLUICE_CAPABILITY_HEADER")]
    capability_header: http::HeaderName,
    /// One line per request on stdout: json, text or off.
    #[arg(long, default_value = "json", env = "SLUICE_ACCESS_LOG")]
    access_log: access_log::Format,
    /// The share of successful requests logged, from 0 to 1 (refusals and errors are
    /// always logged).
    #[arg(long, default_value_t = 1.0, value_parser = parse_share, env = "SLUICE_ACCESS_LOG_SAMPLE")]
    access_log_sample: f64,
    /// Log paths with their query strings (off by default: queries may hold tokens).
    #[arg(long, env = "SLUICE_ACCESS_LOG_QUERY")]
    access_log_query: bool,
    /// Export a span per request (and one per attempt) over OTLP/HTTP to this
    /// collector, e.g. http://otel-collector:4318 (/v1/traces is added to a bare
    /// URL). Needs a build with the `otlp` feature, as the released image is.
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The least rate, in bytes a second, a request body must arrive at once the proxy
    /// reads it (after --client-body-grace); a slower upload is cut with 408 and frees
    /// its agent's slot. 0 turns the minimum off.
    #[arg(long, default_value_t = 240, env = "SLUICE_CLIENT_BODY_MIN_RATE")]
    client_body_min_rate: u32,
    /// How long a request body may send nothing when the proxy starts reading it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    client_body_grace: Duration,
    /// How many of the callers limited most each rate policy exports by name in
    /// sluice_ratelimit_top_consumers (the rest are summed as "other").
    #[arg(long, default_value_t = 10, env = "SLUICE_TOP_CONSUMERS")]
    top_consumers: usize,
    /// How long a DNS answer for a backend's name (a `url`, or a static endpoint given
    /// by name) is used before new connections resolve it again.
    #[arg(long, default_value = "30s", value_parser = parse_interval, env = "SLUICE_UPSTREAM_DNS_TTL")]
    upstream_dns_ttl: Duration,
}

/// A listener address, or none.
#[derive(Clone, Copy, Debug)]
pub enum Listen {
    /// Listen here.
    On(SocketAddr),
    /// No such listener.
    Off,
}

/// Parses `HOST:PORT` or `off`.
fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::On)
        .map_err(|e| format!("{s:?}: {e} (give ADDRESS:PORT or off)"))
}

/// A share from 0 to 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give a number from 0 to 1")),
    }
}

impl Args {
    /// The `--workers`: one per CPU the process may use unless given.
    fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// Threads of the runtime `run` runs on. With workers serving traffic, it runs
    /// only the control side (subscriber, admin, health checks, reports), which one
    /// thread keeps up with; each more thread is a stack and a malloc arena more,
    /// which a large table's decoding and scrapes leave partly filled (see
    /// BENCHMARKS.md, "A proxy holding 10 000 endpoints"). Without workers
    /// (`--workers 0`), it serves traffic too: one per CPU.
    pub fn runtime_threads(&self) -> Option<usize> {
        (self.workers() > 0).then_some(1)
    }
}

/// Runs the proxy until a shutdown signal.
pub async fn run(args: Args) -> Result<()> {
    if !args.admin.ip().is_loopback() && args.admin_token.as_deref().is_none_or(str::is_empty) {
        bail!(
            "--admin {} is not a loopback address: set --admin-token (or SLUICE_ADMIN_TOKEN) so that /metrics and /routes are not open to anyone",
            args.admin
        );
    }
    let trusted_proxies = TrustedProxies::parse(args.trusted_proxies.iter().map(String::as_str))
        .context("--trusted-proxies")?;
    let forward_config = ForwardConfig {
        capability_header: args.capability_header.clone(),
        trusted_proxies,
        client_body_rate: (args.client_body_min_rate > 0).then_some(MinRate {
            bytes_per_second: args.client_body_min_rate,
            grace: args.client_body_grace,
        }),
        ..ForwardConfig::default()
    };
    // One clock for everything the proxy times: limits, Redis leases, endpoint load.
    let clock = TokioClock::shared();
    let redis = match &args.redis_url {
        None => None,
        Some(url) => {
            let config = RedisConfig::new(url.clone()).with_deadline(args.redis_timeout);
            Some(Arc::new(
                RedisBackend::new(config, clock.clone()).context("--redis-url")?,
            ))
        }
    };
    let max_keys = NonZeroUsize::new(args.rate_limit_max_keys)
        .context("--rate-limit-max-keys must be at least 1")?;
    let workers = match NonZeroUsize::new(args.workers()) {
        None => None,
        Some(n) => Some(Workers::start(n).context("starting the --workers")?),
    };
    let metrics = Metrics::new();
    let store = Arc::new(
        TableStore::builder(metrics.clone())
            .workers(workers.as_ref().map_or(0, Workers::len))
            .redis(redis)
            .max_keys(max_keys)
            .clock(clock)
            .top_consumers(args.top_consumers)
            .dns_ttl(args.upstream_dns_ttl)
            .build(),
    );

    match (&args.config, &args.controller) {
        (Some(path), None) => {
            let publisher = Publisher::new();
            let mut updates = publisher.subscribe();
            let watcher = DirWatcher::new(path);
            let rejections = metrics.table_updates.with_label_values(&["rejected"]);
            tokio::spawn(watcher.run(args.poll_interval, move |poll| {
                // A manifest that does not parse or compile never reaches the store,
                // which counts the tables it refuses itself: count it here, so that a
                // bad edit can be alerted on.
                if on_poll(&publisher, poll, true) == PollOutcome::Rejected {
                    rejections.inc();
                }
            }));
            let store = store.clone();
            tokio::spawn(async move {
                while updates.changed().await.is_ok() {
                    let published = updates.borrow_and_update().clone();
                    if let Some(p) = published
                        && let Err(e) = store.apply(p.table.clone())
                    {
                        tracing::error!(error = %e, "compiled table refused; keeping the last one");
                    }
                }
            });
        }
        (None, Some(controller)) => {
            let mut config = SubscriberConfig::new(controller.clone());
            if let Some(id) = &args.proxy_id {
                let Ok(id) = id.parse() else {
                    bail!("--proxy-id {id:?}: use {PROXY_ID_RULE}");
                };
                config.proxy_id = id;
            }
            config.table_cache = args.table_cache.clone().map(TableCache::new);
            config.token = args.controller_token_file.clone();
            config.ca = args.controller_ca.clone();
            config.report_interval =
                (!args.report_interval.is_zero()).then_some(args.report_interval);
            if let Err(e) = config.client() {
                bail!("--controller {controller}: {e}");
            }
            tracing::info!(controller = %controller, proxy = %config.proxy_id, table_cache = ?args.table_cache, "subscribing to the controller");
            tokio::spawn(subscriber::run(config, store.clone()));
        }
        _ => bail!("give exactly one of --config PATH (standalone) or --controller URL"),
    }

    let tls = match (args.tls_certs.len(), args.tls_keys.len()) {
        (0, 0) => None,
        (certs, keys) if certs != keys => {
            bail!("{certs} --tls-cert for {keys} --tls-key: give each certificate its key")
        }
        _ => {
            let files = args
                .tls_certs
                .iter()
                .zip(&args.tls_keys)
                .map(|(cert, key)| CertificateFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect();
            Some(TlsConfig::new(files, args.tls_reload_interval).context("--tls-cert/--tls-key")?)
        }
    };
    if let Some(tls) = &tls {
        // Pools that require client certificates have the TLS listener ask for them.
        store.request_client_certificates_on(tls.clone());
    }
    if matches!(args.listen, Listen::Off) && tls.is_none() {
        bail!("--listen off with no --tls-cert: the proxy would serve nothing");
    }
    let traffic = match args.listen {
        Listen::Off => None,
        Listen::On(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding traffic listener {addr}"))?,
        ),
    };
    let traffic_tls = match &tls {
        None => None,
        Some(_) => Some(
            tokio::net::TcpListener::bind(args.tls_listen)
                .await
                .with_context(|| format!("binding TLS listener {}", args.tls_listen))?,
        ),
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding admin listener {}", args.admin))?;
    let shown = |l: &Option<tokio::net::TcpListener>| {
        l.as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or_else(|| "off".to_owned(), |a| a.to_string())
    };
    tracing::info!(
        listen = %shown(&traffic), tls_listen = %shown(&traffic_tls),
        admin = %admin_listener.local_addr()?, "proxy started"
    );

    let listener_metrics =
        ListenerMetrics::new(metrics.registry()).context("registering listener metrics")?;
    let config = ServerConfig {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        drain_timeout: args.drain_timeout,
        max_connections: NonZeroUsize::new(args.max_connections),
        max_connections_per_client: NonZeroUsize::new(args.max_connections_per_client),
        tls_handshake_timeout: args.tls_handshake_timeout,
        metrics: listener_metrics.listener("http"),
        workers,
        ..ServerConfig::default()
    };
    let mut admin = Admin::new(store.clone(), metrics.clone());
    if let Some(token) = args.admin_token.as_deref().filter(|t| !t.is_empty()) {
        admin = admin.with_token(token);
    }
    let admin_config = ServerConfig {
        // Probes and scrapes: a few connections.
        max_connections: NonZeroUsize::new(256),
        max_connections_per_client: None,
        metrics: listener_metrics.listener("admin"),
        workers: None,
        ..config.clone()
    };
    let admin_task = tokio::spawn(async move {
        let handler = move |req, _peer| {
            let resp = admin.handle(&req);
            async move { resp }
        };
        server::serve(
            admin_listener,
            admin_config,
            handler,
            std::future::pending::<()>(),
        )
        .await;
    });

    let access_log = AccessLog::stdout(
        &AccessLogConfig {
            format: args.access_log,
            sample: args.access_log_sample,
            query: args.access_log_query,
            ..AccessLogConfig::default()
        },
        &metrics,
    )
    .context("starting the access log writer")?;
    let mut forwarder =
        Forwarder::with_config(store, metrics.clone(), forward_config).with_access_log(access_log);
    if let Some(endpoint) = &args.otlp_endpoint {
        forwarder = forwarder.with_spans(otlp_spans(endpoint, &metrics)?);
    }
    // Shared, not cloned per request: a Forwarder holds every metric handle.
    let forwarder = Arc::new(forwarder);
    let handler = move |req, peer| Arc::clone(&forwarder).handle(req, peer);
    let delay = args.shutdown_delay;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        if !delay.is_zero() {
            tracing::info!(?delay, "still accepting connections before draining");
            tokio::time::sleep(delay).await;
        }
        let _ = stop.send(true);
    });
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    // Buffers freed by parked and closed connections go back to the system.
    let trim = tokio::spawn(sluice_listener::memory::trim_when_released());
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = traffic {
        servers.spawn(server::serve(
            listener,
            config.clone(),
            handler.clone(),
            shutdown(),
        ));
    }
    if let (Some(listener), Some(tls)) = (traffic_tls, tls) {
        let config = ServerConfig {
            tls: Some(tls),
            metrics: listener_metrics.listener("https"),
            ..config
        };
        servers.spawn(server::serve(listener, config, handler, shutdown()));
    }
    while servers.join_next().await.is_some() {}
    admin_task.abort();
    trim.abort();
    Ok(())
}

/// The queue of an OTLP exporter to `endpoint`.
#[cfg(feature = "otlp")]
fn otlp_spans(endpoint: &str, metrics: &Metrics) -> Result<sluice_proxy::trace::SpanQueue> {
    let queue = sluice_proxy::otlp::start(endpoint, metrics)?;
    tracing::info!(endpoint, "exporting request spans over OTLP");
    Ok(queue)
}

/// A build without OTLP refuses the flag rather than ignore it.
#[cfg(not(feature = "otlp"))]
fn otlp_spans(_endpoint: &str, _metrics: &Metrics) -> Result<sluice_proxy::trace::SpanQueue> {
    bail!(
        "--otlp-endpoint: this build has no OTLP export; build with `cargo build --release -p sluice --features otlp` (the released image has it)"
    )
}
