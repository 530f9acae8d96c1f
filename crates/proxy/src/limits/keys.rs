//! What the local key stores hold and forget, exported at each scrape: the keys
//! tracked now, and the keys forgotten to make room (idle ones lose nothing; active
//! ones start again from a full burst, the sign that `--rate-limit-max-keys` is too
//! small for the callers or that someone rotates keys).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use sluice_ratelimit::StoreStats;

use super::{Counter, LimitsContext};

impl Counter {
    /// The store's identity (its address, kept valid by the clone held beside it)
    /// and counts, for a local store.
    fn key_stats(&self) -> Option<(usize, StoreStats)> {
        match self {
            Self::Gcra(s) => Some((Arc::as_ptr(s) as usize, s.stats())),
            Self::Window(s) => Some((Arc::as_ptr(s) as usize, s.stats())),
            Self::Tokens(s) => Some((Arc::as_ptr(s) as usize, s.stats())),
            Self::Global(_) | Self::GlobalTokens(_) | Self::NoStore => None,
        }
    }
}

/// The counts last exported, per store, with the store itself so that its address
/// is not reused while it is remembered.
pub(super) type Exported = HashMap<usize, (Counter, StoreStats)>;

impl LimitsContext {
    /// Sets `sluice_ratelimit_keys` and adds what the stores evicted since the last
    /// call to `sluice_ratelimit_key_events_total`. A store dropped between two calls
    /// takes its last few events with it.
    pub(crate) fn export_key_stats(&self) {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Exported::with_capacity(stores.len());
        let mut keys = 0;
        for counter in stores.values() {
            let Some((id, now)) = counter.key_stats() else {
                continue;
            };
            let before = exported.get(&id).map(|(_, s)| *s).unwrap_or_default();
            keys += now.keys;
            for (event, after, was) in [
                ("evicted_idle", now.evicted, before.evicted),
                ("evicted_active", now.evicted_active, before.evicted_active),
                ("untracked", now.untracked, before.untracked),
            ] {
                if after > was {
                    self.metrics
                        .key_events
                        .with_label_values(&[event])
                        .inc_by(after - was);
                }
            }
            next.insert(id, (counter.clone(), now));
        }
        *exported = next;
        self.metrics
            .ratelimit_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }
}
