//! A compiled AgentPool: everything the proxy needs to route to, balance across and
//! protect one pool, with defaults filled in. Durations travel as whole milliseconds
//! (the `…Ms` fields on the wire).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::client_cert::ClientCertificates;
use super::units::{Millis, Percent, header_name, millis};
use super::upstream::{UpstreamAuth, UpstreamTls};
pub use crate::agent_pool::{Algorithm, BackendProtocol, FallbackWhen, HttpMethod};

/// A compiled AgentPool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Connect timeout.
    #[serde(rename = "connectTimeoutMs")]
    pub connect_timeout: Millis,
    /// Whole-request timeout (streamed responses: see `stream_max_duration`).
    #[serde(rename = "requestTimeoutMs")]
    pub request_timeout: Millis,
    /// Time from sending the request to the response headers.
    #[serde(
        default,
        rename = "firstByteTimeoutMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_byte_timeout: Option<Millis>,
    /// Longest pause between two response body chunks.
    #[serde(
        default,
        rename = "idleTimeoutMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Millis>,
    /// Longest streamed response; unlimited when absent.
    #[serde(
        default,
        rename = "streamMaxDurationMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_max_duration: Option<Millis>,
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
    /// When the fallback takes requests the pool cannot (empty: `Unavailable` alone,
    /// as tables written before this field meant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_when: Vec<FallbackWhen>,
    /// Agent answer statuses that send a request on to the fallback, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_statuses: Vec<u16>,
    /// Who may call.
    #[serde(default)]
    pub access: Access,
    /// JWT issuer accepted in addition to API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

impl Default for Pool {
    /// A round-robin pool with no backends, the default timeouts of `compile` (2 s to
    /// connect, 5 min in all) and nothing else set.
    fn default() -> Self {
        Self {
            key: String::new(),
            algorithm: Algorithm::default(),
            balancer: Balancer::default(),
            backends: Vec::new(),
            capabilities: Vec::new(),
            connect_timeout: Millis::at_least_one(2_000),
            request_timeout: Millis::at_least_one(300_000),
            first_byte_timeout: None,
            idle_timeout: None,
            stream_max_duration: None,
            queue: None,
            retries: None,
            health_check: None,
            outlier: None,
            fallback: None,
            fallback_when: Vec::new(),
            fallback_statuses: Vec::new(),
            access: Access::default(),
            jwt: None,
        }
    }
}

impl Pool {
    /// Whether requests go to the fallback (if any) for `reason`.
    pub fn falls_back_when(&self, reason: FallbackWhen) -> bool {
        self.fallback.is_some()
            && if self.fallback_when.is_empty() {
                reason == FallbackWhen::Unavailable
            } else {
                self.fallback_when.contains(&reason)
            }
    }

    /// Whether an agent's answer with `status` goes on to the fallback (if any).
    pub fn falls_back_on_status(&self, status: u16) -> bool {
        self.fallback.is_some() && self.fallback_statuses.binary_search(&status).is_ok()
    }

    /// Whether some backend rewrites the `model` field.
    pub fn rewrites_model(&self) -> bool {
        self.backends.iter().any(|b| b.model_rewrite.is_some())
    }

    /// All endpoints of all backends, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.backends.iter().flat_map(|b| b.endpoints.iter())
    }
}

/// Settings of the balancing algorithms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balancer {
    /// PeakEwma decay time constant.
    #[serde(rename = "ewmaDecayMs")]
    pub ewma_decay: Millis,
    /// PeakEwma latency assumed for a new endpoint.
    #[serde(rename = "ewmaDefaultLatencyMs")]
    pub ewma_default_latency: Millis,
    /// What ConsistentHash hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// ConsistentHash bound: most in-flight load of one endpoint over the mean.
    pub bounded_load: f64,
}

impl Default for Balancer {
    fn default() -> Self {
        Self {
            ewma_decay: Millis::at_least_one(10_000),
            ewma_default_latency: Millis::at_least_one(100),
            hash_on: None,
            bounded_load: 1.25,
        }
    }
}

/// The request attribute that identifies a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// A request header.
    Header(#[serde(with = "header_name")] HeaderName),
    /// A cookie.
    Cookie(String),
    /// The client IP address.
    ClientIp,
}

/// One backend of a pool with the endpoints it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTarget {
    /// `service/NAME` or `static` with its index, for logs and metrics.
    pub name: String,
    /// Relative share of the pool's requests.
    pub weight: NonZeroU32,
    /// Capabilities of this backend in addition to the pool's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Requests one endpoint serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<NonZeroU32>,
    /// Protocol spoken to the endpoints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: BackendProtocol,
    /// The name the `model` field of a JSON request body is rewritten to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_rewrite: Option<String>,
    /// Endpoints (ready, or terminating ones still draining), sorted, no duplicates.
    pub endpoints: Vec<Endpoint>,
    /// The `Host` every request carries (a backend by URL); `None`: the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTPS to the endpoints; `None`: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// A credential set on every request in place of the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<UpstreamAuth>,
}

impl Default for BackendTarget {
    /// Weight 1, no endpoints.
    fn default() -> Self {
        Self {
            name: String::new(),
            weight: NonZeroU32::MIN,
            capabilities: Vec::new(),
            max_concurrency: None,
            protocol: BackendProtocol::default(),
            model_rewrite: None,
            endpoints: Vec::new(),
            host: None,
            tls: None,
            auth: None,
        }
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queue {
    /// Most waiting requests.
    pub max_depth: u32,
    /// Longest wait.
    #[serde(rename = "timeoutMs")]
    pub timeout: Millis,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probed path.
    pub path: String,
    /// Probe interval.
    #[serde(rename = "intervalMs")]
    pub interval: Millis,
    /// Probe deadline.
    #[serde(rename = "timeoutMs")]
    pub timeout: Millis,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: NonZeroU32,
}

/// Passive outlier ejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// Consecutive failures that eject.
    pub consecutive_failures: NonZeroU32,
    /// Base ejection time.
    #[serde(rename = "baseEjectionMs")]
    pub base_ejection: Millis,
    /// Longest ejection.
    #[serde(rename = "maxEjectionMs")]
    pub max_ejection: Millis,
    /// Most endpoints ejected at once.
    pub max_ejection_percent: Percent,
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
    /// Consumers that may call: `namespace/name` for consumers from Secrets, `name`
    /// for JWT subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Namespaces, besides the pool's own, whose consumers `tiers` let in; `*` for
    /// every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The client certificates every request must present, when required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertificates>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            public: true,
            tiers: Vec::new(),
            consumers: Vec::new(),
            namespaces: Vec::new(),
            client_certificates: None,
        }
    }
}

impl Access {
    /// Whether `tiers` let in consumer `consumer` (`namespace/name`) calling pool
    /// `pool_key` (`namespace/name`), with its tier: it belongs to the pool's namespace
    /// or to one of [`Self::namespaces`]. A consumer without a namespace (a JWT
    /// subject, a hand-written table) counts as the pool's own.
    pub fn tier_admits(&self, pool_key: &str, consumer: &str) -> bool {
        let Some((namespace, _)) = consumer.split_once('/') else {
            return true;
        };
        pool_key
            .split_once('/')
            .is_some_and(|(own, _)| own == namespace)
            || self.namespaces.iter().any(|n| n == "*" || n == namespace)
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
    /// Allowed clock skew.
    #[serde(rename = "leewayMs", with = "millis")]
    pub leeway: Duration,
}
