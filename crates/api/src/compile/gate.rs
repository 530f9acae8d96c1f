//! Features the data plane of this build does not implement yet.
//!
//! The schema already holds them so that their shape is settled; until the proxy
//! implements one, a pool or policy using it is refused here with a "not supported yet"
//! error instead of being served without it. Each check goes when its feature lands.

use super::Cx;
use crate::rate_policy::{RateAlgorithm, RatePolicySpec, Scope};

/// The "not supported yet" errors for `policy`.
pub(super) fn unsupported_in_policy(policy: &RatePolicySpec, cx: &mut Cx) {
    if policy.scope == Scope::Global && policy.algorithm == RateAlgorithm::SlidingWindow {
        cx.error(
            "spec.algorithm",
            "SlidingWindow with scope Global is not supported yet by this version of Sluice; use TokenBucket",
        );
    }
}
