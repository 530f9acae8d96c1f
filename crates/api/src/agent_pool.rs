//! The `AgentPool` custom resource: a set of agent endpoints and how to reach them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions;
use crate::duration::Duration;

/// Which requests an AgentPool serves and where they go.
// The `printcolumn(...)` entries repeat their keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AgentPool",
    namespaced,
    status = "AgentPoolStatus",
    shortname = "ap",
    category = "sluice",
    doc = "A pool of agent endpoints: which requests it serves, its backends and how load is balanced across them.",
    derive = "PartialEq",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        description = "Whether the pool compiled: see the Accepted condition's reason and message",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Algorithm",
        type_ = "string",
        json_path = ".spec.loadBalancing.algorithm"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Ready endpoints",
        json_path = ".status.readyEndpoints"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        description = "Proxies that run the pool as it is now",
        json_path = ".status.updatedProxies"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.queue) || self.backends.exists(b, has(b.maxConcurrency))",
        "message": "queue is only used with backends[].maxConcurrency: without it no endpoint is ever full",
        "fieldPath": ".queue",
    },
    {
        "rule": "!has(self.fallback) || !has(self.fallback.when) || self.fallback.when.all(w, w == 'Unavailable') || self.backends.exists(b, has(b.maxConcurrency))",
        "message": "fallback.when QueueFull and QueueTimeout are only used with backends[].maxConcurrency",
        "fieldPath": ".fallback.when",
    },
]))]
pub struct AgentPoolSpec {
    /// Which requests this pool serves. A request matches when it matches any entry.
    #[schemars(length(min = 1, max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Where matched requests go: Services (resolved through their EndpointSlices) or
    /// static `host:port` endpoints.
    #[schemars(length(min = 1, max = 16))]
    pub backends: Vec<Backend>,
    /// Capabilities every backend of this pool has (for example `summarize`). A request
    /// that names a capability is only routed to pools and backends that advertise it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    pub capabilities: Vec<String>,
    /// How a request is spread over the endpoints.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Deadlines applied to each forwarded request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Where requests wait when every endpoint is at its `maxConcurrency`. A pool
    /// whose backends set `maxConcurrency` has a queue with the defaults even without
    /// this block; `maxDepth: 0` refuses such requests at once instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// Retrying failed attempts on another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Active health checks of every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection: endpoints that keep failing are taken out for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Another AgentPool in this namespace that takes the requests this one cannot
    /// serve: when it has no healthy capacity, and, as `when` and `statuses` say, when
    /// it is saturated or an agent answers with a status such as 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Who may call this pool. Without it the pool is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// How callers prove who they are: API keys (always accepted) and, optionally, JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// One way a request can match a pool. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.model) || !has(self.modelPrefix)",
    "message": "set at most one of model and modelPrefix",
    "fieldPath": ".modelPrefix",
}]))]
pub struct RouteMatch {
    /// Path prefix, matched on whole segments: `/agents/echo` matches `/agents/echo` and
    /// `/agents/echo/x`, not `/agents/echoes`. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path_prefix: Option<String>,
    /// Host name the request must be addressed to (the `Host` header or the HTTP/2
    /// authority, without port), compared case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// The request method. Any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// The OpenAI-style `model` field of a JSON request body, exactly (for example
    /// `gpt-4o`). The body is read to find it, within the 1 MiB limit of bodies the
    /// proxy reads; a request without the field does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
    /// A prefix of the `model` field (for example `gpt-4`), instead of `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model_prefix: Option<String>,
}

/// An HTTP method a route can match.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `PATCH`.
    Patch,
    /// `OPTIONS`.
    Options,
}

impl HttpMethod {
    /// The method as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Options => "OPTIONS",
        }
    }
}

