//! `sluice controller` on Kubernetes: watch the objects, compile, publish, write status.
//!
//! The core, [`Watch`], consumes streams of [`Event`]s: in production from
//! kube's [`watcher()`] (see [`kube_sources`]), in tests from channels or
//! `futures::stream::iter`. It keeps one cache per kind and, when something that the
//! compile step reads changes, schedules a compile:
//!
//! * **Coalescing.** Compiles are at least `debounce` apart. A change after a quiet
//!   spell is compiled at once (an endpoint change is not held back); changes within
//!   `debounce` of the last compile, and every event already waiting in the streams,
//!   join the next one. A 100-pod rollout is one or two compiles, not a hundred.
//!   Status-only passes (a proxy acknowledged a table, a status came back) are
//!   spaced the same way but never delay a compile.
//! * **Initial sync.** Nothing is compiled before every watcher listed its objects
//!   once, so a table never goes out with pools but without their endpoints.
//! * **Relevance.** EndpointSlices are watched by the Services the AgentPools name
//!   (`kubernetes.io/service-name in (...)`, see [`Sources::slice_services`]) and by
//!   the labels of `--endpointslice-label` ([`SliceLabel`]), so that the API server
//!   sends only the agents' slices; a pool that names a new Service makes the slice
//!   watchers list again, and nothing is compiled until they have, so the pool never
//!   goes out without its endpoints. Only the slices of referenced Services are kept,
//!   as [`ServiceSlice`]s: the fields the compile step reads and nothing else, shared
//!   with each compile rather than copied (at 100 000 slices of two endpoints, about
//!   1.7 KiB a slice with the compiled table, against 9 KiB kept whole; a slice no
//!   pool references costs nothing). Every list is answered
//!   from the API server's watch cache (`resourceVersion=0`). A change to
//!   an object's status or `resourceVersion` alone schedules a status pass, not a
//!   compile, so the controller's own status writes do not loop.
//! * **Publishing.** The [`Publisher`] publishes a new version only when the table's
//!   content changed. A compile that left objects out still publishes the others; the
//!   left-out objects carry `Accepted=False` (see [`crate::status`]).
//!
//! After each pass the statuses that differ from the objects' current ones are sent,
//! as one [`StatusBatch`], to the [`crate::status_writer::StatusWriter`]. "Current" is
//! what the writer last wrote when the watch lags behind that write
//! ([`Watch::with_last_written`]). AgentPools and RatePolicies are decoded one by one
//! ([`crate::object`]): one that does not decode is left out with `Accepted=False`,
//! and the others compile.
//!
//! **Several replicas.** Every replica keeps its caches warm, compiles and publishes, so
//! each one can serve the push stream. Given a [`Leadership`]
//! ([`Watch::with_leadership`]), a replica sends statuses only while it holds the Lease,
//! and sends the statuses that differ as soon as it becomes the leader, so a new
//! leader catches up with what changed while it was standby.
//!
//! The loop is layered as kube-runtime is (watcher → reflector → scheduler): its
//! [`Sources`] yield events (`sources`), a cache per kind keeps the objects and tells
//! what each event changed (`cache`), a pacer says when the next pass is due
//! (`pacer`), and [`Watch`] runs the passes: compile, publish, statuses. Its metrics
//! are [`WatchMetrics`].
//!
//! [`Event`]: kube::runtime::watcher::Event
//! [`watcher()`]: kube::runtime::watcher()

mod cache;
mod metrics;
mod pacer;
mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use sluice_api::compile::{CONSUMER_LABEL, ServiceSlice, is_upstream_secret, pool_key};
use sluice_api::{AgentPool, Diagnostics, Objects, RatePolicy, RouteTable, Severity, compile};
use std::borrow::Cow;
use tokio::sync::watch as channel;
use tokio::time::Instant;

