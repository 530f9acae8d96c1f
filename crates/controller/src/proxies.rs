//! Which proxy runs which table: the registry of subscribed proxies and their
//! acknowledgements.
//!
//! A proxy names itself when it subscribes (`GET /v1/routes/watch?proxy=ID`) and, after
//! applying each table it receives, acknowledges it (`POST /v1/routes/ack` with an
//! [`Ack`]; the protocol is [`sluice_api::push`]). The registry keeps one entry per
//! open, named subscription: the entry is created by [`ProxyRegistry::register`] and
//! removed when the returned [`Registration`] is dropped (the subscription ended), so
//! it holds at most as many entries as there are open subscriptions, and never more
//! than its capacity. Acknowledgements from a proxy without an open subscription are
//! refused, so they cannot grow it.
//!
//! A proxy is *current* when the revision (content digest) it acknowledged is the
//! revision of the table published now, else *stale* (including a proxy that has not
//! acknowledged anything yet). The push latency of a table is the time from its
//! publication (or from the subscription, for a proxy that subscribed later) to its
//! acknowledgement.
//!
//! Each entry also keeps the proxy's load reports ([`LoadHistory`]; `POST
//! /v1/proxies/report`, refused like an acknowledgement for a proxy without an open
//! subscription here): [`ProxyRegistry::loads`] reads them, fresh ones only.
//!
//! Exposed as the metrics `sluice_controller_proxies{state="current"|"stale"}` (counts,
//! computed when scraped) and `sluice_controller_push_latency_seconds` (histogram), as
//! `GET /v1/proxies` (JSON, for debugging) and as [`ProxyRegistry::summary`] for the
//! status writer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use sluice_api::load::LoadReport;
use sluice_api::push::{Ack, ProxyId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::load::{LoadHistory, LoadSettings, ProxyLoad, ProxyLoads};
use crate::publisher::Publisher;

/// How many named subscriptions a registry tracks by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Buckets of the push latency histogram, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a subscription is not tracked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The name is not a valid proxy name (see [`ProxyId`]).
    #[error("invalid proxy name")]
    InvalidId,
    /// The registry tracks as many proxies as its capacity allows.
    #[error("already tracking {0} proxies")]
    Full(usize),
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No open subscription carries this proxy's name (it ended, or the
    /// acknowledgement reached another controller replica).
    #[error("proxy {0:?} has no open subscription here")]
    UnknownProxy(String),
    /// The version acknowledged was never published here.
    #[error("version {0} was not published")]
    Unpublished(u64),
    /// The revision acknowledged is not the one published under that version.
    #[error("version {version} has revision {published}, not {acked}")]
    RevisionMismatch {
        /// The version acknowledged.
        version: u64,
        /// The revision published under it.
        published: String,
        /// The revision acknowledged.
        acked: String,
    },
}

/// Why a load report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// No open subscription carries this proxy's name (it ended, or the report
    /// reached another controller replica). Retryable on the subscription's
    /// connection.
    #[error("proxy {0:?} has no open subscription here")]
    UnknownProxy(String),
    /// The report is out of bounds or malformed. Not retryable.
    #[error(transparent)]
    Invalid(#[from] sluice_api::load::LoadError),
}

/// What was recorded for an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The proxy now runs this version; the push latency is given when this is the
    /// current table acknowledged for the first time by this subscription.
    Recorded(Option<Duration>),
    /// The proxy had already acknowledged this or a later version; nothing changed.
    Ignored,
}

/// One tracked proxy, as listed by [`ProxyRegistry::snapshot`] and `GET /v1/proxies`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    /// The name it subscribed under.
    pub id: String,
    /// The address its subscription came from.
    pub peer: String,
    /// The version it acknowledged last, if any.
    pub version: Option<u64>,
    /// The revision it acknowledged last, if any.
    pub revision: Option<String>,
    /// Whether that revision is the current table's.
    pub current: bool,
    /// Seconds since it subscribed.
    pub connected_seconds: f64,
    /// Seconds since its last acknowledgement.
    pub acked_seconds_ago: Option<f64>,
    /// Publication (or subscription) to acknowledgement of the last table it
    /// acknowledged while that table was current, in seconds.
    pub push_latency_seconds: Option<f64>,
    /// Its load, when it reported recently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<ProxyLoad>,
}