/// A header that must be present with an exact value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The exact value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// One backend of a pool: either a Service or a list of static endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.service) ? 1 : 0) + (has(self.endpoints) && size(self.endpoints) > 0 ? 1 : 0) + (has(self.url) ? 1 : 0) == 1",
        "message": "set exactly one of service, endpoints or url",
    },
    {
        "rule": "!has(self.tls) || !has(self.url) || self.url.startsWith('https://')",
        "message": "tls is only used with an https url",
        "fieldPath": ".tls",
    },
]))]
pub struct Backend {
    /// A Service in the pool's namespace, resolved through its EndpointSlices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// Static endpoints as `host:port`, for use without Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 259)))]
    pub endpoints: Vec<String>,
    /// An agent or provider outside the cluster, as `https://host[:port]` (or
    /// `http://`), without a path: the request's path is sent as it is. Every request
    /// carries the URL's host as its `Host`; the name is resolved again once its DNS
    /// answer is older than the proxy's `--upstream-dns-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// HTTPS to this backend's endpoints. An `https` url uses TLS with the defaults
    /// (the system's roots, the URL's host as the name) without this block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
    /// A credential sent with every request to this backend, in place of the
    /// caller's own (`Authorization` and `x-api-key` from the client are removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<UpstreamAuth>,
    /// Relative share of traffic this backend receives, spread over its endpoints;
    /// every algorithm honours it.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub weight: u32,
    /// Capabilities of this backend, in addition to the pool's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    pub capabilities: Vec<String>,
    /// Requests one endpoint of this backend serves at once; more wait in the pool's
    /// queue. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_concurrency: Option<u32>,
    /// The protocol the agents speak.
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// How this backend names models: with `rewrite`, the `model` field of a JSON
    /// request body sent to it is replaced (one public model name, a different one per
    /// backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<BackendModel>,
}

/// The model name a backend knows a request's model by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackendModel {
    /// The name the `model` field is set to; only that value of the body changes.
    #[schemars(length(min = 1, max = 256))]
    pub rewrite: String,
}

/// How Sluice verifies a backend's TLS certificates and identifies itself to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.insecureSkipVerify) || !self.insecureSkipVerify || !has(self.caSecretRef)",
    "message": "insecureSkipVerify verifies nothing: it cannot be combined with caSecretRef",
    "fieldPath": ".insecureSkipVerify",
}]))]
pub struct BackendTls {
    /// The name sent in SNI, which the agent's certificate must hold. Default: the
    /// url's host, or each endpoint's host (an IP address for a Service's pods, so
    /// set this when their certificate names the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub sni: Option<String>,
    /// A Secret labelled `sluice.dev/upstream` holding the CA certificates (PEM) that
    /// sign the agents' certificates, under `key` (default `ca.crt`). Default: the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A Secret labelled `sluice.dev/upstream` holding the client certificate Sluice
    /// presents (`tls.crt`, a PEM chain, and `tls.key`, as in a `kubernetes.io/tls`
    /// Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretRef>,
    /// Accept any certificate: the connection is encrypted but the agent is not
    /// authenticated. Never implied; a pool that sets it is reported with a warning
    /// and each proxy logs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A credential injected into requests to a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamAuth {
    /// A Secret labelled `sluice.dev/upstream` holding the credential under `key`
    /// (default `api-key`).
    pub secret_ref: SecretKeyRef,
    /// The header it is sent in. Default `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Text put before the credential, for example `"Bearer "`. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

/// A Secret in the pool's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the pool's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its `data`; each field that takes a Secret says its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// The protocol Sluice speaks to a backend's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BackendProtocol {
    /// HTTP/1.1; over TLS, HTTP/2 when the agent offers it by ALPN, else HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 without TLS, with prior knowledge (gRPC agents). Not with TLS, where
    /// ALPN chooses HTTP/2.
    H2c,
}

fn default_weight() -> u32 {
    1
}

/// A reference to a Service and one of its ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceBackend {
    /// The Service's name, in the pool's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The port the agents listen on: its name in the Service (and so in the
    /// EndpointSlices), or its number on the pods (the Service's `targetPort`).
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self >= 1 && self <= 65535 : size(self) >= 1 && size(self) <= 63",
        "message": "must be a port number (1-65535) or a port name (1-63 characters)",
    }]))]
    pub port: IntOrString,
}

/// How requests are spread over a pool's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.algorithm != 'ConsistentHash' || has(self.consistentHash)",
        "message": "consistentHash is required with algorithm ConsistentHash: set header, cookie or clientIp",
        "fieldPath": ".consistentHash",
    },
    {
        "rule": "!has(self.consistentHash) || self.algorithm == 'ConsistentHash'",
        "message": "consistentHash is only used with algorithm ConsistentHash",
        "fieldPath": ".consistentHash",
    },
    {
        "rule": "!has(self.peakEwma) || self.algorithm == 'PeakEwma'",
        "message": "peakEwma is only used with algorithm PeakEwma",
        "fieldPath": ".peakEwma",
    },
]))]
pub struct LoadBalancing {
    /// The balancing algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Settings of `PeakEwma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ewma: Option<PeakEwmaSpec>,
    /// Settings of `ConsistentHash`; required with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashSpec>,
}