use self::cache::{Cache, Change, Key};
pub use self::metrics::WatchMetrics;
use self::pacer::Pacer;
use self::sources::Input;
pub use self::sources::{
    CONSUMER_RBAC, EventStream, MAX_SELECTED_SERVICES, RBAC, Scope, Services, SliceLabel,
    SliceLabelError, Sources, UPSTREAM_SECRET_RBAC, erased, kube_sources, services_selector,
    slice_selector,
};
use crate::lease::Leadership;
use crate::object::{Custom, Parsed};
use crate::peers::{self, ProxyRevisions};
use crate::proxies::ProxyRegistry;
use crate::publisher::Publisher;
use crate::rollout::Rollout;
use crate::status::{
    same_status, status_for_policy, status_for_pool, status_for_undecodable_policy,
    status_for_undecodable_pool,
};
use crate::status_writer::{LastWritten, StatusBatch};

/// Default least time between two compiles.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Most events taken in at once before a pass may run, so that a stream that is
/// never empty cannot hold compiles back.
const DRAIN: usize = 1024;

/// Waits for a change on `rx`; whether its sender is still there. Never resolves
/// without a receiver.
async fn changed<T>(rx: Option<&mut channel::Receiver<T>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The last compile run.
struct Compiled {
    table: RouteTable,
    diags: Diagnostics,
}

/// The watch loop: caches, the compile schedule, publishing and status batches.
pub struct Watch {
    pools: Cache<Parsed<AgentPool>>,
    policies: Cache<Parsed<RatePolicy>>,
    slices: Cache<Arc<ServiceSlice>>,
    secrets: Cache<Secret>,
    /// `(namespace, service)` of every Service an AgentPool names.
    referenced: BTreeSet<Key>,
    /// Where the EndpointSlice watchers learn [`Self::referenced`].
    slice_services: Option<channel::Sender<Services>>,
    /// See [`Sources::upstream_secret_namespaces`].
    upstream_secret_namespaces: Option<BTreeSet<String>>,
    publisher: Publisher,
    statuses: Option<channel::Sender<StatusBatch>>,
    written: LastWritten,
    leadership: Option<Leadership>,
    proxies: Option<ProxyRegistry>,
    peer_proxies: Option<channel::Receiver<ProxyRevisions>>,
    rollout: Rollout,
    metrics: WatchMetrics,
    debounce: Duration,
    last: Option<Compiled>,
    sources: Sources,
}

impl Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("sources", &self.sources)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// A loop over `sources` that publishes through `publisher` and compiles at most
    /// once per `debounce`.
    pub fn new(
        mut sources: Sources,
        publisher: Publisher,
        metrics: WatchMetrics,
        debounce: Duration,
    ) -> Self {
        let [pools, policies, slices, secrets] = sources.shards();
        Self {
            pools: Cache::new(pools),
            policies: Cache::new(policies),
            slices: Cache::new(slices),
            secrets: Cache::new(secrets),
            referenced: BTreeSet::new(),
            slice_services: sources.slice_services.take(),
            upstream_secret_namespaces: sources.upstream_secret_namespaces.take(),
            publisher,
            statuses: None,
            written: LastWritten::default(),
            leadership: None,
            proxies: None,
            peer_proxies: None,
            rollout: Rollout::default(),
            metrics,
            debounce,
            last: None,
            sources,
        }
    }

    /// Sends the statuses each pass wants written to `tx` (latest batch wins).
    #[must_use]
    pub fn with_statuses(mut self, tx: channel::Sender<StatusBatch>) -> Self {
        self.statuses = Some(tx);
        self
    }

    /// Computes statuses against what `written` says the status writer last wrote, when
    /// the watch does not show that write yet (see [`LastWritten`]), so that a lagging
    /// watch neither moves a `lastTransitionTime` nor makes a write twice.
    #[must_use]
    pub fn with_last_written(mut self, written: LastWritten) -> Self {
        self.written = written;
        self
    }

    /// Sends statuses only while `leadership` says this replica holds the Lease, and
    /// the statuses that differ whenever it becomes the leader.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Reports in each AgentPool's status how many of the proxies in `registry` run
    /// the pool as it is now, and passes again (no compile) when they change.
    #[must_use]
    pub fn with_proxies(mut self, registry: ProxyRegistry) -> Self {
        self.proxies = Some(registry);
        self
    }

    /// Counts, besides the proxies in the registry of [`Watch::with_proxies`], those
    /// the other replicas track (see [`crate::peers`]), and passes again when they
    /// change.
    #[must_use]
    pub fn with_peer_proxies(mut self, peers: channel::Receiver<ProxyRevisions>) -> Self {
        self.peer_proxies = Some(peers);
        self
    }

    /// Runs until every source ends (in production: never). A change still pending
    /// when the sources end is compiled before returning.
    pub async fn run(mut self) {
        let mut inputs = std::mem::take(&mut self.sources).merge();
        let mut deadline: Option<Instant> = None;
        let mut pacer = Pacer::new(self.debounce);
        let mut pending = Change::None;
        let mut leadership = self.leadership.clone();
        let mut proxy_changes = self.proxies.as_ref().map(ProxyRegistry::changes);
        let mut peer_changes = self.peer_proxies.clone();
        loop {
            // The proxies here or at the peers changed: (still open, which one).
            let counts_changed = async {
                tokio::select! {
                    open = changed(proxy_changes.as_mut()) => (open, false),
                    open = changed(peer_changes.as_mut()) => (open, true),
                }
            };
            let leader_changed = async {
                match leadership.as_mut() {
                    Some(l) => l.changed().await,
                    None => std::future::pending().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.next() => {
                    let Some(input) = input else { break };
                    pending = pending.max(self.apply(input));
                    // Take in what else has arrived, so that one pass sees it all.
                    for _ in 0..DRAIN {
                        match inputs.next().now_or_never() {
                            Some(Some(input)) => pending = pending.max(self.apply(input)),
                            _ => break,
                        }
                    }
                    deadline = pacer.schedule(deadline, pending);
                }
                (open, peers) = counts_changed => {
                    if !open && peers {
                        peer_changes = None;
                    } else if !open {
                        proxy_changes = None;
                    } else if self.statuses.is_some() {
                        pending = pending.max(Change::Status);
                        deadline = pacer.schedule(deadline, pending);
                    }
                }
                leader = leader_changed => {
                    // A new leader writes what changed while it was standby (once the
                    // first pass ran; before, that pass sends everything).
                    if leader && self.last.is_some() {
                        self.send_statuses();
                    }
                }
                () = timer => {
                    deadline = None;
                    // Before the initial sync the flags stay; the `InitDone` that
                    // completes it schedules the first pass.
                    if self.synced() {
                        let compile = pending == Change::Content;
                        self.pass(compile);
                        pacer.passed(compile);
                        pending = Change::None;
                    }
                }
            }
        }
        if pending != Change::None && self.synced() {
            if let Some(d) = deadline {
                tokio::time::sleep_until(d).await;
            }
            self.pass(pending == Change::Content);
        }
    }

    fn synced(&self) -> bool {
        self.pools.synced()
            && self.policies.synced()
            && self.slices.synced()
            && self.secrets.synced()
    }

    fn apply(&mut self, input: Input) -> Change {
        let kind = match &input {
            Input::Pool(..) => "AgentPool",
            Input::Policy(..) => "RatePolicy",
            Input::Slice(..) => "EndpointSlice",
            Input::Secret(..) => "Secret",
        };
        self.metrics.events.with_label_values(&[kind]).inc();
        if input.is_list_start() {
            self.metrics.lists.with_label_values(&[kind]).inc();
        }
        match input {
            Input::Pool(shard, event) => {
                let change = self.pools.apply(shard, parsed(event), |_| true);
                if change == Change::Content {
                    self.referenced_changed(referenced_services(
                        self.pools.iter().filter_map(Parsed::valid),
                    ));
                }
                change
            }
            Input::Policy(shard, event) => self.policies.apply(shard, parsed(event), |_| true),
            Input::Slice(shard, event) => {
                let referenced = &self.referenced;
                let wanted = |s: &Arc<ServiceSlice>| {
                    slice_service(s).is_some_and(|k| referenced.contains(&k))
                };
                // Slices are kept in the form the compile step reads (a
                // `ServiceSlice`); when the watchers list again for each new Service,
                // only those of referenced Services.
                let event = compact(event);
                let event = match event {
                    Event::Apply(s) if self.slice_services.is_some() && !wanted(&s) => {
                        Event::Delete(s)
                    }
                    Event::InitApply(s) if self.slice_services.is_some() && !wanted(&s) => {
                        return Change::None;
                    }
                    event => event,
                };
                self.slices.apply(shard, event, wanted)
            }
            Input::Secret(shard, event) => self.secrets.apply(
                shard,
                event.modify(|s| s.metadata.managed_fields = None),
                |s| {
                    is_upstream_secret(s)
                        || s.metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(CONSUMER_LABEL))
                },
            ),
        }
    }

    /// Records the Services the pools now reference and tells the slice watchers. When
    /// one is new, nothing is compiled until the slice watchers have listed again, so
    /// that a pool is never compiled without the endpoints of its new Service.
    fn referenced_changed(&mut self, referenced: BTreeSet<Key>) {
        if referenced == self.referenced {
            return;
        }
        if let Some(tx) = &self.slice_services {
            if !referenced.is_subset(&self.referenced) {
                self.slices.unsync();
            }
            tx.send_replace(referenced.clone());
        }
        self.referenced = referenced;
    }

    /// The objects the compile step reads: every pool, policy and consumer Secret, and
    /// the slices of referenced Services.
    fn objects(&self) -> Objects {
        Objects {
            pools: self
                .pools
                .iter()
                .filter_map(Parsed::valid)
                .cloned()
                .collect(),
            policies: self
                .policies
                .iter()
                .filter_map(Parsed::valid)
                .cloned()
                .collect(),
            slices: Vec::new(),
            // Shared with the cache, not copied.
            service_slices: self
                .slices
                .iter()
                .filter(|s| slice_service(s).is_some_and(|k| self.referenced.contains(&k)))
                .cloned()
                .collect(),
            // A Secret with both labels is listed by two watchers: once is enough.
            secrets: self
                .secrets
                .iter()
                .map(|s| (cache::key(s), s))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .cloned()
                .collect(),
            upstream_secret_namespaces: self.upstream_secret_namespaces.clone(),
        }
    }

    /// Compiles (when `content` changed or nothing was compiled yet), publishes, and
    /// sends the statuses that differ.
    fn pass(&mut self, content: bool) {
        if content || self.last.is_none() {
            let objects = self.objects();
            let timer = self.metrics.compile_seconds.start_timer();
            let (table, diags) = compile(&objects);
            timer.observe_duration();
            self.metrics.compiles.inc();
            log_new_diagnostics(self.last.as_ref().map(|c| &c.diags), &diags);
            let (pools, routes) = (table.pools.len(), table.routes.len());
            let published = self.publisher.publish(table.clone());
            if published.is_ok() {
                // In force now, newly published or not.
                self.rollout.record(&table);
            }
            match published {
                Ok(Some(version)) => {
                    tracing::info!(version, pools, routes, "route table published")
                }
                Ok(None) => tracing::debug!("objects changed but the table did not"),
                Err(e) => {
                    tracing::error!(error = %e, "compiled table is invalid; keeping the last table")
                }
            }
            self.last = Some(Compiled { table, diags });
        }
        self.send_statuses();
    }

    fn send_statuses(&self) {
        let (Some(tx), Some(last)) = (&self.statuses, &self.last) else {
            return;
        };
        if !self.leadership.as_ref().is_none_or(Leadership::is_leader) {
            return;
        }
        let now = Time(Timestamp::now());
        let proxies = self
            .proxies
            .as_ref()
            .map(|registry| match &self.peer_proxies {
                Some(rx) => peers::merge(registry.acked(), &rx.borrow()),
                None => peers::merge(registry.acked(), &ProxyRevisions::new()),
            });
        let updated = proxies
            .as_ref()
            .map(|(connected, acked)| (*connected, self.rollout.counter(acked)));
        let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
        let mut batch = StatusBatch::default();
        for pool in self.pools.iter() {
            let current = self
                .written
                .current::<AgentPool>(pool.metadata(), pool.status());
            let mut status = match pool {
                Parsed::Valid(p) => status_for_pool(
                    &as_seen(p, current.as_ref()),
                    &last.diags,
                    &last.table,
                    &now,
                ),
                Parsed::Invalid(u) => {
                    status_for_undecodable_pool(&u.metadata, current.as_ref(), &u.error, &now)
                }
            };
            if let Some((connected, updated)) = &updated {
                status.proxies = count(*connected);
                let updated = pool.valid().map_or(0, |p| updated.updated(&pool_key(p)));
                status.updated_proxies = count(updated);
            }
            if !same_status(current.as_ref(), Some(&status)) {
                batch.pools.push((pool.clone(), status));
            }
        }
        for policy in self.policies.iter() {
            let current = self
                .written
                .current::<RatePolicy>(policy.metadata(), policy.status());
            let status = match policy {
                Parsed::Valid(p) => status_for_policy(
                    &as_seen(p, current.as_ref()),
                    &last.diags,
                    &last.table,
                    &now,
                ),
                Parsed::Invalid(u) => {
                    status_for_undecodable_policy(&u.metadata, current.as_ref(), &u.error, &now)
                }
            };
            if !same_status(current.as_ref(), Some(&status)) {
                batch.policies.push((policy.clone(), status));
            }
        }
        self.written
            .retain::<AgentPool>(|k| self.pools.contains(&(k.namespace.clone(), k.name.clone())));
        self.written.retain::<RatePolicy>(|k| {
            self.policies
                .contains(&(k.namespace.clone(), k.name.clone()))
        });
        if !batch.pools.is_empty() || !batch.policies.is_empty() {
            tx.send_replace(batch);
        }
    }
}

