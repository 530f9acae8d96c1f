//! The pure compile step: custom resources and EndpointSlices in, a [`RouteTable`] and
//! [`Diagnostics`] out.
//!
//! Each object is compiled on its own. One that is invalid is left out of the table
//! with an error naming the field; the others compile. Fields the data plane does not
//! implement yet are rejected with a "not supported yet" error, never ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::agent_pool::{Algorithm, Backend, HeaderMatch, RouteMatch, ServiceBackend};
use crate::diagnostics::{Diagnostic, Diagnostics, ObjectRef, Severity};
use crate::table::{BackendTarget, Endpoint, Pool, Route, RouteTable, is_host_port};
use crate::{AgentPool, RatePolicy};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
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
}

/// Compiles `objects` into a table (version 0; the publisher stamps the version).
///
/// Deterministic: the same objects in any order give the same table and diagnostics.
pub fn compile(objects: &Objects) -> (RouteTable, Diagnostics) {
    let mut diags = Vec::new();
    let slices = SliceIndex::new(&objects.slices);

    let mut sorted: Vec<(String, &AgentPool)> =
        objects.pools.iter().map(|p| (pool_key(p), p)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut pools = Vec::new();
    let mut routes = Vec::new();
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
        } else if let Some((compiled, pool_routes)) = compile_pool(pool, key, &slices, &mut cx) {
            pools.push(compiled);
            routes.extend(pool_routes);
        }
        diags.extend(cx.diags);
    }

    for policy in &objects.policies {
        let mut cx = Cx::new(
            "RatePolicy",
            policy.metadata.namespace.as_deref(),
            policy.metadata.name.as_deref(),
        );
        cx.error(
            "spec",
            "RatePolicy enforcement is not supported yet by this version of Sluice; the policy is not applied",
        );
        diags.extend(cx.diags);
    }

    // Precedence: host-specific before any host, longer prefixes first, more header
    // conditions first; the pool key breaks ties so the order is deterministic.
    routes.sort_by(|(a, ai): &(Route, usize), (b, bi)| {
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
            .then(b.headers.len().cmp(&a.headers.len()))
            .then(a.pool.cmp(&b.pool))
            .then(ai.cmp(bi))
    });
    report_shadowed(&routes, &objects.pools, &mut diags);
    let routes = routes.into_iter().map(|(r, _)| r).collect();

    diags.sort_by(|a, b| a.object.cmp(&b.object).then(a.field.cmp(&b.field)));
    (RouteTable::new(routes, pools), Diagnostics(diags))
}

