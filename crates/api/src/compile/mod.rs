//! The pure compile step: custom resources, EndpointSlices and consumer Secrets in, a
//! [`RouteTable`] and [`Diagnostics`] out.
//!
//! Each object is compiled on its own. One that is invalid is left out of the table
//! with an error naming the field; the others compile. References between objects (a
//! fallback pool, a policy's target, a consumer's pools) that do not resolve are
//! warnings: the reference is dropped, the object stays.

mod bounds;
mod consumer;
mod gate;
mod policy;
mod pool;
mod route;
mod slices;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::diagnostics::{Diagnostic, Diagnostics, ObjectRef, Severity};
use crate::table::{ModelMatch, Pool, Route, RouteTable};
use crate::{AgentPool, RatePolicy};

pub use consumer::{CONSUMER_LABEL, hash_api_key};
pub use slices::{SERVICE_NAME_LABEL, ServiceSlice, SliceEndpoint, SlicePort};
pub use upstream::{UPSTREAM_LABEL, is_upstream_secret};

/// Connect timeout when a pool does not set one.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Whole-request timeout when a pool does not set one.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 300_000;

/// Everything the compile step reads.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// AgentPools from all watched namespaces.
    pub pools: Vec<AgentPool>,
    /// RatePolicies from all watched namespaces.
    pub policies: Vec<RatePolicy>,
    /// EndpointSlices of the Services pools refer to (others are ignored).
    pub slices: Vec<EndpointSlice>,
    /// More EndpointSlices, already in the form the compile step reads (the
    /// controller's cache, shared rather than copied for each compile).
    pub service_slices: Vec<Arc<ServiceSlice>>,
    /// Secrets labelled `sluice.dev/consumer` or `sluice.dev/upstream` (others are
    /// ignored). One Secret with both labels is listed once.
    pub secrets: Vec<Secret>,
    /// The namespaces whose pools may name Secrets labelled `sluice.dev/upstream`
    /// (the controller's `--upstream-secret-namespace`, where it reads them): a pool of
    /// another namespace that names one is refused with an error on the field. `None`:
    /// every namespace (files, `sluice compile`).
    pub upstream_secret_namespaces: Option<BTreeSet<String>>,
}

