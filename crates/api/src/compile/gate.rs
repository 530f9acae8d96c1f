//! Features the data plane of this build does not implement yet.
//!
//! The schema already holds them so that their shape is settled; until the proxy
//! implements one, a pool or policy using it is refused here with a "not supported yet"
//! error instead of being served without it. Each check goes when its feature lands.

use super::Cx;
use crate::table::{Algorithm, BackendProtocol, Pool};

/// The "not supported yet" errors for `pool`; empty when the proxy can serve it.
pub(super) fn unsupported_in_pool(pool: &Pool, cx: &mut Cx) {
    let mut refuse = |field: &str, what: &str| {
        cx.error(
            field,
            format!("{what} is not supported yet by this version of Sluice"),
        );
    };
    match pool.algorithm {
        Algorithm::RoundRobin | Algorithm::Weighted => {}
        Algorithm::LeastRequest | Algorithm::PeakEwma | Algorithm::ConsistentHash => {
            refuse("spec.loadBalancing.algorithm", pool.algorithm.as_str());
        }
    }
    if !pool.capabilities.is_empty() || pool.backends.iter().any(|b| !b.capabilities.is_empty()) {
        refuse("spec.capabilities", "capability routing");
    }
    if pool.backends.iter().any(|b| b.max_concurrency.is_some()) {
        refuse("spec.backends[].maxConcurrency", "maxConcurrency");
    }
    if pool
        .backends
        .iter()
        .any(|b| b.protocol == BackendProtocol::H2c)
    {
        refuse("spec.backends[].protocol", "H2c");
    }
    if pool.first_byte_timeout_ms.is_some()
        || pool.idle_timeout_ms.is_some()
        || pool.stream_max_duration_ms.is_some()
    {
        refuse("spec.timeouts", "firstByte, idle and streamMaxDuration");
    }
    let checks = [
        (pool.queue.is_some(), "spec.queue", "queue"),
        (pool.retries.is_some(), "spec.retries", "retries"),
        (
            pool.health_check.is_some(),
            "spec.healthCheck",
            "healthCheck",
        ),
        (
            pool.outlier.is_some(),
            "spec.outlierDetection",
            "outlierDetection",
        ),
        (pool.fallback.is_some(), "spec.fallback", "fallback"),
        (!pool.access.public, "spec.access", "access control"),
        (pool.jwt.is_some(), "spec.authentication", "authentication"),
    ];
    for (used, field, what) in checks {
        if used {
            refuse(field, what);
        }
    }
}

/// RatePolicies are not enforced by this build.
pub(super) fn unsupported_policy(cx: &mut Cx) {
    cx.error("spec", "RatePolicy enforcement is not supported yet by this version of Sluice; the policy is not applied");
}