fn pool_key(pool: &AgentPool) -> String {
    format!(
        "{}/{}",
        pool.metadata.namespace.as_deref().unwrap_or("default"),
        pool.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Collects the diagnostics of one object.
struct Cx {
    object: ObjectRef,
    diags: Vec<Diagnostic>,
}

impl Cx {
    fn new(kind: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        Self {
            object: ObjectRef::new(
                kind,
                namespace.unwrap_or("default"),
                name.unwrap_or("<unnamed>"),
            ),
            diags: Vec::new(),
        }
    }

    fn push(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            object: self.object.clone(),
            field: field.to_owned(),
            message: message.into(),
            severity,
        });
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warning(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
}

fn compile_pool(
    pool: &AgentPool,
    key: &str,
    slices: &SliceIndex<'_>,
    cx: &mut Cx,
) -> Option<(Pool, Vec<(Route, usize)>)> {
    if pool.metadata.name.as_deref().unwrap_or_default().is_empty() {
        cx.error("metadata.name", "is missing");
        return None;
    }
    let spec = &pool.spec;
    let namespace = pool.metadata.namespace.as_deref().unwrap_or("default");

    if spec.matches.is_empty() {
        cx.error("spec.matches", "needs at least one entry");
    }
    let mut routes = Vec::new();
    for (i, m) in spec.matches.iter().enumerate() {
        if let Some(route) = compile_match(m, key, &format!("spec.matches[{i}]"), cx) {
            routes.push((route, i));
        }
    }

    if spec.backends.is_empty() {
        cx.error("spec.backends", "needs at least one entry");
    }
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        if let Some(backend) = compile_backend(b, i, namespace, slices, cx) {
            backends.push(backend);
        }
    }

    let algorithm = spec.load_balancing.algorithm;
    match algorithm {
        Algorithm::RoundRobin | Algorithm::Weighted => {}
        Algorithm::LeastRequest | Algorithm::PeakEwma | Algorithm::ConsistentHash => cx.error(
            "spec.loadBalancing.algorithm",
            format!(
                "{} is not supported yet by this version of Sluice (supported: RoundRobin, Weighted)",
                algorithm.as_str()
            ),
        ),
    }

    let timeouts = spec.timeouts.clone().unwrap_or_default();
    let connect_timeout_ms = timeout_ms(
        timeouts.connect,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "spec.timeouts.connect",
        cx,
    );
    let request_timeout_ms = timeout_ms(
        timeouts.request,
        DEFAULT_REQUEST_TIMEOUT_MS,
        "spec.timeouts.request",
        cx,
    );

    if cx.has_errors() {
        return None;
    }
    Some((
        Pool {
            key: key.to_owned(),
            algorithm,
            backends,
            connect_timeout_ms,
            request_timeout_ms,
        },
        routes,
    ))
}

fn timeout_ms(value: Option<crate::Duration>, default: u64, field: &str, cx: &mut Cx) -> u64 {
    match value {
        None => default,
        Some(d) if d.get().is_zero() => {
            cx.error(field, "must be greater than 0");
            default
        }
        Some(d) => u64::try_from(d.get().as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    }
}

fn compile_match(m: &RouteMatch, pool: &str, field: &str, cx: &mut Cx) -> Option<Route> {
    let errors_before = cx.diags.len();
    let raw = m.path_prefix.as_deref().unwrap_or("/");
    let path_field = format!("{field}.pathPrefix");
    if !raw.starts_with('/') {
        cx.error(&path_field, format!("{raw:?} must start with /"));
    } else if raw.contains(['?', '#']) || raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        cx.error(&path_field, format!("{raw:?} must be a plain path, without query, fragment, spaces or control characters"));
    } else if raw.contains("//") || raw.split('/').any(|s| s == "." || s == "..") {
        cx.error(
            &path_field,
            format!("{raw:?} must not contain empty, `.` or `..` segments"),
        );
    }
    let path_prefix = match raw.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };

    let host = match m.host.as_deref() {
        None => None,
        Some(h) => {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if h.contains('*') {
                cx.error(
                    &format!("{field}.host"),
                    "wildcard hosts are not supported yet",
                );
            } else if !is_host_port(&format!("{h}:1")) || h.contains(':') {
                cx.error(
                    &format!("{field}.host"),
                    format!("{h:?} is not a valid host name (give it without a port)"),
                );
            }
            Some(h)
        }
    };

    let mut headers = Vec::new();
    for (j, h) in m.headers.iter().enumerate() {
        let name = h.name.to_ascii_lowercase();
        if http_token(&name).is_err() {
            cx.error(
                &format!("{field}.headers[{j}].name"),
                format!("{:?} is not a valid header name", h.name),
            );
        }
        if h.value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            cx.error(
                &format!("{field}.headers[{j}].value"),
                "contains control characters",
            );
        }
        headers.push(HeaderMatch {
            name,
            value: h.value.clone(),
        });
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name).then(a.value.cmp(&b.value)));

    (cx.diags.len() == errors_before).then(|| Route {
        pool: pool.to_owned(),
        host,
        path_prefix,
        headers,
    })
}

fn http_token(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(()) }
}

