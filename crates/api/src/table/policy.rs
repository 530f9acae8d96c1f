//! Compiled RatePolicies and consumers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::rate_policy::{FailureMode, RateAlgorithm, RateKeyType, Scope};

/// A compiled RatePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `namespace/name` of the RatePolicy.
    pub key: String,
    /// Keys of the pools it applies to, sorted.
    pub pools: Vec<String>,
    /// What a counter is kept per.
    pub key_type: RateKeyType,
    /// Header name (lower case) for `Header` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Separate counters per pool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_pool: bool,
    /// Algorithm of the request limits.
    pub algorithm: RateAlgorithm,
    /// Limits by tier name.
    pub tiers: BTreeMap<String, TierLimits>,
    /// Tier of requests whose consumer has none (or that have no consumer).
    pub default_tier: String,
    /// Where counters live.
    pub scope: Scope,
    /// Behaviour when the global store is unreachable.
    pub failure_mode: FailureMode,
    /// Warning threshold in percent of a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_percent: Option<u8>,
    /// Tokens reserved for a request without `max_tokens`.
    pub token_estimate: u32,
}

/// The limits of one tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierLimits {
    /// Request limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RequestLimit>,
    /// Token limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenLimit>,
}

/// At most `requests` per `period_ms`, bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimit {
    /// Requests per period (at least 1).
    pub requests: u32,
    /// Period in milliseconds (at least 1).
    pub period_ms: u64,
    /// Largest burst (at least 1).
    pub burst: u32,
}

/// At most `tokens` LLM tokens per `period_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenLimit {
    /// Tokens per period (at least 1).
    pub tokens: u32,
    /// Period in milliseconds (at least 1).
    pub period_ms: u64,
}

/// A consumer: a named caller with a tier and API keys (stored hashed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// The consumer's name.
    pub name: String,
    /// The consumer's tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// SHA-256 hashes (lower-case hex) of the consumer's API keys.
    pub key_hashes: Vec<String>,
    /// Pool keys the consumer is limited to; any pool its access allows when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
}
