//! Where watch events come from: kube's watchers in production, one stream per watcher
//! and kind ([`Sources`]), with the label selectors that keep the API server from
//! sending what the controller does not need ([`SliceLabel`], [`slice_selector`]).
//!
//! The first layer of the watch loop, as kube-runtime's `watcher` is: it yields
//! events, and knows nothing of caches or compiles.
//!
//! The EndpointSlice watchers select the slices of the Services the AgentPools name,
//! and nothing else (`kubernetes.io/service-name in (...)`): in a large cluster nearly
//! every slice has a Service, and the controller needs a handful. The watch loop says
//! which Services through [`Sources::slice_services`]; each change of the set starts
//! the slice watchers again with the new selector (a list from the API server's watch
//! cache, `resourceVersion=0`, as every list here is). AgentPools and RatePolicies come as
//! [`DynamicObject`]s, decoded one by one later ([`crate::object`]), so that one object
//! this build cannot decode does not fail the list it is in.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::task::Poll;

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::core::{Expression, Selector};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as kube_watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::compile::{CONSUMER_LABEL, SERVICE_NAME_LABEL, UPSTREAM_LABEL};
use sluice_api::{AgentPool, RatePolicy};
use tokio::sync::watch as channel;

use super::WatchMetrics;

/// A stream of watch events of one kind, from one watcher.
pub type EventStream<K> = BoxStream<'static, Event<K>>;

/// The API calls the watchers make, as RBAC rules `(group, resource, verbs)`: in every
/// watched namespace. kube's watcher lists, then watches; it never gets one object. No
/// Secret: those are read only where [`CONSUMER_RBAC`] and [`UPSTREAM_SECRET_RBAC`] are
/// granted.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("sluice.dev", "agentpools", &["list", "watch"]),
    ("sluice.dev", "ratepolicies", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
];

/// The API calls the consumer Secret watchers make: in each consumer namespace only.
/// Secrets are watched with the label selector `sluice.dev/consumer`, but RBAC cannot
/// restrict by label: the controller may read every Secret of the namespaces it reads
/// consumers from, so those are namespaces that hold consumer Secrets and nothing else
/// of value (`--consumer-namespace`).
pub const CONSUMER_RBAC: &[(&str, &str, &[&str])] = &[("", "secrets", &["list", "watch"])];

/// The API calls the watchers of the Secrets backends name (TLS, credentials; labelled
/// `sluice.dev/upstream`) make: in each namespace of `--upstream-secret-namespace` only,
/// whose pools may name such Secrets (a pool elsewhere that names one is refused, see
/// [`sluice_api::Objects::upstream_secret_namespaces`]). As for consumers, RBAC cannot
/// restrict by label: the controller may read every Secret of these namespaces.
pub const UPSTREAM_SECRET_RBAC: &[(&str, &str, &[&str])] = &[("", "secrets", &["list", "watch"])];

/// Where the production watchers look ([`kube_sources`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// The namespaces of AgentPools, RatePolicies and EndpointSlices; empty: all.
    pub namespaces: &'a [String],
    /// The namespaces of consumer Secrets; empty: those of `namespaces`.
    pub consumer_namespaces: &'a [String],
    /// The namespaces whose pools may name Secrets for their backends, read there
    /// only; empty: those of `namespaces`, and a pool anywhere may.
    pub upstream_secret_namespaces: &'a [String],
    /// The labels the watched EndpointSlices must carry.
    pub slice_labels: &'a [SliceLabel],
}

/// The event streams the controller consumes: one per watcher, so that each watcher's
/// re-list (`Init` … `InitDone`) replaces exactly the objects it listed.
#[derive(Default)]
pub struct Sources {
    /// AgentPool watchers (see [`erased`] to feed typed objects).
    pub pools: Vec<EventStream<DynamicObject>>,
    /// RatePolicy watchers.
    pub policies: Vec<EventStream<DynamicObject>>,
    /// EndpointSlice watchers.
    pub slices: Vec<EventStream<EndpointSlice>>,
    /// Secret watchers: consumer Secrets, then the Secrets backends may name.
    pub secrets: Vec<EventStream<Secret>>,
    /// The namespaces whose pools may name Secrets for their backends, when the
    /// Secret watchers read them there only (see [`Scope::upstream_secret_namespaces`]);
    /// `None`: any namespace.
    pub upstream_secret_namespaces: Option<BTreeSet<String>>,
    /// Where the watch loop publishes the Services the pools reference, when the
    /// EndpointSlice watchers select by them (see the module's documentation); `None`
    /// when the slice streams send what they send (tests, files).
    pub slice_services: Option<channel::Sender<Services>>,
}

