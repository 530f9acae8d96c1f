//! The `AgentPool` custom resource: a set of agent endpoints and how to reach them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Which requests an AgentPool serves and where they go.
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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolSpec {
    /// Which requests this pool serves. A request matches when it matches any entry.
    #[schemars(length(min = 1, max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Where matched requests go: Services (resolved through their EndpointSlices) or
    /// static `host:port` endpoints.
    #[schemars(length(min = 1, max = 16))]
    pub backends: Vec<Backend>,
    /// How a request is spread over the endpoints.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Deadlines applied to each forwarded request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

/// One way a request can match a pool. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
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
pub struct Backend {
    /// A Service in the pool's namespace, resolved through its EndpointSlices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// Static endpoints as `host:port`, for use without Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub endpoints: Vec<String>,
    /// Relative share of traffic this backend receives with the `Weighted` algorithm.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub weight: u32,
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
    pub port: IntOrString,
}

/// How requests are spread over a pool's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// The balancing algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
}

/// A load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Algorithm {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin over backends by their `weight`, then round robin
    /// over each backend's endpoints.
    Weighted,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency.
    PeakEwma,
    /// Session affinity by a consistent hash.
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
    /// Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
}

/// What the controller observed about an AgentPool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolStatus {
    /// `Accepted`, `ResolvedRefs` and `Ready` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Endpoints currently ready to take requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_endpoints: Option<i32>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
