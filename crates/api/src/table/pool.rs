//! A compiled AgentPool: everything the proxy needs to route to, balance across and
//! protect one pool, with defaults filled in and durations in milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::agent_pool::{Algorithm, BackendProtocol};

/// A compiled AgentPool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// `namespace/name` of the AgentPool.
    pub key: String,
    /// How requests are spread.
    pub algorithm: Algorithm,
    /// Algorithm settings.
    #[serde(default)]
    pub balancer: Balancer,
    /// Backends with their resolved endpoints, in spec order.
    pub backends: Vec<BackendTarget>,
    /// Capabilities of every backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout in milliseconds (streamed responses: see
    /// `stream_max_duration_ms`).
    pub request_timeout_ms: u64,
    /// Time from sending the request to the response headers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest pause between two response body chunks, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Longest streamed response, in milliseconds; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_max_duration_ms: Option<u64>,
    /// The bounded queue for when every endpoint is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queue>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// Key of the pool that takes requests when this one has no healthy capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Who may call.
    #[serde(default)]
    pub access: Access,
    /// JWT issuer accepted in addition to API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

impl Pool {
    /// All endpoints of all backends, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.backends.iter().flat_map(|b| b.endpoints.iter())
    }
}

/// Settings of the balancing algorithms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balancer {
    /// PeakEwma decay time constant in milliseconds.
    pub ewma_decay_ms: u64,
    /// PeakEwma latency assumed for a new endpoint, in milliseconds.
    pub ewma_default_latency_ms: u64,
    /// What ConsistentHash hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// ConsistentHash bound: most in-flight load of one endpoint over the mean.
    pub bounded_load: f64,
}

impl Default for Balancer {
    fn default() -> Self {
        Self {
            ewma_decay_ms: 10_000,
            ewma_default_latency_ms: 100,
            hash_on: None,
            bounded_load: 1.25,
        }
    }
}

/// The request attribute that identifies a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client IP address.
    ClientIp,
}

/// One backend of a pool with the endpoints it resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTarget {
    /// `service/NAME` or `static` with its index, for logs and metrics.
    pub name: String,
    /// Relative share for the `Weighted` algorithm, at least 1.
    pub weight: u32,
    /// Capabilities of this backend in addition to the pool's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Requests one endpoint serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Protocol spoken to the endpoints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: BackendProtocol,
    /// Endpoints (ready, or terminating ones still draining), sorted, no duplicates.
    pub endpoints: Vec<Endpoint>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One place a request can be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `host:port`, or `[ipv6]:port`.
    pub address: String,
    /// The endpoint is shutting down: it gets no new requests, in-flight ones finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminating: bool,
    /// The zone the endpoint runs in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Endpoint {
    /// A ready endpoint at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }
}

/// The bounded wait queue of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queue {
    /// Most waiting requests.
    pub max_depth: u32,
    /// Longest wait in milliseconds.
    pub timeout_ms: u64,
    /// Priority of requests without a tier.
    pub default_priority: u32,
    /// Priority by consumer tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tier_priorities: BTreeMap<String, u32>,
}

/// When failed attempts are retried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Most attempts after the first.
    pub attempts: u32,
    /// Retried response statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// Retries as a share of requests.
    pub budget_ratio: f64,
    /// Retries per second always allowed.
    pub min_retries_per_second: u32,
}

/// Active health checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probed path.
    pub path: String,
    /// Probe interval in milliseconds.
    pub interval_ms: u64,
    /// Probe deadline in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

/// Passive outlier ejection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// Consecutive failures that eject.
    pub consecutive_failures: u32,
    /// Base ejection time in milliseconds.
    pub base_ejection_ms: u64,
    /// Longest ejection in milliseconds.
    pub max_ejection_ms: u64,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

/// Who may call a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Anyone may call.
    pub public: bool,
    /// Tiers that may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Consumers that may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            public: true,
            tiers: Vec::new(),
            consumers: Vec::new(),
        }
    }
}

/// A JWT issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Jwt {
    /// Required issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Claim holding the consumer name.
    pub consumer_claim: String,
    /// Claim holding the tier.
    pub tier_claim: String,
    /// Tier of tokens without the tier claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    /// Allowed clock skew in milliseconds.
    pub leeway_ms: u64,
}
