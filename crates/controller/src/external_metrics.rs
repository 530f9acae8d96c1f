//! The `external.metrics.k8s.io` API, served by the controller itself: a plain
//! HorizontalPodAutoscaler scales an agent Deployment on its AgentPool's load without
//! Prometheus or prometheus-adapter.
//!
//! kube-aggregator forwards the HPA controller's calls (behind an APIService
//! `v1beta1.external.metrics.k8s.io`) to this HTTPS listener:
//!
//! * `GET /apis/external.metrics.k8s.io/v1beta1`: the metrics, as an `APIResourceList`
//!   (and `GET /apis/external.metrics.k8s.io`, the `APIGroup`);
//! * `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=...`:
//!   an `ExternalMetricValueList` with one item per AgentPool of namespace `NS` that
//!   the selector matches, labelled `pool_namespace` and `pool_name` (the labels of the
//!   prometheus-adapter rules, so an HPA written for either works with both: select
//!   a pool with `matchLabels: {pool_name: NAME}`).
//!
//! The metrics ([`METRICS`]) are those of the proxies' reports ([`crate::load`]) summed
//! over every proxy that reported within the maximum age, on this replica and on its
//! peers: `sluice_requests_in_flight`, `sluice_queue_depth`, `sluice_pool_utilisation`
//! (in flight over the capacity of the proxies whose pool has one) and
//! `sluice_request_duration_p95_seconds` (from the latency histograms summed over the
//! window, 0 when no request ended in it). A pool no fresh report names has no item:
//! the HPA then holds the Deployment's scale and reports that it cannot read the metric.
//!
//! An unknown metric is answered `404` and a selector that does not parse `400`, both
//! with a `Status` body; any method but `GET`, `405`.
//!
//! Who may call: the listener asks every client for a certificate and accepts only one
//! signed by the requestheader client CA (the CA of kube-aggregator's front-proxy
//! client certificate, `requestheader-client-ca-file` in the ConfigMap
//! `kube-system/extension-apiserver-authentication`), and, when allowed names are
//! given (`requestheader-allowed-names`), whose subject's common name is one of them
//! ([`front_proxy_verifier`]). The caller's own identity (`X-Remote-User`) was
//! authenticated and authorised by the kube-apiserver before it forwarded the call.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use sluice_api::load::PoolTotals;
use sluice_listener::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::load::{self, ProxyLoads};
use crate::proxies::ProxyRegistry;

/// The API group served.
pub const GROUP: &str = "external.metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";
/// The path of the group version.
pub const BASE_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1";
/// The label naming the pool's namespace.
pub const POOL_NAMESPACE_LABEL: &str = "pool_namespace";
/// The label naming the pool.
pub const POOL_NAME_LABEL: &str = "pool_name";

/// One metric served.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Its name.
    pub name: &'static str,
    /// What it is.
    pub help: &'static str,
    /// Whether it reads the latency window (its items carry `window`).
    pub windowed: bool,
}

/// The metrics served, per AgentPool.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "sluice_requests_in_flight",
        help: "requests whose response has not ended, over every proxy",
        windowed: false,
    },
    MetricDef {
        name: "sluice_queue_depth",
        help: "requests waiting for a free endpoint, over every proxy",
        windowed: false,
    },
    MetricDef {
        name: "sluice_pool_utilisation",
        help: "requests in flight over the maxConcurrency of the live endpoints, over every proxy",
        windowed: false,
    },
    MetricDef {
        name: "sluice_request_duration_p95_seconds",
        help: "95th percentile of the time to response headers over the window, 0 without traffic",
        windowed: true,
    },
];

type Body = BoxBody<Bytes, Infallible>;

/// Why the front-proxy verifier cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ExternalMetricsError {
    /// The CA file cannot be read or holds no certificate. Not retryable.
    #[error("requestheader client CA: {0}")]
    Ca(#[from] sluice_listener::TlsError),
    /// rustls refused the CA. Not retryable.
    #[error("requestheader client CA: {0}")]
    Verifier(String),
}

/// A client certificate verifier accepting only certificates signed by the CA in
/// `ca` (PEM), for client authentication, whose subject's common name is one of
/// `allowed_names` (any, when empty), as Kubernetes' requestheader authentication
/// checks kube-aggregator's front-proxy certificate.
///
/// # Errors
///
/// When the CA cannot be loaded ([`ExternalMetricsError`]).
pub fn front_proxy_verifier(
    ca: &Path,
    allowed_names: Vec<String>,
) -> Result<Arc<dyn ClientCertVerifier>, ExternalMetricsError> {
    let roots = sluice_listener::tls::ca_roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ExternalMetricsError::Verifier(e.to_string()))?;
    Ok(Arc::new(FrontProxyVerifier {
        inner,
        allowed_names,
    }))
}

#[derive(Debug)]
struct FrontProxyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
}