/// Settings of the `PeakEwma` algorithm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeakEwmaSpec {
    /// How fast old latency observations fade. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay: Option<Duration>,
    /// The latency assumed for an endpoint before it has answered. Default 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_latency: Option<Duration>,
}

/// Settings of the `ConsistentHash` algorithm: what identifies a session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.clientIp) && self.clientIp ? 1 : 0) == 1",
    "message": "set exactly one of header, cookie or clientIp: true",
}]))]
pub struct ConsistentHashSpec {
    /// Hash the value of this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Hash the value of this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    /// Hash the client IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
    /// No endpoint takes more than this factor times the mean in-flight load; a session
    /// whose endpoint is over it goes to the next one on the ring. Default 1.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub bounded_load: Option<f64>,
}

/// A load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Algorithm {
    /// Each endpoint in turn; with unequal backend weights, the weighted rotation of
    /// `Weighted`.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin over backends by their `weight`, then round robin
    /// over each backend's endpoints.
    Weighted,
    /// Power of two choices on in-flight requests (per unit of weight).
    LeastRequest,
    /// Power of two choices on peak-EWMA latency (in flight per unit of weight).
    PeakEwma,
    /// Session affinity by a consistent hash (ring points by weight).
    ConsistentHash,
}

impl Algorithm {
    /// The name used in manifests and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "RoundRobin",
            Algorithm::Weighted => "Weighted",
            Algorithm::LeastRequest => "LeastRequest",
            Algorithm::PeakEwma => "PeakEwma",
            Algorithm::ConsistentHash => "ConsistentHash",
        }
    }
}

/// Deadlines for forwarded requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time to establish a connection to an endpoint. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// Time for the whole request, from receipt to the end of the response body.
    /// Default 300s. Does not cut a streamed response (server-sent events) that is
    /// still producing, unless `streamMaxDuration` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Time from sending the request to the response headers. Default: `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<Duration>,
    /// Longest pause between two chunks of a response body. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// Longest duration of a streamed response. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_max_duration: Option<Duration>,
}

/// The highest queue priority.
pub const MAX_PRIORITY: u32 = 1_000_000;

/// The bounded queue of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Most requests waiting at once; more are refused with 503. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_depth: Option<u32>,
    /// Longest wait before a request is refused with 503. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Priority of requests from callers without a tier (higher goes first). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_PRIORITY))]
    pub default_priority: Option<u32>,
    /// Priority by consumer tier, for example `{premium: 10, standard: 1}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {
            "type": "integer",
            "format": "uint32",
            "minimum": 0,
            "maximum": MAX_PRIORITY,
        },
    ))]
    pub tier_priorities: BTreeMap<String, u32>,
}

/// When and how often a failed attempt is retried on another endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.statuses) || size(self.statuses) == 0 || !has(self.attempts) || self.attempts > 0",
    "message": "statuses are only retried with attempts above 0",
    "fieldPath": ".statuses",
}]))]
pub struct Retries {
    /// Most attempts after the first. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<u32>,
    /// Response statuses that are retried (connect failures and resets before any
    /// response byte always are). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 400, max = 599)))]
    pub statuses: Vec<u16>,
    /// Retries allowed as a share of requests, so failures do not multiply load.
    /// Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub budget_ratio: Option<f64>,
    /// Retries per second always allowed whatever the ratio. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub min_retries_per_second: Option<u32>,
}

/// Active HTTP health checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path probed with GET; 2xx is healthy. Default `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Time between probes of one endpoint. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Deadline of one probe. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Consecutive successes that make an unhealthy endpoint healthy. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy endpoint unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
}

/// Passive outlier ejection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "duration(has(self.maxEjectionTime) ? self.maxEjectionTime : '5m') >= duration(has(self.baseEjectionTime) ? self.baseEjectionTime : '30s')",
    "message": "maxEjectionTime (default 5m) must not be shorter than baseEjectionTime (default 30s)",
    "fieldPath": ".maxEjectionTime",
}]))]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connect failures that eject an endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Longest ejection. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
    /// Most endpoints of the pool ejected at once, in percent. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// A reference to another AgentPool in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolRef {
    /// The AgentPool's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The pool that takes a pool's requests when it cannot serve them, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fallback {
    /// The AgentPool's name, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// When the pool itself cannot take a request: `Unavailable` (no live endpoint),
    /// `QueueFull` (every endpoint busy and the queue full), `QueueTimeout` (the request
    /// waited the queue's timeout). Default `Unavailable` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub when: Vec<FallbackWhen>,
    /// Statuses of an agent's answer (after the pool's own retries) that send the
    /// request on to the fallback instead, for example an LLM provider's 429 or 503;
    /// only within the pool's retry budget and for a body that can be sent again.
    /// Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 400, max = 599)))]
    pub statuses: Vec<u16>,
}

