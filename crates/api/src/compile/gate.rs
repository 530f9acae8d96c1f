//! Features the data plane of this build does not implement yet.
//!
//! The schema already holds them so that their shape is settled; until the proxy
//! implements one, a pool or policy using it is refused here with a "not supported yet"
//! error instead of being served without it. Each check goes when its feature lands.

use super::Cx;
use crate::rate_policy::{RateAlgorithm, RatePolicySpec, Scope};
use crate::table::Pool;

/// The "not supported yet" errors for `pool`; none when the proxy can serve it.
pub(super) fn unsupported_in_pool(pool: &Pool, cx: &mut Cx) {
    if let Some(uri) = pool.jwt.as_ref().and_then(|j| j.jwks_uri.as_deref())
        && uri.starts_with("https://")
    {
        cx.error(
            "spec.authentication.jwt.jwksUri",
            "fetching a JWKS over https is not supported yet by this version of Sluice; use http:// inside the cluster or an inline jwks",
        );
    }
}

/// The "not supported yet" errors for `policy`.
pub(super) fn unsupported_in_policy(policy: &RatePolicySpec, cx: &mut Cx) {
    if policy.scope == Scope::Global && policy.algorithm == RateAlgorithm::SlidingWindow {
        cx.error(
            "spec.algorithm",
            "SlidingWindow with scope Global is not supported yet by this version of Sluice; use TokenBucket",
        );
    }
}