impl ClientCertVerifier for FrontProxyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_names.is_empty() {
            return Ok(verified);
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let cn = common_name(cert.subject());
        match cn {
            Some(cn) if self.allowed_names.iter().any(|n| n.as_bytes() == cn) => Ok(verified),
            _ => {
                tracing::warn!(
                    common_name = ?cn.map(String::from_utf8_lossy),
                    "external metrics: a client certificate of the CA with a name not allowed"
                );
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The common name of a certificate's subject (the contents of its `Name` sequence):
/// the value of the first `2.5.4.3` attribute, when it is a string.
fn common_name(mut name: &[u8]) -> Option<&[u8]> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, mut rdn, rest) = der(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attribute, rest) = der(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der(attribute)?;
            if tag == OID && oid == CN {
                let (tag, value, _) = der(value)?;
                // UTF8String, PrintableString, IA5String.
                return matches!(tag, 0x0c | 0x13 | 0x16).then_some(value);
            }
        }
    }
    None
}

/// What the API serves: the local proxies' loads and, with peers, theirs.
#[derive(Clone, Debug)]
pub struct ExternalMetrics {
    proxies: ProxyRegistry,
    peers: Option<watch::Receiver<ProxyLoads>>,
}

impl ExternalMetrics {
    /// Serves the loads of `proxies`, the proxies subscribed to this replica.
    pub fn new(proxies: ProxyRegistry) -> Self {
        Self {
            proxies,
            peers: None,
        }
    }

    /// Also the loads of the peers' proxies ([`crate::peers::run_with_loads`]).
    #[must_use]
    pub fn with_peers(mut self, peers: watch::Receiver<ProxyLoads>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The load of every pool, over the proxies of this replica and its peers.
    pub fn totals(&self) -> PoolTotals {
        let local = self.proxies.loads();
        match &self.peers {
            Some(peers) => load::totals(&local, &peers.borrow()),
            None => load::totals(&local, &ProxyLoads::new()),
        }
    }

    /// Answers one call (the body, if any, is not read).
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only GET is served",
            );
        }
        let path = req.uri().path();
        if let Some(user) = req.headers().get("x-remote-user") {
            tracing::debug!(path, user = ?user, "external metrics call");
        }
        match path.trim_end_matches('/') {
            "/apis/external.metrics.k8s.io" => return json(StatusCode::OK, &api_group()),
            BASE_PATH => return json(StatusCode::OK, &resources()),
            "/healthz" | "/livez" | "/readyz" => {
                return text(StatusCode::OK, "ok\n");
            }
            _ => {}
        }
        let Some((namespace, metric)) = path
            .strip_prefix(BASE_PATH)
            .and_then(|p| p.strip_prefix("/namespaces/"))
            .and_then(|p| p.split_once('/'))
            .filter(|(ns, m)| !ns.is_empty() && !m.contains('/'))
        else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let Some(def) = METRICS.iter().find(|d| d.name == metric) else {
            let names: Vec<&str> = METRICS.iter().map(|d| d.name).collect();
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "no external metric {metric:?}: this server serves {}",
                    names.join(", ")
                ),
            );
        };
        let raw = req
            .uri()
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "labelSelector")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default()
            .unwrap_or_default();
        let selector = match Selector::parse(&raw) {
            Ok(s) => s,
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("labelSelector {raw:?}: {e}"),
                );
            }
        };
        let window = self.proxies.load_settings().window.as_secs();
        let timestamp = now_rfc3339();
        let items: Vec<serde_json::Value> = self
            .totals()
            .iter()
            .filter_map(|(key, total)| {
                let (ns, name) = key.split_once('/')?;
                if ns != namespace {
                    return None;
                }
                let labels = BTreeMap::from([(POOL_NAMESPACE_LABEL, ns), (POOL_NAME_LABEL, name)]);
                if !selector.matches(&labels) {
                    return None;
                }
                let value = match def.name {
                    "sluice_requests_in_flight" => Some(total.in_flight as f64),
                    "sluice_queue_depth" => Some(total.queued as f64),
                    "sluice_pool_utilisation" => total.utilisation(),
                    _ => total.p95(),
                }?;
                let mut item = serde_json::json!({
                    "metricName": def.name,
                    "metricLabels": labels,
                    "timestamp": timestamp,
                    "value": quantity(value),
                });
                if def.windowed {
                    item["window"] = window.into();
                }
                Some(item)
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "kind": "ExternalMetricValueList",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {},
                "items": items,
            }),
        )
    }
}

/// Serves the API on `listener` (whose configuration should carry TLS with the
/// [`front_proxy_verifier`]) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    metrics: ExternalMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Arc::new(metrics);
    sluice_listener::serve(
        listener,
        config,
        move |req, _peer| {
            let metrics = metrics.clone();
            async move { metrics.handle(&req) }
        },
        shutdown,
    )
    .await;
}