/// Counts over the tracked proxies, against the table published now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySummary {
    /// The current table's version (0 before the first).
    pub version: u64,
    /// The current table's revision (empty before the first).
    pub revision: String,
    /// Tracked proxies (open, named subscriptions).
    pub connected: usize,
    /// Proxies whose acknowledged revision is the current one.
    pub current: usize,
    /// The others: behind, or not acknowledged yet.
    pub stale: usize,
}

#[derive(Debug)]
struct Entry {
    token: u64,
    peer: SocketAddr,
    subscribed_at: Instant,
    acked: Option<AckedTable>,
    load: LoadHistory,
}

#[derive(Debug)]
struct AckedTable {
    version: u64,
    revision: String,
    at: Instant,
    latency: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    publisher: Publisher,
    capacity: usize,
    load: LoadSettings,
    proxies: Mutex<HashMap<ProxyId, Entry>>,
    next_token: AtomicU64,
    latency: Histogram,
    states: IntGaugeVec,
    changes: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProxyId, Entry>> {
        self.proxies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// The proxies subscribed to this controller and the table each acknowledged.
/// Cheap to clone; clones share the registry.
#[derive(Clone, Debug)]
pub struct ProxyRegistry {
    inner: Arc<Inner>,
}

impl ProxyRegistry {
    /// A registry of at most [`DEFAULT_CAPACITY`] proxies, judged against the tables of
    /// `publisher`. Its metrics exist at once but are exported only once
    /// [`ProxyRegistry::register_metrics`] was called.
    pub fn new(publisher: Publisher) -> Self {
        Self::with_capacity(publisher, DEFAULT_CAPACITY)
    }

    /// A registry of at most `capacity` proxies.
    ///
    /// # Panics
    ///
    /// Never in practice: the metric names and buckets are constant and valid.
    pub fn with_capacity(publisher: Publisher, capacity: usize) -> Self {
        Self::with_settings(publisher, capacity, LoadSettings::default())
    }

    /// A registry of at most `capacity` proxies, windowing their load reports as
    /// `load` says.
    ///
    /// # Panics
    ///
    /// Never in practice: the metric names and buckets are constant and valid.
    pub fn with_settings(publisher: Publisher, capacity: usize, load: LoadSettings) -> Self {
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_controller_push_latency_seconds",
                "Time from a table's publication (or the proxy's subscription, if later) to the proxy's acknowledgement",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        let states = IntGaugeVec::new(
            Opts::new(
                "sluice_controller_proxies",
                "Tracked proxies by whether they acknowledged the current table",
            ),
            &["state"],
        )
        .expect("valid gauge");
        Self {
            inner: Arc::new(Inner {
                publisher,
                capacity,
                load,
                proxies: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(0),
                latency,
                states,
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// Registers `sluice_controller_proxies` and `sluice_controller_push_latency_seconds`
    /// in `registry`.
    ///
    /// # Errors
    ///
    /// When a metric of the same name is already registered.
    pub fn register_metrics(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.inner.latency.clone()))?;
        registry.register(Box::new(StatesCollector {
            inner: self.inner.clone(),
        }))
    }

    /// The metrics [`ProxyRegistry::register_metrics`] registers (for `sluice metrics`).
    pub fn metric_descs() -> Vec<Desc> {
        let registry = Self::new(Publisher::new());
        let inner = &registry.inner;
        [inner.latency.desc(), inner.states.desc()]
            .concat()
            .into_iter()
            .cloned()
            .collect()
    }

    /// The publisher whose tables the proxies acknowledge.
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Tracks the subscription of proxy `id` from `peer` until the returned
    /// [`Registration`] is dropped. A proxy that subscribes again under the same name
    /// replaces its earlier entry (whose registration then removes nothing).
    ///
    /// # Errors
    ///
    /// An invalid name, or a new name when the registry is full.
    pub fn register(&self, id: &str, peer: SocketAddr) -> Result<Registration, RegisterError> {
        let id: ProxyId = id.parse().map_err(|_| RegisterError::InvalidId)?;
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        {
            let mut proxies = self.inner.lock();
            if !proxies.contains_key(&id) && proxies.len() >= self.inner.capacity {
                return Err(RegisterError::Full(self.inner.capacity));
            }
            proxies.insert(
                id.clone(),
                Entry {
                    token,
                    peer,
                    subscribed_at: Instant::now(),
                    acked: None,
                    load: LoadHistory::default(),
                },
            );
        }
        self.inner.changed();
        Ok(Registration {
            inner: self.inner.clone(),
            id,
            token,
        })
    }

    /// Records that proxy `ack.proxy` runs table `ack.version`.
    ///
    /// Acknowledgements of an older version than the proxy's last are ignored (they
    /// arrived out of order). The revision is checked against the current table when
    /// the version is the current one.
    ///
    /// # Errors
    ///
    /// The proxy has no open subscription, or the version or revision were not
    /// published.
    pub fn ack(&self, ack: &Ack) -> Result<Acked, AckError> {
        let current = self.inner.publisher.current();
        let current = current.as_deref().map(|p| (&p.table, p.published_at));
        match current {
            None => return Err(AckError::Unpublished(ack.version)),
            Some((table, _)) if ack.version > table.version => {
                return Err(AckError::Unpublished(ack.version));
            }
            Some((table, _)) if ack.version == table.version && ack.revision != table.revision => {
                return Err(AckError::RevisionMismatch {
                    version: ack.version,
                    published: table.revision.clone(),
                    acked: ack.revision.clone(),
                });
            }
            Some(_) => {}
        }
        let now = Instant::now();
        let result = {
            let mut proxies = self.inner.lock();
            let entry = proxies
                .get_mut(&ack.proxy)
                .ok_or_else(|| AckError::UnknownProxy(ack.proxy.to_string()))?;
            if entry
                .acked
                .as_ref()
                .is_some_and(|a| a.version >= ack.version)
            {
                return Ok(Acked::Ignored);
            }
            let latency = current
                .filter(|(table, _)| table.version == ack.version)
                .map(|(_, published_at)| now.duration_since(published_at.max(entry.subscribed_at)));
            entry.acked = Some(AckedTable {
                version: ack.version,
                revision: ack.revision.clone(),
                at: now,
                latency,
            });
            latency
        };
        if let Some(latency) = result {
            self.inner.latency.observe(latency.as_secs_f64());
        }
        self.inner.changed();
        Ok(Acked::Recorded(result))
    }

    /// Keeps the load proxy `report.proxy` reports now.
    ///
    /// # Errors
    ///
    /// [`ReportError::UnknownProxy`] when it has no open subscription here, and
    /// [`ReportError::Invalid`] for a report out of bounds.
    pub fn report(&self, report: LoadReport) -> Result<(), ReportError> {
        report.check()?;
        let now = Instant::now();
        let mut proxies = self.inner.lock();
        let entry = proxies
            .get_mut(&report.proxy)
            .ok_or_else(|| ReportError::UnknownProxy(report.proxy.to_string()))?;
        entry.load.record(now, report.pools, self.inner.load.window);
        Ok(())
    }

    /// The load of every tracked proxy that reported within the maximum age, by name.
    pub fn loads(&self) -> ProxyLoads {
        let now = Instant::now();
        let settings = self.inner.load;
        self.inner
            .lock()
            .iter()
            .filter_map(|(id, e)| Some((id.to_string(), e.load.load(now, settings)?)))
            .collect()
    }

    /// How reports are windowed and when they go stale.
    pub fn load_settings(&self) -> LoadSettings {
        self.inner.load
    }

    /// Every tracked proxy, sorted by name.
    pub fn snapshot(&self) -> Vec<ProxyState> {
        let revision = self
            .inner
            .publisher
            .current()
            .map(|p| p.table.revision.clone());
        let now = Instant::now();
        let mut list: Vec<ProxyState> = self
            .inner
            .lock()
            .iter()
            .map(|(id, e)| ProxyState {
                id: id.to_string(),
                peer: e.peer.to_string(),
                version: e.acked.as_ref().map(|a| a.version),
                revision: e.acked.as_ref().map(|a| a.revision.clone()),
                current: is_current(e, revision.as_deref()),
                connected_seconds: now.duration_since(e.subscribed_at).as_secs_f64(),
                acked_seconds_ago: e
                    .acked
                    .as_ref()
                    .map(|a| now.duration_since(a.at).as_secs_f64()),
                push_latency_seconds: e
                    .acked
                    .as_ref()
                    .and_then(|a| a.latency)
                    .map(|l| l.as_secs_f64()),
                load: e.load.load(now, self.inner.load),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// How many tracked proxies last acknowledged exactly `version`.
    pub fn count_at(&self, version: u64) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|e| e.acked.as_ref().is_some_and(|a| a.version == version))
            .count()
    }

    /// How many tracked proxies last acknowledged a table of this revision (content
    /// digest). Revisions, unlike versions, are the same on every controller replica
    /// for the same objects.
    pub fn count_at_revision(&self, revision: &str) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|e| is_current(e, Some(revision)))
            .count()
    }

    /// Every tracked proxy with the revision it acknowledged last.
    pub fn acked(&self) -> crate::peers::ProxyRevisions {
        self.inner
            .lock()
            .iter()
            .map(|(id, e)| (id.to_string(), e.acked.as_ref().map(|a| a.revision.clone())))
            .collect()
    }

    /// How many tracked proxies run the current table (by revision: equal content).
    pub fn count_current(&self) -> usize {
        self.summary().current
    }

    /// Counts of the tracked proxies against the table published now.
    pub fn summary(&self) -> ProxySummary {
        let published = self.inner.publisher.current();
        let revision = published.as_ref().map(|p| p.table.revision.as_str());
        let proxies = self.inner.lock();
        let current = proxies.values().filter(|e| is_current(e, revision)).count();
        ProxySummary {
            version: published.as_ref().map_or(0, |p| p.table.version),
            revision: revision.unwrap_or_default().to_owned(),
            connected: proxies.len(),
            current,
            stale: proxies.len() - current,
        }
    }

    /// Tracked proxies.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no proxy is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver notified whenever a proxy subscribes, leaves or acknowledges a new
    /// table. A new publication is not notified here (whoever publishes knows it);
    /// read [`ProxyRegistry::summary`] after either.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

fn is_current(entry: &Entry, revision: Option<&str>) -> bool {
    match (&entry.acked, revision) {
        (Some(a), Some(r)) => a.revision == r,
        _ => false,
    }
}

/// An open, tracked subscription; dropping it removes the proxy from the registry.
#[derive(Debug)]
pub struct Registration {
    inner: Arc<Inner>,
    id: ProxyId,
    token: u64,
}

impl Registration {
    /// The proxy's name.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = {
            let mut proxies = self.inner.lock();
            let ours = proxies.get(&self.id).is_some_and(|e| e.token == self.token);
            ours && proxies.remove(&self.id).is_some()
        };
        if removed {
            self.inner.changed();
        }
    }
}

/// Exports the current/stale counts, computed when the metrics are gathered (a new
/// publication turns every proxy stale without any event here).
struct StatesCollector {
    inner: Arc<Inner>,
}

impl Collector for StatesCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.states.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let summary = ProxyRegistry {
            inner: self.inner.clone(),
        }
        .summary();
        let set = |state: &str, n: usize| {
            self.inner
                .states
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("current", summary.current);
        set("stale", summary.stale);
        self.inner.states.collect()
    }
}
