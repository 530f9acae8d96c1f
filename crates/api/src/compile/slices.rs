//! Resolving a Service backend to endpoints through its EndpointSlices.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Cx;
use crate::agent_pool::ServiceBackend;
use crate::table::{Endpoint, is_host_port};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice in the form the compile step reads: its name, namespace and
/// Service, its ports, and its endpoints' addresses, conditions and zones; nothing else
/// (no metadata, owners, target references, topology). The controller keeps its cache
/// of slices in this form, shared with each compile ([`crate::Objects::service_slices`]):
/// a few hundred bytes a slice instead of the whole object, and no copy per compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSlice {
    /// The slice's namespace (`default` when it has none).
    pub namespace: Box<str>,
    /// The slice's name.
    pub name: Box<str>,
    /// Its Service (the `kubernetes.io/service-name` label); empty without the label,
    /// and then no Service's.
    pub service: Box<str>,
    /// Whether its addresses are IPv6 (`addressType: IPv6`).
    pub ipv6: bool,
    /// Its ports.
    pub ports: Box<[SlicePort]>,
    /// Its endpoints.
    pub endpoints: Box<[SliceEndpoint]>,
}

/// One port of a [`ServiceSlice`]: `(name, port)`.
pub type SlicePort = (Option<Box<str>>, Option<i32>);

/// One endpoint of a [`ServiceSlice`], its conditions resolved as the EndpointSlice
/// API says (missing: ready and serving, not terminating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses.
    pub addresses: Box<[Box<str>]>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Its zone.
    pub zone: Option<Box<str>>,
}

impl From<&EndpointSlice> for ServiceSlice {
    fn from(slice: &EndpointSlice) -> Self {
        let boxed = |s: &str| Box::<str>::from(s);
        Self {
            namespace: boxed(slice.metadata.namespace.as_deref().unwrap_or("default")),
            name: boxed(slice.metadata.name.as_deref().unwrap_or_default()),
            service: boxed(
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map_or("", String::as_str),
            ),
            ipv6: slice.address_type == "IPv6",
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_deref().map(boxed), p.port))
                .collect(),
            endpoints: slice
                .endpoints
                .iter()
                .map(|ep| {
                    let conditions = ep.conditions.as_ref();
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                    SliceEndpoint {
                        addresses: ep.addresses.iter().map(|a| boxed(a)).collect(),
                        ready,
                        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                        zone: ep.zone.as_deref().map(boxed),
                    }
                })
                .collect(),
        }
    }
}

/// EndpointSlices grouped by namespace, then Service.
pub(super) struct SliceIndex<'a> {
    by_service: BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a ServiceSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn new(slices: impl IntoIterator<Item = &'a ServiceSlice>) -> Self {
        let mut by_service: BTreeMap<&str, BTreeMap<&str, Vec<_>>> = BTreeMap::new();
        for slice in slices {
            if !slice.service.is_empty() {
                by_service
                    .entry(&slice.namespace)
                    .or_default()
                    .entry(&slice.service)
                    .or_default()
                    .push(slice);
            }
        }
        Self { by_service }
    }

    fn for_service(&self, namespace: &str, service: &str) -> &[&'a ServiceSlice] {
        self.by_service
            .get(namespace)
            .and_then(|services| services.get(service))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// The endpoints of `service`: ready ones, and terminating ones that still serve (they
/// drain: no new requests, in-flight ones finish). Not-ready endpoints that are not
/// terminating are not ready yet and left out. `None` after an error.
pub(super) fn resolve_service(
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
        IntOrString::String(s) if !is_port_name(s) => {
            cx.error(
                &format!("{field}.port"),
                format!("{s:?} is not a port name (1-63 lower-case letters, digits and `-`, starting and ending with a letter or digit)"),
            );
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
            .find_map(|(port_name, port)| match &service.port {
                IntOrString::Int(n) => (*port == Some(*n)).then_some(*n),
                IntOrString::String(name) => (port_name.as_deref() == Some(name.as_str()))
                    .then_some(*port)
                    .flatten(),
            })
        else {
            continue;
        };
        port_seen = true;
        let ipv6 = slice.ipv6;
        for ep in &slice.endpoints {
            // Missing conditions mean ready and serving, as the EndpointSlice API says
            // (resolved in `ServiceSlice`).
            let (ready, terminating, serving) = (ep.ready, ep.terminating, ep.serving);
            if !(ready || (terminating && serving)) {
                continue;
            }
            for address in &ep.addresses {
                let address = if ipv6 || address.contains(':') {
                    format!("[{address}]:{port}")
                } else {
                    format!("{address}:{port}")
                };
                endpoints.push(Endpoint {
                    address,
                    terminating: terminating && !ready,
                    zone: ep.zone.as_deref().map(str::to_owned),
                });
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
    // One address in two slices (possible during a slice update) is one endpoint;
    // ready wins over terminating.
    endpoints.dedup_by(|later, earlier| later.address == earlier.address);
    Some(endpoints)
}

/// Whether `name` can name a Service port (and so an EndpointSlice port): a DNS label.
fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}
