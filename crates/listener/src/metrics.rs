//! What the listeners count: connections accepted, refused, open, parked and timed out,
//! failed `accept()` calls, TLS handshakes and certificate reloads.
//!
//! [`ListenerMetrics`] holds the metric families, registered once; each listener takes
//! its own [`ConnectionMetrics`] from it with [`ListenerMetrics::listener`], labelled
//! with the listener's name (`traffic`, `admin`, `push`...: a fixed set chosen by the
//! binaries). A [`ConnectionMetrics::default`] counts into metrics registered nowhere.

use prometheus::core::{Collector, Desc};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The listener metric families.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    accepted: IntCounterVec,
    refused: IntCounterVec,
    open: IntGaugeVec,
    parked: IntGaugeVec,
    timed_out: IntCounterVec,
    accept_errors: IntCounterVec,
    handshakes: IntCounterVec,
    reloads: IntCounterVec,
}

/// The metrics of one listener.
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    pub(crate) accepted: IntCounter,
    pub(crate) refused_listener: IntCounter,
    pub(crate) refused_client: IntCounter,
    pub(crate) open: IntGauge,
    pub(crate) parked: IntGauge,
    pub(crate) timed_out_first_bytes: IntCounter,
    pub(crate) timed_out_handshake: IntCounter,
    pub(crate) timed_out_idle: IntCounter,
    pub(crate) accept_descriptors: IntCounter,
    pub(crate) accept_other: IntCounter,
    pub(crate) handshake_ok: IntCounter,
    pub(crate) handshake_failed: IntCounter,
    pub(crate) reload_ok: IntCounter,
    pub(crate) reload_failed: IntCounter,
}

impl ListenerMetrics {
    /// Creates the families and registers them in `registry`.
    ///
    /// # Errors
    ///
    /// When a metric of the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        fn counter(
            registry: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let open = IntGaugeVec::new(
            Opts::new(
                "sluice_listener_connections_open",
                "Client connections open, by listener",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(open.clone()))?;
        let parked = IntGaugeVec::new(
            Opts::new(
                "sluice_listener_connections_parked",
                "Cleartext HTTP/1.1 client connections waiting for their next request, held without buffers, by listener",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(parked.clone()))?;
        Ok(Self {
            accepted: counter(
                registry,
                "sluice_listener_connections_accepted_total",
                "Connections accepted and admitted, by listener",
                &["listener"],
            )?,
            refused: counter(
                registry,
                "sluice_listener_connections_refused_total",
                "Connections closed at once because a cap was reached, by listener and reason (max_connections, max_connections_per_client)",
                &["listener", "reason"],
            )?,
            open,
            parked,
            timed_out: counter(
                registry,
                "sluice_listener_connections_timed_out_total",
                "Connections closed for silence, by listener and phase (first_bytes, tls_handshake, idle)",
                &["listener", "phase"],
            )?,
            accept_errors: counter(
                registry,
                "sluice_listener_accept_errors_total",
                "Failed accept() calls, each followed by a short pause, by listener and reason (descriptor_limit, other)",
                &["listener", "reason"],
            )?,
            handshakes: counter(
                registry,
                "sluice_listener_tls_handshakes_total",
                "TLS handshakes, by listener and result (ok, failed); timeouts are counted in sluice_listener_connections_timed_out_total",
                &["listener", "result"],
            )?,
            reloads: counter(
                registry,
                "sluice_listener_tls_reloads_total",
                "Certificate files read again after a change, by listener and result (ok, failed: the previous certificates stay in use)",
                &["listener", "result"],
            )?,
        })
    }

    /// Every listener metric family, whether or not it has a series yet (`sluice
    /// metrics` lists them).
    ///
    /// # Errors
    ///
    /// Never in practice: the definitions are fixed and the registry is fresh.
    pub fn metric_descs() -> prometheus::Result<Vec<Desc>> {
        let m = Self::new(&Registry::new())?;
        let families: [&dyn Collector; 8] = [
            &m.accepted,
            &m.refused,
            &m.open,
            &m.parked,
            &m.timed_out,
            &m.accept_errors,
            &m.handshakes,
            &m.reloads,
        ];
        Ok(families
            .iter()
            .flat_map(|f| f.desc().into_iter().cloned())
            .collect())
    }

    /// The metrics of the listener named `listener`.
    pub fn listener(&self, listener: &str) -> ConnectionMetrics {
        let l = |vec: &IntCounterVec, value: &str| vec.with_label_values(&[listener, value]);
        ConnectionMetrics {
            accepted: self.accepted.with_label_values(&[listener]),
            refused_listener: l(&self.refused, "max_connections"),
            refused_client: l(&self.refused, "max_connections_per_client"),
            open: self.open.with_label_values(&[listener]),
            parked: self.parked.with_label_values(&[listener]),
            timed_out_first_bytes: l(&self.timed_out, "first_bytes"),
            timed_out_handshake: l(&self.timed_out, "tls_handshake"),
            timed_out_idle: l(&self.timed_out, "idle"),
            accept_descriptors: l(&self.accept_errors, "descriptor_limit"),
            accept_other: l(&self.accept_errors, "other"),
            handshake_ok: l(&self.handshakes, "ok"),
            handshake_failed: l(&self.handshakes, "failed"),
            reload_ok: l(&self.reloads, "ok"),
            reload_failed: l(&self.reloads, "failed"),
        }
    }
}

impl Default for ConnectionMetrics {
    /// Metrics registered nowhere.
    fn default() -> Self {
        // Fixed, valid names in a fresh registry: this cannot fail.
        ListenerMetrics::new(&Registry::new())
            .expect("fresh metrics in a fresh registry")
            .listener("unregistered")
    }
}