/// A reason the pool cannot take a request itself.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum FallbackWhen {
    /// No endpoint is alive (none resolved, unhealthy, ejected or draining, or none
    /// with the requested capability).
    Unavailable,
    /// Every endpoint is at its `maxConcurrency` and the queue is full.
    QueueFull,
    /// The request waited in the queue until its timeout.
    QueueTimeout,
}

/// Who may call a pool. A caller is let in when it is public, or when the consumer is
/// listed by name or by tier.
///
/// Consumers from Secrets belong to the Secret's namespace (`namespace/name`): a name
/// listed here is the consumer of that name in the pool's namespace (or a JWT subject),
/// `otherns/name` one of another namespace. A tier lets in the pool's own namespace's
/// consumers of that tier, and those of `consumerNamespaces`: a Secret cannot give
/// itself a tier another namespace's pool accepts without that pool's consent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Anyone may call, identified or not. Default false once `access` is given.
    #[serde(default)]
    pub public: bool,
    /// Consumer tiers that may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub tiers: Vec<String>,
    /// Consumer names that may call: `name` (of the pool's namespace, or a JWT
    /// subject) or `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 127)))]
    pub consumers: Vec<String>,
    /// Other namespaces whose consumers `tiers` let in (`*`: every namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub consumer_namespaces: Vec<String>,
    /// Require a client certificate (mutual TLS) signed by this CA, with one of these
    /// subjects, on every request; the subject identifies the caller. Only the TLS
    /// listener can see certificates: over the plaintext listener the pool refuses
    /// every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertificates>,
}

/// The client certificates a pool requires.
///
/// A subject with a `:` is a URI (`spiffe://cluster.local/ns/agents/sa/planner`),
/// equal, byte for byte, to one of the certificate's URI subject alternative names;
/// any other is a name, equal to one of its DNS subject alternative names (ignoring
/// ASCII case) or to its subject common name (exactly). No wildcards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.subjects.all(s, !s.contains('*'))",
    "message": "subjects are matched exactly: no wildcards, list each subject",
    "fieldPath": ".subjects",
}]))]
pub struct ClientCertificates {
    /// A Secret labelled `sluice.dev/upstream` holding the CA certificates (PEM) that
    /// sign the clients' certificates, under `key` (default `ca.crt`).
    pub ca_secret_ref: SecretKeyRef,
    /// The subjects let in; the first a certificate holds becomes the caller's
    /// consumer name. Visible ASCII, no spaces.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub subjects: Vec<String>,
}

/// How callers of a pool authenticate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Accept JWTs from this issuer, in addition to API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// A JWT issuer whose tokens identify consumers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.jwksUri) != has(self.jwks)",
    "message": "set exactly one of jwksUri or jwks",
}]))]
pub struct JwtSpec {
    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 1024)))]
    pub audiences: Vec<String>,
    /// URL of the issuer's JSON Web Key Set (fetched, cached and refreshed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub jwks_uri: Option<String>,
    /// The JSON Web Key Set itself, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub jwks: Option<String>,
    /// Claim holding the consumer name. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub consumer_claim: Option<String>,
    /// Claim holding the consumer's tier. Default `tier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub tier_claim: Option<String>,
    /// Tier of a token without the tier claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_tier: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Duration>,
}

/// What the controller observed about an AgentPool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolStatus {
    /// `Accepted`, `ResolvedRefs` and `Ready` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Endpoints currently ready to take requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub ready_endpoints: Option<i32>,
    /// Proxies subscribed to the controller: to the replica that wrote this status
    /// (the Lease holder) and, when it knows its peers, to the other replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub proxies: Option<i32>,
    /// Of `proxies`, those that acknowledged a route table holding the pool as it is
    /// now: equal to `proxies` once a change to the pool reached every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub updated_proxies: Option<i32>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}
