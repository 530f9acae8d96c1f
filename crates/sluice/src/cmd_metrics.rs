//! `sluice metrics`: every metric the proxy and the controller can export, as the
//! binaries register them, so that dashboards, alert rules and autoscaling rules can be
//! checked against what exists (`scripts/validate-manifests.sh` does).

use anyhow::Result;
use prometheus::core::Desc;
use serde_json::{Value, json};
use sluice_controller::lease::LeaderElector;
use sluice_controller::proxies::ProxyRegistry;
use sluice_controller::push::PushMetrics;
use sluice_controller::watch::WatchMetrics;
use sluice_listener::ListenerMetrics;
use sluice_proxy::Metrics;

/// Prints `{"proxy": [...], "controller": [...]}`, each a list of `{"name", "labels",
/// "help"}` sorted by name.
pub fn run() -> Result<()> {
    // Both binaries serve their listeners' metrics.
    let listeners = ListenerMetrics::metric_descs()?;
    let mut proxy = Metrics::metric_descs()?;
    proxy.extend(listeners.iter().cloned());
    let mut controller = listeners;
    controller.extend(PushMetrics::metric_descs()?);
    controller.extend(ProxyRegistry::metric_descs());
    controller.extend(WatchMetrics::metric_descs()?);
    controller.extend(LeaderElector::metric_descs()?);
    let out = json!({"proxy": list(proxy), "controller": list(controller)});
    crate::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&out)?))
}

fn list(mut descs: Vec<Desc>) -> Vec<Value> {
    descs.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
    descs.dedup_by(|a, b| a.fq_name == b.fq_name);
    descs
        .into_iter()
        .map(|d| json!({"name": d.fq_name, "labels": d.variable_labels, "help": d.help}))
        .collect()
}