/// `event` with its slice in the form the compile step reads: its name, namespace and
/// Service, ports, and endpoints' addresses, conditions and zones; no `managedFields`,
/// annotations, owners, other labels, topology or target references.
fn compact(event: Event<EndpointSlice>) -> Event<Arc<ServiceSlice>> {
    let compact = |s: EndpointSlice| Arc::new(ServiceSlice::from(&s));
    match event {
        Event::Apply(s) => Event::Apply(compact(s)),
        Event::Delete(s) => Event::Delete(compact(s)),
        Event::Init => Event::Init,
        Event::InitApply(s) => Event::InitApply(compact(s)),
        Event::InitDone => Event::InitDone,
    }
}

/// `event` with its object decoded.
fn parsed<K: Custom>(event: Event<DynamicObject>) -> Event<Parsed<K>> {
    match event {
        Event::Apply(o) => Event::Apply(Parsed::parse(o)),
        Event::Delete(o) => Event::Delete(Parsed::parse(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(Parsed::parse(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// `object` with `status` (what was last written, when the watch lags behind it).
fn as_seen<'a, K: Custom>(object: &'a K, status: Option<&K::Status>) -> Cow<'a, K> {
    if object.status() == status {
        return Cow::Borrowed(object);
    }
    let mut seen = object.clone();
    seen.set_status(status.cloned());
    Cow::Owned(seen)
}

/// `(namespace, service)` of the Service an EndpointSlice belongs to.
fn slice_service(slice: &ServiceSlice) -> Option<Key> {
    (!slice.service.is_empty()).then(|| (slice.namespace.to_string(), slice.service.to_string()))
}

fn referenced_services<'a>(pools: impl Iterator<Item = &'a AgentPool>) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for pool in pools {
        let ns = pool.metadata.namespace.as_deref().unwrap_or("default");
        for backend in &pool.spec.backends {
            if let Some(service) = &backend.service {
                out.insert((ns.to_owned(), service.name.clone()));
            }
        }
    }
    out
}

/// Logs the diagnostics that the previous compile did not report, so a standing
/// problem is logged once, not at every compile.
fn log_new_diagnostics(previous: Option<&Diagnostics>, diags: &Diagnostics) {
    for d in diags.iter() {
        if previous.is_some_and(|p| p.0.contains(d)) {
            continue;
        }
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
        }
    }
}
