//! The `RatePolicy` custom resource: who may send how much to which pools.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions;
use crate::duration::Duration;

/// Limits on the requests that reach the targeted pools.
// Two print columns share `type_ = "string"`, which clippy mistakes for a repeated
// attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "RatePolicy",
    namespaced,
    status = "RatePolicyStatus",
    shortname = "rp",
    category = "sluice",
    doc = "Rate limits for the AgentPools it targets: a key, tiers with limits, and where the counters live.",
    derive = "PartialEq",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        description = "Whether the policy compiled: see the Accepted condition's reason and message",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "Key", type_ = "string", json_path = ".spec.key.type"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.algorithm != 'SlidingWindow' || self.tiers.all(t, !has(t.limits) || t.limits.all(l, !has(l.burst)))",
        "message": "burst is only used with algorithm TokenBucket; a sliding window admits requests per period",
        "fieldPath": ".tiers",
    },
    {
        "rule": "self.tiers.all(a, self.tiers.exists_one(b, b.name == a.name))",
        "message": "tier names must be unique",
        "fieldPath": ".tiers",
    },
    {
        "rule": "!has(self.defaultTier) || self.tiers.exists(t, t.name == self.defaultTier)",
        "message": "defaultTier must name one of the tiers",
        "fieldPath": ".defaultTier",
    },
    {
        "rule": "!has(self.tokenEstimate) || self.tiers.exists(t, has(t.tokenLimits) && size(t.tokenLimits) > 0)",
        "message": "tokenEstimate is only used with tokenLimits",
        "fieldPath": ".tokenEstimate",
    },
    {
        "rule": "self.scope == 'Global' || self.failureMode == 'Open'",
        "message": "failureMode Closed is only used with scope Global: local counters need no store",
        "fieldPath": ".failureMode",
    },
]))]
pub struct RatePolicySpec {
    /// The AgentPools, in this namespace, the policy applies to.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// What a counter is kept per.
    pub key: RateKey,
    /// The algorithm that enforces the limits.
    #[serde(default)]
    pub algorithm: RateAlgorithm,
    /// The tiers; a request is limited by its consumer's tier, or `defaultTier`.
    #[schemars(length(min = 1, max = 16))]
    pub tiers: Vec<Tier>,
    /// The tier for requests whose consumer has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_tier: Option<String>,
    /// Where the counters live.
    #[serde(default)]
    pub scope: Scope,
    /// What happens to requests when the global store cannot be reached.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Warn before the hard limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<SoftLimit>,
    /// `Enforce` refuses requests over a limit. `DryRun` refuses none: requests are
    /// counted as if enforced, and one that would have been refused is reported in a
    /// header, the metrics and the access log.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Tokens reserved at admission for a request without `max_tokens`, settled when
    /// the agent reports its usage. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub token_estimate: Option<u32>,
}

/// A reference to an AgentPool in the policy's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TargetRef {
    /// Must be `AgentPool`.
    #[schemars(
        length(min = 1, max = 63),
        extend("x-kubernetes-validations" = [{
            "rule": "self == 'AgentPool'",
            "message": "must be AgentPool: a RatePolicy targets AgentPools",
        }]),
    )]
    pub kind: String,
    /// The AgentPool's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What a limit counts per.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'Header' || has(self.header)",
        "message": "header is required with type Header",
        "fieldPath": ".header",
    },
    {
        "rule": "!has(self.header) || self.type == 'Header'",
        "message": "header is only used with type Header",
        "fieldPath": ".header",
    },
]))]
pub struct RateKey {
    /// The kind of key.
    #[serde(rename = "type")]
    pub kind: RateKeyType,
    /// The header whose value is the key, for `type: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Keep separate counters per targeted pool (for example consumer × pool) instead
    /// of one counter shared by all of them.
    #[serde(
        default,
        rename = "perPool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub per_pool: bool,
}

/// The kinds of rate-limit key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateKeyType {
    /// The authenticated consumer (API key or JWT subject); requests without a
    /// consumer are keyed by client IP.
    Consumer,
    /// The client IP address.
    ClientIp,
    /// The value of a request header; requests without it (or with it empty) are
    /// keyed by client IP.
    Header,
    /// One counter for the whole pool.
    #[default]
    Pool,
}

/// A rate-limit algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateAlgorithm {
    /// GCRA: a rate with bursts up to `burst`.
    #[default]
    TokenBucket,
    /// N per window, weighting the previous window.
    SlidingWindow,
}

/// A named set of limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.limits) && size(self.limits) > 0) || (has(self.tokenLimits) && size(self.tokenLimits) > 0)",
    "message": "needs at least one of limits or tokenLimits",
}]))]
pub struct Tier {
    /// The tier's name, matched against the consumer's tier.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Request limits; every one must admit a request for it to pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub limits: Vec<Limit>,
    /// LLM token budgets, counted from the `usage` agents report.
    #[serde(default, rename = "tokenLimits", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub token_limits: Vec<TokenLimit>,
}

/// At most `tokens` LLM tokens (prompt and completion) per `period`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenLimit {
    /// Tokens allowed per period.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub tokens: u32,
    /// The period, for example `1m` or `24h`.
    pub period: Duration,
}

/// At most `requests` per `period`, with bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Limit {
    /// Requests allowed per period.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub requests: u32,
    /// The period, for example `1s` or `1m`.
    pub period: Duration,
    /// Largest burst, with `TokenBucket` only; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub burst: Option<u32>,
}

/// Where rate-limit counters live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// In each proxy replica.
    #[default]
    Local,
    /// Shared by all replicas through Redis.
    Global,
}

/// Behaviour when the global store is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Admit, applying local limits only.
    #[default]
    Open,
    /// Refuse with 503.
    Closed,
}

/// Whether a policy's limits refuse requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Enforcement {
    /// Requests over a limit are refused (429).
    #[default]
    Enforce,
    /// Requests are counted and reported, never refused: to try a policy out before
    /// enforcing it.
    DryRun,
}

/// A warning threshold below the hard limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SoftLimit {
    /// Percentage of the limit from which responses carry a warning header.
    #[schemars(range(min = 1, max = 100))]
    pub percent: u8,
}

/// What the controller observed about a RatePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatePolicyStatus {
    /// `Accepted` and `ResolvedRefs` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}