/// `(namespace, name)` of Services.
pub type Services = BTreeSet<(String, String)>;

/// Most Service names in one EndpointSlice selector; beyond, the watchers select every
/// slice with a Service (and the watch loop keeps only the referenced ones), so that a
/// request line stays far below the API server's limits.
pub const MAX_SELECTED_SERVICES: usize = 1000;

impl Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("pools", &self.pools.len())
            .field("policies", &self.policies.len())
            .field("slices", &self.slices.len())
            .field("secrets", &self.secrets.len())
            .field("slice_services", &self.slice_services.is_some())
            .field(
                "upstream_secret_namespaces",
                &self.upstream_secret_namespaces,
            )
            .finish()
    }
}

/// One event, tagged with its kind and the watcher it came from.
// Each event is moved once from its stream into a cache; boxing would add an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Input {
    Pool(usize, Event<DynamicObject>),
    Policy(usize, Event<DynamicObject>),
    Slice(usize, Event<EndpointSlice>),
    Secret(usize, Event<Secret>),
}

impl Input {
    /// Whether this is the start of a (re-)list.
    pub(super) fn is_list_start(&self) -> bool {
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
    /// How many watchers of each kind: pools, policies, slices, secrets.
    pub(super) fn shards(&self) -> [usize; 4] {
        [
            self.pools.len(),
            self.policies.len(),
            self.slices.len(),
            self.secrets.len(),
        ]
    }

    /// Every watcher's events in one stream, each tagged with its kind and watcher.
    pub(super) fn merge(self) -> BoxStream<'static, Input> {
        debug_assert!(self.slice_services.is_none(), "taken by the watch loop");
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
    selector(Expression::Exists(SERVICE_NAME_LABEL.to_owned()), extra)
}

fn selector(service: Expression, extra: &[SliceLabel]) -> Selector {
    std::iter::once(service)
        .chain(extra.iter().map(|l| match &l.value {
            Some(v) => Expression::Equal(l.key.clone(), v.clone()),
            None => Expression::Exists(l.key.clone()),
        }))
        .collect()
}

/// The selector of the EndpointSlices of `services` with `extra`; `None` when there are
/// none.
pub fn services_selector(services: &BTreeSet<String>, extra: &[SliceLabel]) -> Option<Selector> {
    match services.len() {
        0 => None,
        n if n > MAX_SELECTED_SERVICES => Some(slice_selector(extra)),
        _ => Some(selector(
            Expression::In(SERVICE_NAME_LABEL.to_owned(), services.clone()),
            extra,
        )),
    }
}

/// Builds the production [`Sources`] of `scope`: kube watchers (with kube's default
/// backoff) over every namespace when `scope.namespaces` is empty, else one per kind and
/// namespace; the EndpointSlice watchers select the slices of the Services the pools
/// reference and `scope.slice_labels`; consumer Secrets are watched in
/// `scope.consumer_namespaces` and the Secrets backends name in
/// `scope.upstream_secret_namespaces`, each where the rest is when it is empty.
/// Watch errors are logged and counted; the watcher retries on its own.
pub fn kube_sources<'a>(client: &Client, scope: &Scope<'a>, metrics: &WatchMetrics) -> Sources {
    let namespaces = scope.namespaces;
    let or_watched = |given: &'a [String]| {
        if given.is_empty() { namespaces } else { given }
    };
    let consumer_namespaces = or_watched(scope.consumer_namespaces);
    let upstream_namespaces = or_watched(scope.upstream_secret_namespaces);
    let all = cache_read();
    let (services, rx) = channel::channel(Services::new());
    let slices = if namespaces.is_empty() {
        vec![slice_stream(
            Api::all(client.clone()),
            None,
            scope.slice_labels,
            rx,
            metrics,
        )]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                slice_stream(
                    Api::namespaced(client.clone(), ns),
                    Some(ns.clone()),
                    scope.slice_labels,
                    rx.clone(),
                    metrics,
                )
            })
            .collect()
    };
    Sources {
        pools: dynamic_streams::<AgentPool>(client, namespaces, &all, metrics),
        policies: dynamic_streams::<RatePolicy>(client, namespaces, &all, metrics),
        slices,
        secrets: [
            (consumer_namespaces, CONSUMER_LABEL),
            (upstream_namespaces, UPSTREAM_LABEL),
        ]
        .into_iter()
        .flat_map(|(namespaces, label)| {
            streams(
                client,
                namespaces,
                &all.clone().labels(label),
                metrics,
                "Secret",
            )
        })
        .collect(),
        upstream_secret_namespaces: (!scope.upstream_secret_namespaces.is_empty())
            .then(|| scope.upstream_secret_namespaces.iter().cloned().collect()),
        slice_services: Some(services),
    }
}