/// Compiles `objects` into a table (version 0; the publisher stamps the version).
///
/// Deterministic: the same objects in any order give the same table and diagnostics.
pub fn compile(objects: &Objects) -> (RouteTable, Diagnostics) {
    let mut diags = Vec::new();
    let converted: Vec<ServiceSlice> = objects.slices.iter().map(ServiceSlice::from).collect();
    let refs = pool::Refs {
        slices: slices::SliceIndex::new(
            converted
                .iter()
                .chain(objects.service_slices.iter().map(|s| &**s)),
        ),
        secrets: upstream::SecretIndex::new(
            &objects.secrets,
            objects.upstream_secret_namespaces.as_ref(),
        ),
    };

    let mut sorted: Vec<(String, &AgentPool)> =
        objects.pools.iter().map(|p| (pool_key(p), p)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut pools: Vec<Compiled<'_>> = Vec::new();
    for (i, (key, pool)) in sorted.iter().enumerate() {
        let mut cx = Cx::new(
            "AgentPool",
            pool.metadata.namespace.as_deref(),
            pool.metadata.name.as_deref(),
        );
        let same_as_previous = i > 0 && sorted[i - 1].0 == *key;
        let same_as_next = sorted.get(i + 1).is_some_and(|(k, _)| k == key);
        if same_as_previous || same_as_next {
            // Only files can hold two objects with one name; which copy came first is
            // an accident of reading order, so neither is used.
            if !same_as_previous {
                let copies = sorted[i..].iter().take_while(|(k, _)| k == key).count();
                cx.error(
                    "metadata.name",
                    format!(
                        "this AgentPool is defined {copies} times; none of the definitions is used"
                    ),
                );
            }
        } else if let Some((compiled, routes)) = pool::compile_pool(pool, key, &refs, &mut cx) {
            pools.push(Compiled {
                pool: compiled,
                routes,
                source: pool,
            });
        }
        diags.extend(cx.diags);
    }

    resolve_fallbacks(&mut pools, &mut diags);

    let pool_keys: BTreeSet<&str> = pools.iter().map(|c| c.pool.key.as_str()).collect();
    let access: BTreeMap<&str, &crate::table::Access> = pools
        .iter()
        .map(|c| (c.pool.key.as_str(), &c.pool.access))
        .collect();
    let consumers = consumer::compile_consumers(&objects.secrets, &access, &mut diags);
    let consumer_names: BTreeSet<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
    for Compiled { source, .. } in &pools {
        let namespace = source.metadata.namespace.as_deref().unwrap_or("default");
        let listed = source.spec.access.iter().flat_map(|a| a.consumers.iter());
        for (i, name) in listed.enumerate() {
            let known = pool::qualify_consumer(name, namespace)
                .is_some_and(|q| consumer_names.contains(q.as_str()));
            if !known {
                let mut cx = Cx::for_pool(source);
                cx.warning(
                    &format!("spec.access.consumers[{i}]"),
                    format!("no consumer Secret names {name:?}; it cannot call until one does"),
                );
                diags.extend(cx.diags);
            }
        }
    }
    let policies = policy::compile_policies(&objects.policies, &pool_keys, &mut diags);

    let mut routes = Vec::new();
    let mut sources = Vec::new();
    let mut compiled = Vec::new();
    for Compiled {
        pool,
        routes: pool_routes,
        source,
    } in pools
    {
        routes.extend(pool_routes);
        sources.push(source);
        compiled.push(pool);
    }
    // Precedence: host-specific before any host, longer prefixes first, more header
    // conditions first, then a model match (an exact name before a prefix, a longer
    // prefix first) before none, a method before none; the pool key breaks ties so the
    // order is deterministic.
    routes.sort_by(|(a, ai): &(Route, usize), (b, bi)| {
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
            .then(b.headers.len().cmp(&a.headers.len()))
            .then(model_rank(b).cmp(&model_rank(a)))
            .then(b.method.is_some().cmp(&a.method.is_some()))
            .then(a.pool.cmp(&b.pool))
            .then(ai.cmp(bi))
    });
    report_shadowed(&routes, &sources, &mut diags);
    let routes = routes.into_iter().map(|(r, _)| r).collect();

    diags.sort_by(|a, b| a.object.cmp(&b.object).then(a.field.cmp(&b.field)));
    let table = RouteTable::with_policies(routes, compiled, policies, consumers);
    (table, Diagnostics(diags))
}

/// The key of an AgentPool in the route table: `namespace/name`.
pub fn pool_key(pool: &AgentPool) -> String {
    format!(
        "{}/{}",
        pool.metadata.namespace.as_deref().unwrap_or("default"),
        pool.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A pool that compiled, its routes (with the index of the match each came from) and
/// the object it came from.
struct Compiled<'a> {
    pool: Pool,
    routes: Vec<(Route, usize)>,
    source: &'a AgentPool,
}

/// Collects the diagnostics of one object.
pub(crate) struct Cx {
    object: ObjectRef,
    pub(crate) diags: Vec<Diagnostic>,
}

impl Cx {
    pub(crate) fn new(kind: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        Self {
            object: ObjectRef::new(
                kind,
                namespace.unwrap_or("default"),
                name.unwrap_or("<unnamed>"),
            ),
            diags: Vec::new(),
        }
    }

    fn for_pool(pool: &AgentPool) -> Self {
        Self::new(
            "AgentPool",
            pool.metadata.namespace.as_deref(),
            pool.metadata.name.as_deref(),
        )
    }

    fn push(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            object: self.object.clone(),
            field: field.to_owned(),
            message: message.into(),
            severity,
        });
    }

    pub(crate) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    pub(crate) fn warning(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Checks fallback references: a loop is an error on every pool in it (they are left
/// out); a fallback to a pool that is not in the table is dropped with a warning.
fn resolve_fallbacks(pools: &mut Vec<Compiled<'_>>, diags: &mut Vec<Diagnostic>) {
    let edges: BTreeMap<String, String> = pools
        .iter()
        .filter_map(|c| c.pool.fallback.clone().map(|f| (c.pool.key.clone(), f)))
        .collect();
    let mut in_loop = BTreeMap::new();
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        let mut at = start;
        while let Some(next) = edges.get(at) {
            if let Some(pos) = path.iter().position(|k| k == next) {
                if pos == 0 {
                    let mut cycle = path.clone();
                    cycle.push(next.clone());
                    in_loop.insert(start.clone(), cycle.join(" → "));
                }
                break;
            }
            path.push(next.clone());
            at = next;
        }
    }
    pools.retain(
        |Compiled {
             pool: p, source, ..
         }| match in_loop.get(&p.key) {
            Some(cycle) => {
                let mut cx = Cx::for_pool(source);
                cx.error("spec.fallback.name", format!("fallback loop: {cycle}"));
                diags.extend(cx.diags);
                false
            }
            None => true,
        },
    );
    let keys: BTreeSet<String> = pools.iter().map(|c| c.pool.key.clone()).collect();
    for Compiled { pool, source, .. } in pools.iter_mut() {
        if let Some(fallback) = &pool.fallback
            && !keys.contains(fallback)
        {
            let mut cx = Cx::for_pool(source);
            cx.warning(
                "spec.fallback.name",
                format!("AgentPool {fallback} is not in the table (missing or invalid); this pool has no fallback"),
            );
            diags.extend(cx.diags);
            pool.fallback = None;
            pool.fallback_when.clear();
            pool.fallback_statuses.clear();
        }
    }
}

/// Warns about a match that an earlier route with the same conditions always wins.
/// How specific a route's model condition is: an exact name, then prefixes by
/// length, then none.
fn model_rank(route: &Route) -> (bool, usize) {
    match &route.model {
        Some(ModelMatch::Exact(_)) => (true, usize::MAX),
        Some(ModelMatch::Prefix(p)) => (true, p.len()),
        None => (false, 0),
    }
}

fn report_shadowed(routes: &[(Route, usize)], pools: &[&AgentPool], diags: &mut Vec<Diagnostic>) {
    for (i, (route, match_index)) in routes.iter().enumerate() {
        let winner = routes[..i].iter().find(|(r, _)| {
            r.host == route.host
                && r.path_prefix == route.path_prefix
                && r.headers == route.headers
                && r.method == route.method
                && r.model == route.model
        });
        let Some((winner, _)) = winner else { continue };
        if winner.pool == route.pool {
            continue;
        }
        let Some(pool) = pools.iter().find(|p| pool_key(p) == route.pool) else {
            continue;
        };
        let mut cx = Cx::for_pool(pool);
        cx.warning(
            &format!("spec.matches[{match_index}]"),
            format!(
                "the same match is served by AgentPool {}, which takes precedence",
                winner.pool
            ),
        );
        diags.extend(cx.diags);
    }
}

pub(crate) use crate::table::rules::is_name;

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: crate::Duration) -> u64 {
    u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)
}
