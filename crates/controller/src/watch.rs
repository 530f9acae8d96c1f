//! `sluice controller` on Kubernetes: watch the objects, compile, publish, write status.
//!
//! The core, [`Watch`], consumes streams of [`watcher::Event`]s: in production from
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
//! * **Relevance.** EndpointSlices are watched by the label
//!   `kubernetes.io/service-name`, and by the labels of `--endpointslice-label`
//!   ([`SliceLabel`]) so that the API server sends only the agents' slices; a change
//!   to the slices of a Service that no AgentPool names schedules nothing and never
//!   reaches the compile step. A change to
//!   an object's status or `resourceVersion` alone schedules a status pass, not a
//!   compile, so the controller's own status writes do not loop.
//! * **Publishing.** The [`Publisher`] publishes a new version only when the table's
//!   content changed. A compile that left objects out still publishes the others; the
//!   left-out objects carry `Accepted=False` (see [`crate::status`]).
//!
//! After each pass the statuses that differ from the objects' current ones are sent,
//! as one [`StatusBatch`], to the [`crate::status_writer::StatusWriter`].
//!
//! **Several replicas.** Every replica keeps its caches warm, compiles and publishes, so
//! each one can serve the push stream. Given a [`Leadership`]
//! ([`Watch::with_leadership`]), a replica sends statuses only while it holds the Lease,
//! and sends the statuses that differ as soon as it becomes the leader, so a new
//! leader catches up with what changed while it was standby.
//!
//! [`watcher()`]: kube::runtime::watcher()

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::{Expression, Selector};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as kube_watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use serde::de::DeserializeOwned;
use sluice_api::compile::{CONSUMER_LABEL, SERVICE_NAME_LABEL, pool_key};
use sluice_api::{AgentPool, Diagnostics, Objects, RatePolicy, RouteTable, Severity, compile};
use tokio::sync::watch as channel;
use tokio::time::Instant;

use crate::lease::Leadership;
use crate::peers::{self, ProxyRevisions};
use crate::proxies::ProxyRegistry;
use crate::publisher::Publisher;
use crate::rollout::Rollout;
use crate::status::{same_apart_from_transition_time, status_for_policy, status_for_pool};
use crate::status_writer::StatusBatch;

/// A stream of watch events of one kind, from one watcher.
pub type EventStream<K> = BoxStream<'static, Event<K>>;

/// The API calls the watchers make, as RBAC rules `(group, resource, verbs)`: in every
/// watched namespace. kube's watcher lists, then watches; it never gets one object.
/// Secrets are watched with the label selector `sluice.dev/consumer`, but RBAC cannot
/// restrict by label: the controller may read every Secret of the namespaces it watches.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("sluice.dev", "agentpools", &["list", "watch"]),
    ("sluice.dev", "ratepolicies", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "secrets", &["list", "watch"]),
];

/// Default least time between two compiles.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Most events taken in at once before a pass may run, so that a stream that is
/// never empty cannot hold compiles back.
const DRAIN: usize = 1024;

/// The event streams the controller consumes: one per watcher, so that each watcher's
/// re-list (`Init` … `InitDone`) replaces exactly the objects it listed.
#[derive(Default)]
pub struct Sources {
    /// AgentPool watchers.
    pub pools: Vec<EventStream<AgentPool>>,
    /// RatePolicy watchers.
    pub policies: Vec<EventStream<RatePolicy>>,
    /// EndpointSlice watchers.
    pub slices: Vec<EventStream<EndpointSlice>>,
    /// Consumer Secret watchers.
    pub secrets: Vec<EventStream<Secret>>,
}

