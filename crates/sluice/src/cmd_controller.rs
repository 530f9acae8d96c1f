//! `sluice controller`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_controller::from_dir::{DirWatcher, Poll};
use sluice_controller::publisher::Publisher;
use sluice_controller::push::{self, PushConfig, PushMetrics};

/// Arguments of `sluice controller`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compile the manifests in this folder (AgentPools, RatePolicies, EndpointSlices)
    /// instead of watching the Kubernetes API.
    #[arg(long, env = "SLUICE_FROM_DIR")]
    from_dir: PathBuf,
    /// Where proxies subscribe to route tables.
    #[arg(long, default_value = "0.0.0.0:9090", env = "SLUICE_CONTROLLER_LISTEN")]
    listen: SocketAddr,
    /// How often the folder is read for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Interval of heartbeat lines on idle subscriptions.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
}

/// Parses `500ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<sluice_api::Duration>()
        .map(sluice_api::Duration::get)
        .map_err(|e| e.to_string())
}

/// Runs the controller until a shutdown signal.
pub async fn run(args: Args) -> Result<()> {
    let publisher = Publisher::new();
    let registry = prometheus::Registry::new();
    let metrics = PushMetrics::new(&registry).context("registering metrics")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, from_dir = %args.from_dir.display(), "controller started");

    let watcher = DirWatcher::new(&args.from_dir);
    let pubr = publisher.clone();
    tokio::spawn(watcher.run(args.poll_interval, move |poll| on_poll(&pubr, poll, false)));

    push::serve(
        listener,
        publisher,
        metrics,
        PushConfig {
            heartbeat: args.heartbeat,
        },
        crate::shutdown_signal(),
    )
    .await;
    Ok(())
}

/// Logs what a poll found and publishes the table. With `strict`, a table whose
/// compile reported errors is not published (the last good one stays); otherwise the
/// objects that compiled are published without the invalid ones.
pub fn on_poll(publisher: &Publisher, poll: Poll, strict: bool) {
    match poll {
        Poll::Unchanged => {}
        Poll::Failed(e) => {
            tracing::error!(error = %e, "cannot read manifests; keeping the last table")
        }
        Poll::Compiled(table, diags) => {
            for d in diags.iter() {
                match d.severity {
                    sluice_api::Severity::Error => tracing::error!("{d}"),
                    sluice_api::Severity::Warning => tracing::warn!("{d}"),
                }
            }
            if strict && diags.has_errors() {
                tracing::error!("manifests have errors; keeping the last table");
                return;
            }
            let (pools, routes) = (table.pools.len(), table.routes.len());
            match publisher.publish(table) {
                Ok(Some(version)) => {
                    tracing::info!(version, pools, routes, "route table published")
                }
                Ok(None) => tracing::debug!("manifests changed but the table did not"),
                Err(e) => {
                    tracing::error!(error = %e, "compiled table is invalid; keeping the last table")
                }
            }
        }
    }
}
