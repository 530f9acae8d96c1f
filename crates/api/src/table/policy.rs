//! Compiled RatePolicies and consumers.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::units::{KeyHash, Millis, Threshold, header_name};

pub use crate::rate_policy::{Enforcement, FailureMode, RateAlgorithm, RateKeyType, Scope};

/// A compiled RatePolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `namespace/name` of the RatePolicy.
    pub key: String,
    /// Keys of the pools it applies to, sorted.
    pub pools: Vec<String>,
    /// What a counter is kept per.
    pub key_type: RateKeyType,
    /// The header of `Header` keys.
    #[serde(
        default,
        with = "header_name::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub header: Option<HeaderName>,
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
    pub soft_percent: Option<Threshold>,
    /// Tokens reserved for a request without `max_tokens`.
    pub token_estimate: NonZeroU32,
    /// Whether the limits refuse, or only count and report.
    #[serde(default, skip_serializing_if = "is_enforced")]
    pub enforcement: Enforcement,
}

fn is_enforced(e: &Enforcement) -> bool {
    *e == Enforcement::Enforce
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

/// At most `requests` per `period`, bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimit {
    /// Requests per period.
    pub requests: NonZeroU32,
    /// The period.
    #[serde(rename = "periodMs")]
    pub period: Millis,
    /// Largest burst.
    pub burst: NonZeroU32,
}

/// At most `tokens` LLM tokens per `period`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenLimit {
    /// Tokens per period.
    pub tokens: NonZeroU32,
    /// The period.
    #[serde(rename = "periodMs")]
    pub period: Millis,
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
    /// SHA-256 hashes of the consumer's API keys (lower-case hex on the wire).
    pub key_hashes: Vec<KeyHash>,
    /// Pool keys the consumer is limited to; any pool its access allows when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
}