/// `value` as a Kubernetes quantity, to the thousandth: `3`, `1500m`.
pub fn quantity(value: f64) -> String {
    let milli = (value * 1000.0).round();
    if !milli.is_finite() || milli <= 0.0 {
        return "0".to_owned();
    }
    let milli = milli as u64;
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn api_group() -> serde_json::Value {
    let version = serde_json::json!({
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "version": VERSION,
    });
    serde_json::json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

fn resources() -> serde_json::Value {
    let resources: Vec<serde_json::Value> = METRICS
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            })
        })
        .collect();
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": resources,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json(
        code,
        &serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Why a label selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement does not parse.
    #[error(
        "{0:?} is not a requirement: use key, !key, key=value, key!=value, key in (a,b) or key notin (a,b)"
    )]
    Syntax(String),
    /// A key or value holds a character a label cannot.
    #[error("{0:?} is not a valid label key or value")]
    Invalid(String),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A Kubernetes label selector, in its string form (`labelSelector=`): requirements
/// separated by commas, all of which must hold. `>` and `<` are refused (labels here
/// are names, not numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `text`; an empty one selects everything.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] naming the requirement that does not parse.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        let mut depth = 0usize;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| SelectorError::Syntax(text.to_owned()))?
                }
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(SelectorError::Syntax(text.to_owned()));
        }
        parts.push(&text[start..]);
        if parts.len() == 1 && parts[0].trim().is_empty() {
            return Ok(Self::default());
        }
        for part in parts {
            requirements.push(requirement(part.trim())?);
        }
        Ok(Self(requirements))
    }

    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k.as_str()),
            Requirement::NotExists(k) => !labels.contains_key(k.as_str()),
            Requirement::In(k, values) => labels
                .get(k.as_str())
                .is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(k, values) => labels
                .get(k.as_str())
                .is_none_or(|v| values.iter().all(|x| x != v)),
        })
    }
}

fn requirement(part: &str) -> Result<Requirement, SelectorError> {
    let syntax = || SelectorError::Syntax(part.to_owned());
    if part.is_empty() {
        return Err(syntax());
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key_of(key.trim())?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(
            key_of(key.trim())?,
            vec![value_of(value.trim())?],
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(
            key_of(key.trim())?,
            vec![value_of(value.trim())?],
        ));
    }
    if part.contains(['<', '>']) {
        return Err(syntax());
    }
    if let Some(open) = part.find('(') {
        let list = part[open + 1..].strip_suffix(')').ok_or_else(syntax)?;
        let head: Vec<&str> = part[..open].split_whitespace().collect();
        let [key, op] = head.as_slice() else {
            return Err(syntax());
        };
        let values = list
            .split(',')
            .map(|v| value_of(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        return match *op {
            "in" => Ok(Requirement::In(key_of(key)?, values)),
            "notin" => Ok(Requirement::NotIn(key_of(key)?, values)),
            _ => Err(syntax()),
        };
    }
    if part.contains(char::is_whitespace) {
        return Err(syntax());
    }
    Ok(Requirement::Exists(key_of(part)?))
}

fn key_of(key: &str) -> Result<String, SelectorError> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    ok.then(|| key.to_owned())
        .ok_or_else(|| SelectorError::Invalid(key.to_owned()))
}

fn value_of(value: &str) -> Result<String, SelectorError> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| value.to_owned())
        .ok_or_else(|| SelectorError::Invalid(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(ns: &'a str, name: &'a str) -> BTreeMap<&'static str, &'a str> {
        BTreeMap::from([(POOL_NAMESPACE_LABEL, ns), (POOL_NAME_LABEL, name)])
    }

    #[test]
    fn selectors() {
        let chat = labels("agents", "chat");
        let ok = |s: &str| Selector::parse(s).expect(s).matches(&chat);
        assert!(ok(""));
        assert!(ok("pool_name=chat"));
        assert!(ok("pool_name==chat,pool_namespace=agents"));
        assert!(!ok("pool_name=other"));
        assert!(ok("pool_name!=other"));
        assert!(ok("pool_name in (chat, summarizer)"));
        assert!(!ok("pool_name notin (chat)"));
        assert!(ok("pool_name"));
        assert!(ok("!team"));
        assert!(!ok("team"));
        assert!(!ok("team=a"));
        assert!(ok("team!=a"));
        for bad in [
            "pool_name=(chat",
            "a b",
            "pool_name in chat",
            "x > 1",
            "pool_name=a b",
            ",",
            "pool_name in (a))",
            "pool_name=ch@t",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(3.0), "3");
        assert_eq!(quantity(1.5), "1500m");
        assert_eq!(quantity(0.2375), "238m");
        assert_eq!(quantity(f64::NAN), "0");
    }

    #[test]
    fn common_names_of_subjects() {
        let ca = sluice_listener::testing::TestCa::new("ca");
        let cert = ca.client_leaf("front-proxy-client", &[], &[]);
        let parsed = webpki::EndEntityCert::try_from(&cert.der).expect("parses");
        assert_eq!(
            common_name(parsed.subject()),
            Some(&b"front-proxy-client"[..])
        );
        assert_eq!(common_name(&[0x31, 0x05, 0x30]), None, "truncated");
        assert_eq!(common_name(&[]), None);
    }
}
