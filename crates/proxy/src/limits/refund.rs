//! What an admitted request was charged by its pool's request limits, local and
//! global, kept so that a request that moves to another pool (a fallback) gives it
//! back: the pool it leaves did not serve it, and a refused request charges nothing.

use std::sync::Arc;

use sluice_ratelimit::{Charges, GlobalCharge, GlobalKey, GlobalLimiter, KeyHash, Limit};

use super::Counter;
use crate::clock::SharedClock;

/// The request-limit charges of one admitted request. Dropping it keeps them.
#[derive(Debug, Default)]
pub struct Charged {
    /// The local limits charged, in the order [`Charges`] records them.
    pub(super) local: Vec<(Counter, KeyHash)>,
    pub(super) charges: Charges,
    pub(super) global: Vec<(Arc<GlobalLimiter<SharedClock>>, GlobalKey, GlobalCharge)>,
    pub(super) clock: Option<SharedClock>,
}

impl Charged {
    /// Records the charges of the local limits `counters` (in the order checked).
    pub(super) fn local(&mut self, counters: Vec<(Counter, KeyHash)>, charges: Charges) {
        self.local = counters;
        self.charges = charges;
    }

    /// Whether nothing was charged.
    pub fn is_empty(&self) -> bool {
        self.charges.is_empty() && self.global.is_empty()
    }

    /// Gives every charge back: exactly what was taken when given back at once,
    /// what has not drained yet when given back later.
    pub fn refund(&mut self) {
        let Charged {
            local,
            charges,
            global,
            clock,
        } = std::mem::take(self);
        for (limiter, key, charge) in global {
            limiter.refund(&key, charge);
        }
        if charges.is_empty() {
            return;
        }
        let limits: Vec<Limit<'_>> = local
            .iter()
            .filter_map(|(counter, key)| match counter {
                Counter::Gcra(store) => Some(Limit::keyed(store.as_ref(), *key)),
                Counter::Window(store) => Some(Limit::keyed(store.as_ref(), *key)),
                _ => None,
            })
            .collect();
        let now = clock.map_or(0, |c| c.now_nanos());
        charges.refund(&limits, now);
    }
}
