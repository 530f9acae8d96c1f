//! Subscribing to the controller: a long-lived HTTP stream of newline-delimited tables.
//!
//! The proxy subscribes under its name (`GET /v1/routes/watch?proxy=ID`) and, after
//! applying each table (or finding it already in force), acknowledges it with
//! `POST /v1/routes/ack` and an [`Ack`](sluice_api::push::Ack): the protocol of
//! [`sluice_api::push`], which the controller speaks too. It speaks HTTP/2 with prior
//! knowledge, so the acknowledgements share the subscription's connection and reach
//! the controller replica that streams to it. Acknowledgements go out from a task of
//! their own (`ack`), the latest only when several are due, so a slow answer never
//! holds up the stream (`stream`). Every `report_interval` the proxy also posts its
//! pools' load ([`LoadReport`](sluice_api::load::LoadReport)) the same way (`report`), from
//! which the controller serves external metrics.
//!
//! The proxy keeps the last table it applied while the controller is away, reconnects
//! with jittered exponential backoff ([`Backoff`], full jitter: each delay is drawn
//! between zero and the ceiling, the first reconnect after a healthy stream included,
//! so proxies that lost the controller together do not return together), and treats a
//! stream silent for longer than `idle_timeout` (the controller sends a heartbeat line
//! well within it) as dead.
//!
//! With a [`TableCache`], each applied table is also saved to a file. At start, a valid
//! cached table is put in force when the controller is unreachable (the first attempt
//! fails) or has sent no table within `cache_grace`; the controller's first table
//! replaces it.

mod ack;
mod backoff;
mod post;
mod report;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;
use sluice_api::push::ProxyId;

pub use self::backoff::{Backoff, full_jitter};
use crate::store::TableStore;
use crate::table_cache::TableCache;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How often a proxy reports its pools' load by default.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of the subscription.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The controller's base URL, for example `http://sluice-controller:9090`.
    pub controller: Uri,
    /// The name this proxy subscribes and acknowledges under; unique among the
    /// proxies of a controller.
    pub proxy_id: ProxyId,
    /// Ceiling of the first reconnect delay; doubles with each failed attempt up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    /// Ceiling of the longest reconnect delay.
    pub max_backoff: Duration,
    /// A stream that sends nothing, not even a heartbeat, for this long is reconnected.
    pub idle_timeout: Duration,
    /// Deadline to connect and receive the response headers.
    pub connect_timeout: Duration,
    /// Deadline of one acknowledgement (and of one load report).
    pub ack_timeout: Duration,
    /// How often the pools' load is reported to the controller (`POST
    /// /v1/proxies/report`), for the external metrics it serves; `None`: never.
    pub report_interval: Option<Duration>,
    /// Where the last applied table is saved, and read from at start.
    pub table_cache: Option<TableCache>,
    /// How long a reachable controller may take to send its first table before the
    /// cached one is put in force.
    pub cache_grace: Duration,
    /// A file holding the bearer token presented to the controller (a projected
    /// ServiceAccount token, or the shared push token), read again for every
    /// subscription and acknowledgement: tokens rotate.
    pub token: Option<PathBuf>,
    /// The CA bundle (PEM) the controller's certificate is checked against; required
    /// for an `https://` controller.
    pub ca: Option<PathBuf>,
}

impl SubscriberConfig {
    /// Defaults for a controller at `controller`, named by [`default_proxy_id`], with no
    /// table cache.
    pub fn new(controller: Uri) -> Self {
        Self {
            controller,
            proxy_id: default_proxy_id(),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            report_interval: Some(DEFAULT_REPORT_INTERVAL),
            table_cache: None,
            cache_grace: Duration::from_secs(3),
            token: None,
            ca: None,
        }
    }

    /// The HTTP/2 client of the subscription: TLS (ALPN `h2`) trusting [`Self::ca`]
    /// for an `https://` controller, prior-knowledge HTTP/2 in clear otherwise.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Tls`] when the controller is `https://` without a CA bundle, or
    /// the bundle cannot be loaded.
    pub fn client(&self) -> Result<HttpClient, SubscribeError> {
        // Small frames (acknowledgements, heartbeats) must not wait for Nagle.
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = self.controller.scheme_str() == Some("https");
        let tls = match (&self.ca, https) {
            (Some(ca), _) => sluice_listener::tls::client_config(ca, &[])
                .map_err(|e| SubscribeError::Tls(e.to_string()))?,
            (None, true) => {
                return Err(SubscribeError::Tls(
                    "an https:// controller needs a CA bundle to check its certificate against"
                        .to_owned(),
                ));
            }
            // Never used: the scheme is http.
            (None, false) => rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| SubscribeError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let connector = builder.enable_http2().wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector))
    }
}