impl Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("pools", &self.pools.len())
            .field("policies", &self.policies.len())
            .field("slices", &self.slices.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// One event, tagged with its kind and the watcher it came from.
// Each event is moved once from its stream into a cache; boxing would add an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
enum Input {
    Pool(usize, Event<AgentPool>),
    Policy(usize, Event<RatePolicy>),
    Slice(usize, Event<EndpointSlice>),
    Secret(usize, Event<Secret>),
}

impl Input {
    /// Whether this is the start of a (re-)list.
    fn is_list_start(&self) -> bool {
        matches!(
            self,
            Self::Pool(_, Event::Init)
                | Self::Policy(_, Event::Init)
                | Self::Slice(_, Event::Init)
                | Self::Secret(_, Event::Init)
        )
    }
}

impl Sources {
    fn shards(&self) -> [usize; 4] {
        [
            self.pools.len(),
            self.policies.len(),
            self.slices.len(),
            self.secrets.len(),
        ]
    }

    fn merge(self) -> BoxStream<'static, Input> {
        let mut all: Vec<BoxStream<'static, Input>> = Vec::new();
        for (i, s) in self.pools.into_iter().enumerate() {
            all.push(s.map(move |e| Input::Pool(i, e)).boxed());
        }
        for (i, s) in self.policies.into_iter().enumerate() {
            all.push(s.map(move |e| Input::Policy(i, e)).boxed());
        }
        for (i, s) in self.slices.into_iter().enumerate() {
            all.push(s.map(move |e| Input::Slice(i, e)).boxed());
        }
        for (i, s) in self.secrets.into_iter().enumerate() {
            all.push(s.map(move |e| Input::Secret(i, e)).boxed());
        }
        stream::select_all(all).boxed()
    }
}

/// A label an EndpointSlice must carry to be watched, besides
/// `kubernetes.io/service-name`: `key` (present) or `key=value`. Kubernetes copies a
/// Service's labels to its EndpointSlices, so labelling the agents' Services (say
/// `sluice.dev/agent=true`) keeps the controller from caching every slice of the
/// cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceLabel {
    key: String,
    value: Option<String>,
}

/// Why a `--endpointslice-label` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a label requirement: expected KEY or KEY=VALUE with a Kubernetes label key and value"
)]
pub struct SliceLabelError(String);

impl std::str::FromStr for SliceLabel {
    type Err = SliceLabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        if !valid_label_key(key) || !value.is_none_or(valid_label_value) {
            return Err(SliceLabelError(s.to_owned()));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }
}

/// A label name or value: at most 63 characters, alphanumeric at both ends, `-`, `_`,
/// `.` between.
fn valid_label_value(v: &str) -> bool {
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    v.len() <= 63
        && edge(v.chars().next())
        && edge(v.chars().last())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty name.
fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let subdomain = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && !part.starts_with('-')
                    && !part.ends_with('-')
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    };
    !name.is_empty() && valid_label_value(name) && prefix.is_none_or(subdomain)
}

/// The label selector of the EndpointSlice watchers: `kubernetes.io/service-name` and
/// every one of `extra`.
pub fn slice_selector(extra: &[SliceLabel]) -> Selector {
    std::iter::once(Expression::Exists(SERVICE_NAME_LABEL.to_owned()))
        .chain(extra.iter().map(|l| match &l.value {
            Some(v) => Expression::Equal(l.key.clone(), v.clone()),
            None => Expression::Exists(l.key.clone()),
        }))
        .collect()
}

/// Builds the production [`Sources`]: kube watchers (with kube's default backoff) over
/// every namespace when `namespaces` is empty, else one per kind and namespace; the
/// EndpointSlice watchers select [`slice_selector`]`(slice_labels)`.
/// Watch errors are logged and counted; the watcher retries on its own.
pub fn kube_sources(
    client: &Client,
    namespaces: &[String],
    slice_labels: &[SliceLabel],
    metrics: &WatchMetrics,
) -> Sources {
    let all = watcher::Config::default();
    Sources {
        pools: streams(client, namespaces, &all, metrics, "AgentPool"),
        policies: streams(client, namespaces, &all, metrics, "RatePolicy"),
        slices: streams(
            client,
            namespaces,
            &watcher::Config::default().labels_from(&slice_selector(slice_labels)),
            metrics,
            "EndpointSlice",
        ),
        secrets: streams(
            client,
            namespaces,
            &watcher::Config::default().labels(CONSUMER_LABEL),
            metrics,
            "Secret",
        ),
    }
}

fn streams<K>(
    client: &Client,
    namespaces: &[String],
    config: &watcher::Config,
    metrics: &WatchMetrics,
    kind: &'static str,
) -> Vec<EventStream<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    apis.into_iter()
        .map(|api| {
            let errors = metrics.watch_errors.with_label_values(&[kind]);
            kube_watcher(api, config.clone())
                .default_backoff()
                .filter_map(move |result| {
                    let event = match result {
                        Ok(event) => Some(event),
                        Err(e) => {
                            errors.inc();
                            tracing::warn!(kind, error = %e, "watch failed; retrying");
                            None
                        }
                    };
                    std::future::ready(event)
                })
                .boxed()
        })
        .collect()
}

