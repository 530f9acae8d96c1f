//! Features the data plane of this build does not implement yet.
//!
//! The schema already holds them so that their shape is settled; until the proxy
//! implements one, a pool or policy using it is refused here with a "not supported yet"
//! error instead of being served without it. Each check goes when its feature lands.

use super::Cx;
use crate::table::Pool;

/// The "not supported yet" errors for `pool`; none when the proxy can serve it.
pub(super) fn unsupported_in_pool(pool: &Pool, cx: &mut Cx) {
    let checks = [
        (!pool.access.public, "spec.access", "access control"),
        (pool.jwt.is_some(), "spec.authentication", "authentication"),
    ];
    for (used, field, what) in checks {
        if used {
            cx.error(
                field,
                format!("{what} is not supported yet by this version of Sluice"),
            );
        }
    }
}

/// RatePolicies are not enforced by this build.
pub(super) fn unsupported_policy(cx: &mut Cx) {
    cx.error("spec", "RatePolicy enforcement is not supported yet by this version of Sluice; the policy is not applied");
}
