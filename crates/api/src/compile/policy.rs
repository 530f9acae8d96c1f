//! Compiling RatePolicies.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use http::HeaderName;

use super::pool::http_token;
use super::{Cx, is_name, millis};
use crate::RatePolicy;
use crate::diagnostics::Diagnostic;
use crate::rate_policy::{FailureMode, RateAlgorithm, RateKeyType, Scope};
use crate::table::{Millis, Policy, RequestLimit, Threshold, TierLimits, TokenLimit, rules};

pub(super) fn compile_policies(
    policies: &[RatePolicy],
    pool_keys: &BTreeSet<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Policy> {
    let mut out: Vec<Policy> = Vec::new();
    let mut sorted: Vec<&RatePolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    for policy in sorted {
        let mut cx = Cx::new(
            "RatePolicy",
            policy.metadata.namespace.as_deref(),
            policy.metadata.name.as_deref(),
        );
        if let Some(compiled) = compile_policy(policy, pool_keys, &mut cx) {
            if out.last().is_some_and(|p| p.key == compiled.key) {
                cx.error(
                    "metadata.name",
                    "this RatePolicy is defined twice; the later definition is ignored",
                );
            } else {
                out.push(compiled);
            }
        }
        diags.extend(cx.diags);
    }
    out
}

fn compile_policy(policy: &RatePolicy, pool_keys: &BTreeSet<&str>, cx: &mut Cx) -> Option<Policy> {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        cx.error("metadata.name", "is missing");
        return None;
    }
    if super::bounds::refused(crate::schema::Kind::RatePolicy, policy, cx) {
        return None;
    }
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let spec = &policy.spec;

    let mut pools = Vec::new();
    if spec.target_refs.is_empty() {
        cx.error("spec.targetRefs", "needs at least one AgentPool");
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        if target.kind != "AgentPool" {
            cx.error(
                &format!("{field}.kind"),
                format!("{:?} is not AgentPool", target.kind),
            );
            continue;
        }
        let key = format!("{namespace}/{}", target.name);
        if pool_keys.contains(key.as_str()) {
            pools.push(key);
        } else {
            cx.warning(
                &format!("{field}.name"),
                format!("AgentPool {key} is not in the table (missing or invalid)"),
            );
        }
    }
    pools.sort();
    pools.dedup();

    let header = match (spec.key.kind, &spec.key.header) {
        (RateKeyType::Header, Some(h)) if http_token(h) => {
            HeaderName::from_bytes(h.as_bytes()).ok()
        }
        (RateKeyType::Header, Some(h)) => {
            cx.error(
                "spec.key.header",
                format!("{h:?} is not a valid header name"),
            );
            None
        }
        (RateKeyType::Header, None) => {
            cx.error("spec.key.header", "is required with type Header");
            None
        }
        (_, Some(_)) => {
            cx.error("spec.key.header", "is only used with type Header");
            None
        }
        (_, None) => None,
    };
    if spec.key.kind == RateKeyType::Pool && spec.key.per_pool {
        cx.warning("spec.key.perPool", "a Pool key is always per pool");
    }

    let mut tiers = BTreeMap::new();
    for (i, tier) in spec.tiers.iter().enumerate() {
        let field = format!("spec.tiers[{i}]");
        if !is_name(&tier.name) {
            cx.error(
                &format!("{field}.name"),
                format!("{:?} is not a valid tier name", tier.name),
            );
            continue;
        }
        if tier.limits.is_empty() && tier.token_limits.is_empty() {
            cx.error(&field, "needs at least one of limits or tokenLimits");
        }
        let mut limits = TierLimits::default();
        for (j, l) in tier.limits.iter().enumerate() {
            let f = format!("{field}.limits[{j}]");
            let period = period(l.period, &format!("{f}.period"), cx);
            let requests = NonZeroU32::new(l.requests);
            if requests.is_none() {
                cx.error(&format!("{f}.requests"), "must be at least 1");
            }
            let burst = l.burst.map(NonZeroU32::new);
            if burst == Some(None) {
                cx.error(&format!("{f}.burst"), "must be at least 1");
            }
            if burst.is_some() && spec.algorithm == RateAlgorithm::SlidingWindow {
                cx.error(
                    &format!("{f}.burst"),
                    "is only used with algorithm TokenBucket; a sliding window admits `requests` per `period`",
                );
            }
            let Some(requests) = requests else { continue };
            if let Err(e) = rules::request_limit(spec.algorithm, requests, period) {
                cx.error(&format!("{f}.requests"), e.to_string());
            }
            limits.requests.push(RequestLimit {
                requests,
                period,
                burst: burst.flatten().unwrap_or(requests),
            });
        }
        for (j, l) in tier.token_limits.iter().enumerate() {
            let f = format!("{field}.tokenLimits[{j}]");
            let period = period(l.period, &format!("{f}.period"), cx);
            let Some(tokens) = NonZeroU32::new(l.tokens) else {
                cx.error(&format!("{f}.tokens"), "must be at least 1");
                continue;
            };
            if let Err(e) = rules::token_limit(tokens, period) {
                cx.error(&format!("{f}.tokens"), e.to_string());
            }
            limits.tokens.push(TokenLimit { tokens, period });
        }
        if tiers.insert(tier.name.clone(), limits).is_some() {
            cx.error(
                &format!("{field}.name"),
                format!("tier {:?} appears twice", tier.name),
            );
        }
    }
    let default_tier = match (&spec.default_tier, spec.tiers.as_slice()) {
        (Some(t), _) => {
            if !tiers.contains_key(t) {
                cx.error("spec.defaultTier", format!("{t:?} is not one of the tiers"));
            }
            t.clone()
        }
        (None, [only]) => only.name.clone(),
        (None, _) => {
            if tiers.contains_key("standard") {
                "standard".to_owned()
            } else {
                cx.error(
                    "spec.defaultTier",
                    "is required when there are several tiers and none is named standard",
                );
                String::new()
            }
        }
    };
    let soft_percent = spec.soft_limit.as_ref().and_then(|s| {
        let threshold = Threshold::new(u64::from(s.percent));
        if threshold.is_none() {
            cx.error(
                "spec.softLimit.percent",
                format!("{} must be between 1 and 100", s.percent),
            );
        }
        threshold
    });
    if spec.failure_mode == FailureMode::Closed && spec.scope == Scope::Local {
        cx.error(
            "spec.failureMode",
            "Closed is only used with scope Global: local counters need no store",
        );
    }
    if spec.token_estimate.is_some() && spec.tiers.iter().all(|t| t.token_limits.is_empty()) {
        cx.error("spec.tokenEstimate", "is only used with tokenLimits");
    }
    let token_estimate = match NonZeroU32::new(spec.token_estimate.unwrap_or(1000)) {
        Some(n) => n,
        None => {
            cx.error("spec.tokenEstimate", "must be at least 1");
            NonZeroU32::MIN
        }
    };

    super::gate::unsupported_in_policy(spec, cx);
    if cx.has_errors() {
        return None;
    }
    Some(Policy {
        key: format!("{namespace}/{name}"),
        pools,
        key_type: spec.key.kind,
        header,
        per_pool: spec.key.per_pool,
        algorithm: spec.algorithm,
        tiers,
        default_tier,
        scope: spec.scope,
        failure_mode: spec.failure_mode,
        soft_percent,
        token_estimate,
        enforcement: spec.enforcement,
    })
}

fn period(d: crate::Duration, field: &str, cx: &mut Cx) -> Millis {
    let Some(period) = Millis::new(millis(d)) else {
        cx.error(field, "must be greater than 0");
        return Millis::MIN;
    };
    if let Err(e) = rules::period(period) {
        cx.error(field, e.to_string());
    }
    period
}