/// Metrics of the watch loop.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    /// Compile runs.
    pub compiles: IntCounter,
    compile_seconds: Histogram,
    events: IntCounterVec,
    watch_errors: IntCounterVec,
    lists: IntCounterVec,
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
                 watch could not resume (a restart)",
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
}

/// What an event changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// Nothing the controller reads.
    None,
    /// Only the status of a custom resource: a status pass, no compile.
    Status,
    /// Something the compile step reads.
    Content,
}

/// The parts of an object the controller compares to tell what changed.
trait Content {
    /// Whether the compile step would see the same object.
    fn same_content(&self, other: &Self) -> bool;
    /// Whether the status is the same.
    fn same_status(&self, _other: &Self) -> bool {
        true
    }
}

impl Content for AgentPool {
    fn same_content(&self, other: &Self) -> bool {
        self.spec == other.spec && self.metadata.generation == other.metadata.generation
    }
    fn same_status(&self, other: &Self) -> bool {
        self.status == other.status
    }
}

impl Content for RatePolicy {
    fn same_content(&self, other: &Self) -> bool {
        self.spec == other.spec && self.metadata.generation == other.metadata.generation
    }
    fn same_status(&self, other: &Self) -> bool {
        self.status == other.status
    }
}

impl Content for EndpointSlice {
    fn same_content(&self, other: &Self) -> bool {
        self.endpoints == other.endpoints
            && self.ports == other.ports
            && self.address_type == other.address_type
            && self.metadata.labels == other.metadata.labels
    }
}

impl Content for Secret {
    fn same_content(&self, other: &Self) -> bool {
        self.data == other.data
            && self.string_data == other.string_data
            && self.metadata.labels == other.metadata.labels
    }
}

type Key = (String, String);

fn key<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The objects of one watcher.
struct Shard<K> {
    objects: BTreeMap<Key, K>,
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<Key, K>>,
    synced: bool,
}

/// The objects of one kind, one shard per watcher.
struct Cache<K> {
    shards: Vec<Shard<K>>,
}

impl<K: Content + ResourceExt> Cache<K> {
    fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    objects: BTreeMap::new(),
                    listing: None,
                    synced: false,
                })
                .collect(),
        }
    }

    /// Every watcher has listed its objects at least once.
    fn synced(&self) -> bool {
        self.shards.iter().all(|s| s.synced)
    }

    fn iter(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(|s| s.objects.values())
    }

    /// Applies `event` from watcher `shard`. Changes to objects for which `relevant`
    /// is false (before and after) count as no change.
    fn apply(&mut self, shard: usize, event: Event<K>, relevant: impl Fn(&K) -> bool) -> Change {
        let Some(s) = self.shards.get_mut(shard) else {
            return Change::None;
        };
        let between = |old: Option<&K>, new: Option<&K>| {
            if !old.is_some_and(&relevant) && !new.is_some_and(&relevant) {
                return Change::None;
            }
            match (old, new) {
                (Some(a), Some(b)) if !a.same_content(b) => Change::Content,
                (Some(a), Some(b)) if !a.same_status(b) => Change::Status,
                (Some(_), Some(_)) | (None, None) => Change::None,
                _ => Change::Content,
            }
        };
        match event {
            Event::Apply(obj) => {
                let k = key(&obj);
                let change = between(s.objects.get(&k), Some(&obj));
                s.objects.insert(k, obj);
                change
            }
            Event::Delete(obj) => {
                let k = key(&obj);
                let old = s.objects.remove(&k);
                between(old.as_ref(), None)
            }
            Event::Init => {
                s.listing = Some(BTreeMap::new());
                Change::None
            }
            Event::InitApply(obj) => {
                s.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&obj), obj);
                Change::None
            }
            Event::InitDone => {
                let listed = s.listing.take().unwrap_or_default();
                let mut change = if s.synced {
                    Change::None
                } else {
                    Change::Content
                };
                s.synced = true;
                for (k, old) in &s.objects {
                    change = change.max(between(Some(old), listed.get(k)));
                }
                for (k, new) in &listed {
                    if !s.objects.contains_key(k) {
                        change = change.max(between(None, Some(new)));
                    }
                }
                s.objects = listed;
                change
            }
        }
    }
}