/// A watcher whose lists the API server answers from its watch cache
/// (`resourceVersion=0`), as client-go's informers do, not with a consistent read from
/// etcd. kube sends `resourceVersion=0` only on an unpaged list: the watch cache
/// answers in one piece anyway (it ignores `limit` before Kubernetes 1.31).
fn cache_read() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

/// The EndpointSlices of `api` (namespace `namespace`, or all) whose Services are in
/// the latest set on `services`: a kube watcher per set, started again (so listing
/// again) whenever it changes.
/// No Service: an empty list, and no watcher.
fn slice_stream(
    api: Api<EndpointSlice>,
    namespace: Option<String>,
    extra: &[SliceLabel],
    services: channel::Receiver<Services>,
    metrics: &WatchMetrics,
) -> EventStream<EndpointSlice> {
    let extra = extra.to_vec();
    let metrics = metrics.clone();
    let initial = services.borrow().clone();
    let mut sets = stream::once(std::future::ready(initial))
        .chain(stream::unfold(services, |mut rx| async move {
            rx.changed().await.ok()?;
            let set = rx.borrow_and_update().clone();
            Some((set, rx))
        }))
        .fuse()
        .boxed();
    let mut current: Option<EventStream<EndpointSlice>> = None;
    stream::poll_fn(move |cx| {
        // Switch to the newest set first: what follows comes from its watcher.
        while let Poll::Ready(Some(set)) = sets.poll_next_unpin(cx) {
            let wanted: BTreeSet<String> = set
                .into_iter()
                .filter(|(ns, _)| namespace.as_ref().is_none_or(|n| n == ns))
                .map(|(_, name)| name)
                // A name no Service can have (the compile step says so) has no slices,
                // and would make the API server refuse the selector.
                .filter(|name| valid_label_value(name) && !name.is_empty())
                .collect();
            // Started again even when the names here stay: the watch loop waits for a
            // new list from every slice watcher, and keeps only the slices of the
            // Services it references (a name may be new in another namespace).
            current = Some(match services_selector(&wanted, &extra) {
                Some(selector) => {
                    let config = cache_read().labels_from(&selector);
                    retried(kube_watcher(api.clone(), config), &metrics, "EndpointSlice")
                }
                // Nothing to list: the end of an empty list (no `Init`: no list
                // was made, and none is counted).
                None => stream::iter([Event::InitDone])
                    .chain(stream::pending())
                    .boxed(),
            });
        }
        match current.as_mut() {
            Some(events) => events.poll_next_unpin(cx),
            None => Poll::Pending,
        }
    })
    .boxed()
}

/// One stream per namespace (or one over all) of `K` objects as [`DynamicObject`]s.
fn dynamic_streams<K: Resource<DynamicType = ()>>(
    client: &Client,
    namespaces: &[String],
    config: &watcher::Config,
    metrics: &WatchMetrics,
) -> Vec<EventStream<DynamicObject>> {
    let resource = ApiResource::erase::<K>(&());
    let apis: Vec<Api<DynamicObject>> = if namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &resource)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &resource))
            .collect()
    };
    let kind: &'static str = match resource.kind.as_str() {
        "AgentPool" => "AgentPool",
        "RatePolicy" => "RatePolicy",
        _ => "object",
    };
    apis.into_iter()
        .map(|api| retried(kube_watcher(api, config.clone()), metrics, kind))
        .collect()
}

/// `stream` with its errors logged and counted (the watcher retries on its own, with
/// kube's default backoff).
fn retried<K: Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    metrics: &WatchMetrics,
    kind: &'static str,
) -> EventStream<K> {
    let errors = metrics.watch_errors.with_label_values(&[kind]);
    stream
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
}

/// A stream of typed objects as the [`DynamicObject`]s the API server would send: to
/// feed [`Sources::pools`] and [`Sources::policies`] from typed objects (tests, files).
pub fn erased<K>(stream: EventStream<K>) -> EventStream<DynamicObject>
where
    K: Resource<DynamicType = ()> + Serialize + Send + 'static,
{
    stream
        .map(|event| match event {
            Event::Apply(o) => Event::Apply(crate::object::erase(&o)),
            Event::Delete(o) => Event::Delete(crate::object::erase(&o)),
            Event::Init => Event::Init,
            Event::InitApply(o) => Event::InitApply(crate::object::erase(&o)),
            Event::InitDone => Event::InitDone,
        })
        .boxed()
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
        .map(|api| retried(kube_watcher(api, config.clone()), metrics, kind))
        .collect()
}