/// The `Authorization` header value for the token in `path`, read now.
pub(crate) async fn bearer(path: Option<&PathBuf>) -> Result<Option<String>, SubscribeError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| SubscribeError::Token(format!("{}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SubscribeError::Token(format!("{}: empty", path.display())));
    }
    Ok(Some(format!("Bearer {token}")))
}

/// `HOSTNAME-PID` ([`ProxyId::from_host`]): the host name (the pod's name on
/// Kubernetes) from `$HOSTNAME` or the kernel.
pub fn default_proxy_id() -> ProxyId {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    ProxyId::from_host(host.trim(), std::process::id())
}

/// Why one subscription attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The controller URL cannot be joined with the watch path. Not retryable.
    #[error("bad controller URL: {0}")]
    Url(String),
    /// Connecting or the request failed. Retryable.
    #[error("request failed: {0}")]
    Request(String),
    /// The controller answered with another status than 200. Retryable.
    #[error("controller answered {0}")]
    Status(StatusCode),
    /// No byte arrived within the idle timeout. Retryable.
    #[error("stream idle for {0:?}")]
    Idle(Duration),
    /// The stream broke. Retryable.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The controller closed the stream. Retryable.
    #[error("controller closed the stream")]
    Closed,
    /// The token file cannot be read, or is empty. Retryable (a projected token is
    /// written by the kubelet, maybe after the proxy starts).
    #[error("no token to present: {0}")]
    Token(String),
    /// TLS cannot be set up: an `https://` controller without a CA bundle, or a bundle
    /// that cannot be loaded. Not retryable.
    #[error("TLS to the controller: {0}")]
    Tls(String),
}

/// Subscribes forever, applying each table to `store`.
pub async fn run(config: SubscriberConfig, store: Arc<TableStore>) {
    run_with_rng(config, store, fastrand::Rng::new()).await;
}

/// [`run`] with the random source of the reconnect jitter given.
pub async fn run_with_rng(
    config: SubscriberConfig,
    store: Arc<TableStore>,
    mut rng: fastrand::Rng,
) {
    let client = match config.client() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to the controller");
            return;
        }
    };
    let writer = config.table_cache.clone().map(TableCache::spawn_writer);
    let mut cached = match &config.table_cache {
        Some(cache) => load_cache(cache).await,
        None => None,
    };
    let grace = tokio::time::sleep(config.cache_grace);
    tokio::pin!(grace);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        let mut applied_any = false;
        let err = {
            let attempt =
                stream::subscribe_once(&client, &config, &store, writer.as_ref(), &mut applied_any);
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    err = &mut attempt => break err,
                    () = &mut grace, if cached.is_some() => {
                        apply_cached(&mut cached, &store, "the controller sent no table in time");
                    }
                }
            }
        };
        if cached.is_some() {
            apply_cached(&mut cached, &store, "the controller is unreachable");
        }
        if matches!(err, SubscribeError::Url(_)) {
            tracing::error!(error = %err, "cannot subscribe to the controller");
            return;
        }
        if applied_any {
            backoff.reset();
        }
        let delay = backoff.next_delay(rng.f64());
        let serving = store.load().map(|rt| rt.table.version);
        tracing::warn!(error = %err, retry_in = ?delay, serving_version = ?serving, "controller stream ended; keeping the last table");
        tokio::time::sleep(delay).await;
    }
}

/// Reads the cache file off the runtime's threads; a bad file is logged and ignored.
async fn load_cache(cache: &TableCache) -> Option<RouteTable> {
    let path = cache.path().display().to_string();
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || cache.load()).await {
        Ok(Ok(Some(table))) => {
            tracing::info!(path, version = table.version, revision = %table.revision, "cached route table found");
            Some(table)
        }
        Ok(Ok(None)) => {
            tracing::info!(path, "no cached route table yet");
            None
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cached route table ignored");
            None
        }
        Err(e) => {
            tracing::error!(path, error = %e, "reading the cached route table failed");
            None
        }
    }
}

/// Puts the cached table in force unless the controller's is already there.
fn apply_cached(cached: &mut Option<RouteTable>, store: &TableStore, why: &str) {
    let Some(table) = cached.take() else {
        return;
    };
    if store.load().is_some() {
        return;
    }
    let (version, revision) = (table.version, table.revision.clone());
    match store.apply(table) {
        Ok(_) => tracing::warn!(version, %revision, "{why}: serving the cached route table"),
        Err(e) => tracing::error!(error = %e, "cached route table refused"),
    }
}
