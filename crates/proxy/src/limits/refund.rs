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
    /// Each set of local limits charged together: the limits, in the order
    /// [`Charges`] records them, and the charges.
    pub(super) local: Vec<(Vec<(Counter, KeyHash)>, Charges)>,
    pub(super) global: Vec<(Arc<GlobalLimiter<SharedClock>>, GlobalKey, GlobalCharge)>,
    pub(super) clock: Option<SharedClock>,
}

impl Charged {
    /// Records the charges of the local limits `counters` (in the order checked).
    pub(super) fn local(&mut self, counters: Vec<(Counter, KeyHash)>, charges: Charges) {
        if !charges.is_empty() {
            self.local.push((counters, charges));
        }
    }

    /// Adds the charges of another check of the same request (a dry-run policy's).
    pub(super) fn join(&mut self, mut other: Charged) {
        self.local.append(&mut other.local);
        self.global.append(&mut other.global);
        if self.clock.is_none() {
            self.clock = other.clock.take();
        }
    }

    /// Whether nothing was charged.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }

    /// Gives every charge back: exactly what was taken when given back at once,
    /// what has not drained yet when given back later.
    pub fn refund(&mut self) {
        let Charged {
            local,
            global,
            clock,
        } = std::mem::take(self);
        for (limiter, key, charge) in global {
            limiter.refund(&key, charge);
        }
        let now = clock.map_or(0, |c| c.now_nanos());
        for (counters, charges) in local {
            let limits: Vec<Limit<'_>> = counters
                .iter()
                .filter_map(|(counter, key)| match counter {
                    Counter::Gcra(store) => Some(Limit::keyed(store.as_ref(), *key)),
                    Counter::Window(store) => Some(Limit::keyed(store.as_ref(), *key)),
                    _ => None,
                })
                .collect();
            charges.refund(&limits, now);
        }
    }
}
