//! Resolving a Service backend to endpoints through its EndpointSlices.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Cx;
use crate::agent_pool::ServiceBackend;
use crate::table::{Endpoint, is_host_port};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlices grouped by `(namespace, service)`.
pub(super) struct SliceIndex<'a> {
    by_service: BTreeMap<(String, String), Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn new(slices: &'a [EndpointSlice]) -> Self {
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
            // Missing conditions mean ready and serving, as the EndpointSlice API says.
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
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
                    zone: ep.zone.clone(),
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
