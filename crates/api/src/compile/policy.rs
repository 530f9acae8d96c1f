//! Compiling RatePolicies.

use std::collections::{BTreeMap, BTreeSet};

use super::pool::http_token;
use super::{Cx, is_name, millis};
use crate::RatePolicy;
use crate::diagnostics::Diagnostic;
use crate::rate_policy::RateKeyType;
use crate::table::{Policy, RequestLimit, TierLimits, TokenLimit};

/// The longest period a limit may have.
const MAX_PERIOD_MS: u64 = 365 * 24 * 3_600_000;

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
        (RateKeyType::Header, Some(h)) if http_token(h) => Some(h.to_ascii_lowercase()),
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
            let period_ms = period(l.period, &format!("{f}.period"), cx);
            if l.requests == 0 {
                cx.error(&format!("{f}.requests"), "must be at least 1");
            }
            if l.burst == Some(0) {
                cx.error(&format!("{f}.burst"), "must be at least 1");
            }
            limits.requests.push(RequestLimit {
                requests: l.requests,
                period_ms,
                burst: l.burst.unwrap_or(l.requests),
            });
        }
        for (j, l) in tier.token_limits.iter().enumerate() {
            let f = format!("{field}.tokenLimits[{j}]");
            let period_ms = period(l.period, &format!("{f}.period"), cx);
            if l.tokens == 0 {
                cx.error(&format!("{f}.tokens"), "must be at least 1");
            }
            limits.tokens.push(TokenLimit {
                tokens: l.tokens,
                period_ms,
            });
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
    let soft_percent = spec.soft_limit.as_ref().map(|s| s.percent);
    if let Some(p) = soft_percent
        && !(1..=100).contains(&p)
    {
        cx.error(
            "spec.softLimit.percent",
            format!("{p} must be between 1 and 100"),
        );
    }
    let token_estimate = spec.token_estimate.unwrap_or(1000);
    if token_estimate == 0 {
        cx.error("spec.tokenEstimate", "must be at least 1");
    }

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
    })
}

fn period(d: crate::Duration, field: &str, cx: &mut Cx) -> u64 {
    let ms = millis(d);
    if ms == 0 {
        cx.error(field, "must be greater than 0");
    } else if ms > MAX_PERIOD_MS {
        cx.error(field, "is longer than 365 days");
    }
    ms.max(1)
}
