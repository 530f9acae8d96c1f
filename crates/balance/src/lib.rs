//! Endpoint selection for Sluice: which endpoint of a pool serves the next request.
//!
//! The proxy builds one selector per pool each time the route table changes and
//! swaps it in whole (through `ArcSwap`), so a selector never changes its endpoint
//! set after construction. Requests then call [`Selector::pick`] from many threads at
//! once: picking takes no lock, touches one atomic counter and does O(1) work.
//!
//! A selector knows nothing about the endpoints themselves. It returns an index into
//! the pool's endpoint slice, the one it was built for; `None` means the set is
//! empty and the caller should fail over (fallback pool, 503).
//!
//! | algorithm | module | build cost | pick cost |
//! |---|---|---|---|
//! | [`RoundRobin`] | [`round_robin`] | O(1) | one `fetch_add` |
//! | [`Weighted`] (smooth weighted round robin) | [`weighted`] | O(cycle × endpoints) | one `fetch_add` + one read |
//!
//! Weights are [`NonZeroU32`](std::num::NonZeroU32): a weight of zero cannot be
//! expressed, so an endpoint that should take no traffic is left out of the set.

pub mod round_robin;
pub mod weighted;

pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// Chooses an endpoint of a fixed set for each request.
///
/// Implementations are immutable apart from internal atomics: they are built once
/// per endpoint set, shared between threads, and [`pick`](Selector::pick) never
/// blocks.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// Returns the index of the endpoint that should serve the next request, or
    /// `None` when the set is empty.
    ///
    /// The index is always `< self.len()`.
    fn pick(&self) -> Option<usize>;

    /// Returns the number of endpoints this selector was built for.
    fn len(&self) -> usize;

    /// Returns `true` when the selector has no endpoint to pick.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
