//! The watch loop's metrics: compiles and their duration, watch events, errors and
//! full lists, by kind.

use prometheus::core::{Collector, Desc};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Metrics of the watch loop.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    /// Compile runs.
    pub compiles: IntCounter,
    pub(super) compile_seconds: Histogram,
    pub(super) events: IntCounterVec,
    pub(super) watch_errors: IntCounterVec,
    pub(super) lists: IntCounterVec,
}

impl WatchMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    ///
    /// When a metric of the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let compiles = IntCounter::new(
            "sluice_controller_compiles_total",
            "Compile runs of the route table",
        )?;
        let compile_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_controller_compile_duration_seconds",
                "Time to compile the route table",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "sluice_controller_watch_events_total",
                "Watch events received, by kind",
            ),
            &["kind"],
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "sluice_controller_watch_errors_total",
                "Watch errors (each followed by a retry), by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(compiles.clone()))?;
        registry.register(Box::new(compile_seconds.clone()))?;
        registry.register(Box::new(events.clone()))?;
        let lists = IntCounterVec::new(
            Opts::new(
                "sluice_controller_watch_lists_total",
                "Full lists by the watchers, by kind: one at start, then one each time a \
                 watch could not resume (a restart), and for EndpointSlices one each time \
                 the set of Services the pools name changes",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(lists.clone()))?;
        Ok(Self {
            compiles,
            compile_seconds,
            events,
            watch_errors,
            lists,
        })
    }

    /// The metrics [`WatchMetrics::new`] registers, series or not (for `sluice metrics`).
    ///
    /// # Errors
    ///
    /// Never in practice: the definitions are fixed and the registry is fresh.
    pub fn metric_descs() -> prometheus::Result<Vec<Desc>> {
        let m = Self::new(&Registry::new())?;
        let collectors: [&dyn Collector; 5] = [
            &m.compiles,
            &m.compile_seconds,
            &m.events,
            &m.watch_errors,
            &m.lists,
        ];
        Ok(collectors.iter().flat_map(|c| c.desc()).cloned().collect())
    }
}
