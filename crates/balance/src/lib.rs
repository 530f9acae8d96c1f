//! Endpoint selection for Sluice: which endpoint of a pool serves the next request.
//!
//! The proxy builds one selector per pool each time the route table changes and
//! swaps it in whole (through `ArcSwap`), so a selector never changes its endpoint
//! set after construction. Requests then call [`Selector::pick`] from many threads at
//! once: picking takes no lock and allocates nothing.
//!
//! A selector returns an index into the pool's endpoint slice, the one it was built
//! for. The caller describes the request with a [`Pick`]: a random value (so tests
//! are deterministic), an optional hash key for session affinity, the time, and an
//! `accept` filter that rejects endpoints which must not be chosen now (full at
//! `maxConcurrency`, ejected, unhealthy, terminating). A selector never returns a
//! rejected index; `None` means no endpoint is acceptable now and the caller should
//! queue or fail over (fallback pool, 503). When its first choice is rejected, a
//! selector tries a few random endpoints and then scans the set once, so `accept`
//! is called at most a few times plus once or twice per endpoint.
//!
//! Load-aware selectors read the live state of a [`PoolLoad`] ([`load`]): requests
//! in flight and a peak-EWMA latency estimate per endpoint, kept across table
//! versions for the endpoints that persist.
//!
//! | algorithm | module | build cost | pick cost (first choice accepted) |
//! |---|---|---|---|
//! | [`RoundRobin`] | [`round_robin`] | O(1) | one `fetch_add` |
//! | [`Weighted`] (smooth weighted round robin) | [`weighted`] | O(cycle × endpoints) | one `fetch_add` + one read |
//! | [`LeastRequest`] (power of two choices) | [`p2c`] | O(1) | two in-flight reads |
//! | [`PeakEwma`] (P2C on latency × load) | [`peak_ewma`] | O(1) | two cost reads (an `exp` each) |
//! | [`ConsistentHash`] (bounded load) | [`consistent_hash`] | O(endpoints × vnodes × log) | a binary search + a short ring walk |
//!
//! Weights are [`NonZeroU32`](std::num::NonZeroU32): a weight of zero cannot be
//! expressed, so an endpoint that should take no traffic is left out of the set.
//! Every selector honours them: [`Weighted`] is the weighted rotation (what
//! [`RoundRobin`] becomes with unequal weights), [`LeastRequest::weighted`] and
//! [`PeakEwma::weighted`] draw candidates by weight and compare load per unit of
//! weight, and [`ConsistentHash::weighted`] gives each endpoint ring points in
//! proportion to its weight.

pub mod consistent_hash;
pub mod health;
pub mod load;
pub mod outlier;
pub mod p2c;
pub mod peak_ewma;
mod probe;
pub mod queue;
pub mod retry_budget;
pub mod round_robin;
pub mod weighted;
mod weights;

pub use consistent_hash::{ConsistentHash, HashConfig, LoadFactor, hash_key};
pub use health::{CheckResult, Health, HealthConfig, HealthState, StartAs};
pub use load::{EndpointLoad, InFlight, LoadConfig, PoolLoad};
pub use outlier::{Ejection, EjectionReason, Outcome, OutlierConfig, OutlierDetector};
pub use p2c::LeastRequest;
pub use peak_ewma::PeakEwma;
pub use queue::{QueueError, WaitQueue, Waiter};
pub use retry_budget::{RetryBudget, RetryBudgetConfig, RetryBudgetError};
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// Chooses an endpoint of a fixed set for each request.
///
/// Implementations are immutable apart from internal atomics: they are built once
/// per endpoint set, shared between threads, and [`pick`](Selector::pick) never
/// blocks.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// Returns the index of the endpoint that should serve the request described
    /// by `request`, or `None` when no endpoint is acceptable (or the set is empty).
    ///
    /// The index is always `< self.len()` and accepted by `request.accept`. Given
    /// the same `request`, the same load state and (for the rotations) the same
    /// position, the answer is the same.
    fn pick(&self, request: &Pick<'_>) -> Option<usize>;

    /// Returns the number of endpoints this selector was built for.
    fn len(&self) -> usize;

    /// Returns `true` when the selector has no endpoint to pick.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a selector may know about one request.
///
/// Build it with [`Pick::new`] and the `with_`/`at`/`accepting` methods, or with a
/// struct literal.
#[derive(Clone, Copy)]
pub struct Pick<'a> {
    /// A fresh random value per request (e.g. `fastrand::u64(..)`); selectors
    /// derive every random choice from it.
    pub random: u64,
    /// Session-affinity key for [`ConsistentHash`], computed with [`hash_key`]
    /// from a header, cookie or client address. Other selectors ignore it.
    pub hash: Option<u64>,
    /// Now, in nanoseconds of the monotonic clock that also times
    /// [`InFlight::finish`]. Only [`PeakEwma`] reads it.
    pub now: u64,
    /// Whether endpoint `index` may be chosen now.
    pub accept: &'a dyn Fn(usize) -> bool,
}

impl Pick<'static> {
    /// A request with the given random value, no hash key, time zero, and every
    /// endpoint acceptable.
    #[must_use]
    pub fn new(random: u64) -> Self {
        Self {
            random,
            hash: None,
            now: 0,
            accept: &accept_all,
        }
    }
}

impl<'a> Pick<'a> {
    /// Sets the session-affinity key.
    #[must_use]
    pub fn with_hash(self, hash: u64) -> Self {
        Self {
            hash: Some(hash),
            ..self
        }
    }

    /// Sets the current time, in nanoseconds.
    #[must_use]
    pub fn at(self, now: u64) -> Self {
        Self { now, ..self }
    }

    /// Sets the filter of endpoints that may be chosen.
    #[must_use]
    pub fn accepting<'b>(self, accept: &'b dyn Fn(usize) -> bool) -> Pick<'b> {
        Pick {
            random: self.random,
            hash: self.hash,
            now: self.now,
            accept,
        }
    }

    /// Whether endpoint `index` may be chosen.
    #[must_use]
    pub fn accepts(&self, index: usize) -> bool {
        (self.accept)(index)
    }
}

impl Default for Pick<'static> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl std::fmt::Debug for Pick<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("random", &self.random)
            .field("hash", &self.hash)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn accept_all(_: usize) -> bool {
    true
}