/// Waits for a change on `rx`; whether its sender is still there. Never resolves
/// without a receiver.
async fn changed<T>(rx: Option<&mut channel::Receiver<T>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// When passes run: compiles at least `debounce` apart, and status-only passes (a
/// proxy acknowledged, a status was written back) at least `debounce` after any
/// pass. A status pass does not hold the next compile back, so an endpoint change
/// that follows acknowledgements is compiled at once.
struct Pacer {
    debounce: Duration,
    last_compile: Option<Instant>,
    last_pass: Option<Instant>,
}

impl Pacer {
    fn new(debounce: Duration) -> Self {
        Self {
            debounce,
            last_compile: None,
            last_pass: None,
        }
    }

    /// The deadline of the next pass, given the one already set and what is pending.
    fn schedule(&self, deadline: Option<Instant>, pending: Change) -> Option<Instant> {
        let since = match pending {
            Change::None => return deadline,
            Change::Status => self.last_pass,
            Change::Content => self.last_compile,
        };
        let now = Instant::now();
        let due = since.map_or(now, |t| t + self.debounce).max(now);
        Some(deadline.map_or(due, |d| d.min(due)))
    }

    fn passed(&mut self, compiled: bool) {
        let now = Instant::now();
        self.last_pass = Some(now);
        if compiled {
            self.last_compile = Some(now);
        }
    }
}

/// The last compile run.
struct Compiled {
    table: RouteTable,
    diags: Diagnostics,
}

/// The watch loop: caches, the compile schedule, publishing and status batches.
pub struct Watch {
    pools: Cache<AgentPool>,
    policies: Cache<RatePolicy>,
    slices: Cache<EndpointSlice>,
    secrets: Cache<Secret>,
    /// `(namespace, service)` of every Service an AgentPool names.
    referenced: BTreeSet<Key>,
    publisher: Publisher,
    statuses: Option<channel::Sender<StatusBatch>>,
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
        sources: Sources,
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
            publisher,
            statuses: None,
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
                let change = self.pools.apply(shard, event, |_| true);
                if change == Change::Content {
                    self.referenced = referenced_services(self.pools.iter());
                }
                change
            }
            Input::Policy(shard, event) => self.policies.apply(shard, event, |_| true),
            Input::Slice(shard, event) => {
                let referenced = &self.referenced;
                self.slices.apply(shard, event, |s| {
                    slice_service(s).is_some_and(|k| referenced.contains(&k))
                })
            }
            Input::Secret(shard, event) => self.secrets.apply(shard, event, |s| {
                s.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(CONSUMER_LABEL))
            }),
        }
    }

    /// The objects the compile step reads: every pool, policy and consumer Secret, and
    /// the slices of referenced Services.
    fn objects(&self) -> Objects {
        Objects {
            pools: self.pools.iter().cloned().collect(),
            policies: self.policies.iter().cloned().collect(),
            slices: self
                .slices
                .iter()
                .filter(|s| slice_service(s).is_some_and(|k| self.referenced.contains(&k)))
                .cloned()
                .collect(),
            secrets: self.secrets.iter().cloned().collect(),
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
            let mut status = status_for_pool(pool, &last.diags, &last.table, &now);
            if let Some((connected, updated)) = &updated {
                status.proxies = count(*connected);
                status.updated_proxies = count(updated.updated(&pool_key(pool)));
            }
            if !same_apart_from_transition_time(pool.status.as_ref(), Some(&status)) {
                batch.pools.push((pool.clone(), status));
            }
        }
        for policy in self.policies.iter() {
            let status = status_for_policy(policy, &last.diags, &last.table, &now);
            if !same_apart_from_transition_time(policy.status.as_ref(), Some(&status)) {
                batch.policies.push((policy.clone(), status));
            }
        }
        if !batch.pools.is_empty() || !batch.policies.is_empty() {
            tx.send_replace(batch);
        }
    }
}

/// `(namespace, service)` of the Service an EndpointSlice belongs to.
fn slice_service(slice: &EndpointSlice) -> Option<Key> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        service.clone(),
    ))
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
