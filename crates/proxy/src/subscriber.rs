//! Subscribing to the controller: a long-lived HTTP stream of newline-delimited tables.
//!
//! The proxy keeps the last table it applied while the controller is away, reconnects
//! with jittered exponential backoff, and treats a stream silent for longer than
//! `idle_timeout` (the controller sends a heartbeat line well within it) as dead.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::RouteTable;

use crate::store::{Applied, TableStore};

/// The path the controller serves the stream on.
pub const WATCH_PATH: &str = "/v1/routes/watch";
/// The longest line (one table) the proxy accepts.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Settings of the subscription.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The controller's base URL, for example `http://sluice-controller:9090`.
    pub controller: Uri,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// A stream that sends nothing, not even a heartbeat, for this long is reconnected.
    pub idle_timeout: Duration,
    /// Deadline to connect and receive the response headers.
    pub connect_timeout: Duration,
}

impl SubscriberConfig {
    /// Defaults for a controller at `controller`.
    pub fn new(controller: Uri) -> Self {
        Self {
            controller,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
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
}

/// Subscribes forever, applying each table to `store`.
pub async fn run(config: SubscriberConfig, store: Arc<TableStore>) {
    let client: Client<HttpConnector, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut backoff = config.min_backoff;
    loop {
        let mut applied_any = false;
        let err = subscribe_once(&client, &config, &store, &mut applied_any).await;
        if matches!(err, SubscribeError::Url(_)) {
            tracing::error!(error = %err, "cannot subscribe to the controller");
            return;
        }
        if applied_any {
            backoff = config.min_backoff;
        }
        // Full jitter: proxies that lost the controller together do not return together.
        let delay = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        let serving = store.load().map(|rt| rt.table.version);
        tracing::warn!(error = %err, retry_in = ?delay, serving_version = ?serving, "controller stream ended; keeping the last table");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

async fn subscribe_once(
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
    config: &SubscriberConfig,
    store: &TableStore,
    applied_any: &mut bool,
) -> SubscribeError {
    let base = config.controller.to_string();
    let uri: Uri = match format!("{}{WATCH_PATH}", base.trim_end_matches('/')).parse() {
        Ok(u) => u,
        Err(e) => return SubscribeError::Url(e.to_string()),
    };
    let req = match Request::get(uri).body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return SubscribeError::Url(e.to_string()),
    };
    let resp = match tokio::time::timeout(config.connect_timeout, client.request(req)).await {
        Err(_) => {
            return SubscribeError::Request(format!(
                "no answer within {:?}",
                config.connect_timeout
            ));
        }
        Ok(Err(e)) => return SubscribeError::Request(e.to_string()),
        Ok(Ok(resp)) => resp,
    };
    if resp.status() != StatusCode::OK {
        return SubscribeError::Status(resp.status());
    }
    tracing::info!(controller = %config.controller, "subscribed to the controller");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(config.idle_timeout, body.frame()).await {
            Err(_) => return SubscribeError::Idle(config.idle_timeout),
            Ok(None) => return SubscribeError::Closed,
            Ok(Some(Err(e))) => return SubscribeError::Stream(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // heartbeat
            }
            if apply_line(line, store) {
                *applied_any = true;
            }
        }
        if buf.len() > MAX_LINE {
            return SubscribeError::Stream(format!("a line is longer than {MAX_LINE} bytes"));
        }
    }
}

/// Parses and applies one table line; returns whether it was applied.
fn apply_line(line: &[u8], store: &TableStore) -> bool {
    let table: RouteTable = match serde_json::from_slice(line) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "controller sent a line that is not a route table; ignored");
            return false;
        }
    };
    let (version, revision) = (table.version, table.revision.clone());
    match store.apply(table) {
        Ok(Applied::Swapped) => {
            tracing::info!(version, %revision, "route table applied");
            true
        }
        Ok(Applied::Unchanged) => true,
        Err(e) => {
            tracing::error!(version, error = %e, "controller sent an invalid route table; keeping the last one");
            false
        }
    }
}