fn compile_backend(
    b: &Backend,
    i: usize,
    namespace: &str,
    slices: &SliceIndex<'_>,
    cx: &mut Cx,
) -> Option<BackendTarget> {
    let field = format!("spec.backends[{i}]");
    if b.weight == 0 {
        cx.error(&format!("{field}.weight"), "must be at least 1");
    }
    match (&b.service, b.endpoints.is_empty()) {
        (Some(_), false) => {
            cx.error(&field, "set either service or endpoints, not both");
            None
        }
        (None, true) => {
            cx.error(&field, "set service or endpoints");
            None
        }
        (None, false) => {
            let mut endpoints = Vec::new();
            for (j, address) in b.endpoints.iter().enumerate() {
                if is_host_port(address) {
                    endpoints.push(Endpoint {
                        address: address.clone(),
                    });
                } else {
                    cx.error(
                        &format!("{field}.endpoints[{j}]"),
                        format!("{address:?} is not host:port"),
                    );
                }
            }
            endpoints.sort();
            let before = endpoints.len();
            endpoints.dedup();
            if endpoints.len() != before {
                cx.warning(
                    &format!("{field}.endpoints"),
                    "lists the same endpoint more than once; duplicates are dropped",
                );
            }
            Some(BackendTarget {
                name: format!("static[{i}]"),
                weight: b.weight.max(1),
                endpoints,
            })
        }
        (Some(service), true) => {
            let endpoints =
                resolve_service(service, namespace, slices, &format!("{field}.service"), cx)?;
            Some(BackendTarget {
                name: format!("service/{}", service.name),
                weight: b.weight.max(1),
                endpoints,
            })
        }
    }
}

fn resolve_service(
    service: &ServiceBackend,
    namespace: &str,
    slices: &SliceIndex<'_>,
    field: &str,
    cx: &mut Cx,
) -> Option<Vec<Endpoint>> {
    if !is_host_port(&format!("{}:1", service.name)) || service.name.contains('.') {
        cx.error(
            &format!("{field}.name"),
            format!("{:?} is not a valid Service name", service.name),
        );
        return None;
    }
    match &service.port {
        IntOrString::Int(p) if !(1..=65535).contains(p) => {
            cx.error(
                &format!("{field}.port"),
                format!("{p} is not a port number (1-65535)"),
            );
            return None;
        }
        IntOrString::String(s) if s.is_empty() => {
            cx.error(&format!("{field}.port"), "is empty");
            return None;
        }
        _ => {}
    }
    let found = slices.for_service(namespace, &service.name);
    if found.is_empty() {
        cx.warning(
            field,
            format!("Service {namespace}/{} has no EndpointSlices", service.name),
        );
        return Some(Vec::new());
    }
    let mut endpoints = Vec::new();
    let mut port_seen = false;
    for slice in found {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| match &service.port {
                IntOrString::Int(n) => (p.port == Some(*n)).then_some(*n),
                IntOrString::String(name) => (p.name.as_deref() == Some(name))
                    .then_some(p.port)
                    .flatten(),
            })
        else {
            continue;
        };
        port_seen = true;
        let ipv6 = slice.address_type == "IPv6";
        for ep in &slice.endpoints {
            // A missing `ready` condition means ready, as the EndpointSlice API says.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &ep.addresses {
                let address = if ipv6 || address.contains(':') {
                    format!("[{address}]:{port}")
                } else {
                    format!("{address}:{port}")
                };
                endpoints.push(Endpoint { address });
            }
        }
    }
    if !port_seen {
        let port = match &service.port {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => format!("{s:?}"),
        };
        cx.warning(
            &format!("{field}.port"),
            format!(
                "no EndpointSlice of Service {namespace}/{} has port {port}",
                service.name
            ),
        );
    }
    endpoints.sort();
    endpoints.dedup();
    Some(endpoints)
}

/// EndpointSlices grouped by `(namespace, service)`.
struct SliceIndex<'a> {
    by_service: BTreeMap<(String, String), Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: &'a [EndpointSlice]) -> Self {
        let mut by_service: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                by_service
                    .entry((ns.to_owned(), service.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        Self { by_service }
    }

    fn for_service(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.by_service
            .get(&(namespace.to_owned(), service.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Warns about a match that an earlier route with the same conditions always wins.
fn report_shadowed(routes: &[(Route, usize)], pools: &[AgentPool], diags: &mut Vec<Diagnostic>) {
    for (i, (route, match_index)) in routes.iter().enumerate() {
        let winner = routes[..i].iter().find(|(r, _)| {
            r.host == route.host && r.path_prefix == route.path_prefix && r.headers == route.headers
        });
        let Some((winner, _)) = winner else { continue };
        if winner.pool == route.pool {
            continue;
        }
        let Some(pool) = pools.iter().find(|p| pool_key(p) == route.pool) else {
            continue;
        };
        let mut cx = Cx::new(
            "AgentPool",
            pool.metadata.namespace.as_deref(),
            pool.metadata.name.as_deref(),
        );
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
