//! Live load of each endpoint: requests in flight and a peak-EWMA latency estimate.
//!
//! Selectors are rebuilt whenever the route table changes, but the load of an
//! endpoint is a fact about the pod, not about the table: a rebuild must not forget
//! that a pod has 12 requests in flight or answers in 3 s. An [`EndpointLoad`] is
//! therefore shared (`Arc`) and outlives selectors; a [`PoolLoad`] holds one per
//! endpoint of a pool and [`PoolLoad::rebuild`] carries them, by address, into the
//! next table.
//!
//! Everything is atomics: starting and finishing a request, recording a latency
//! and reading a cost take no lock. Time is a `u64` of nanoseconds from a monotonic
//! clock that the caller owns (one epoch for the whole process, since the state
//! outlives tables); nothing here reads a clock.
//!
//! # Peak EWMA
//!
//! The latency estimate follows Finagle's and linkerd's peak EWMA:
//!
//! * a sample above the estimate replaces it at once (react to a slowdown now);
//! * a sample below it is blended in, the old estimate keeping the weight
//!   `exp(-elapsed / decay)`, where `elapsed` is the time since the last update
//!   (recover from a slowdown gradually, and faster when samples are sparse).
//!
//! Between samples the estimate relaxes with the same weight toward a *neutral*
//! latency instead of toward zero (where linkerd relaxes it). A new endpoint starts
//! at the neutral latency, and its first sample replaces it whatever its value (the
//! neutral start is a placeholder, not an observation). Both serve agents whose
//! requests last seconds to minutes: an endpoint that has not answered for a while,
//! or never, is neither free (it would take every request until its first answer
//! came back, a flood) nor shunned for ever. It competes as an average endpoint,
//! its in-flight count limiting how much it takes. With a neutral latency of zero
//! the estimate relaxes toward zero as in linkerd.
//!
//! Estimate and timestamp are two atomics: the estimate is updated with a
//! compare-and-swap loop, so no sample is lost, and the timestamp only moves
//! forward. Two samples recorded at the same moment may see each other's timestamp
//! and weigh the older estimate slightly differently; the estimate is a heuristic
//! and that error is bounded by the time between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Default time constant of the latency decay, as in linkerd.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Default latency assumed for an endpoint with no recent sample.
pub const DEFAULT_NEUTRAL_LATENCY: Duration = Duration::from_secs(1);

/// How the latency estimate of an endpoint evolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadConfig {
    /// Time constant of the exponential decay: after `decay` without samples, an
    /// old estimate keeps `1/e` (37 %) of its weight. A zero decay is taken as one
    /// nanosecond (no memory).
    pub decay: Duration,
    /// Latency assumed for a new endpoint and toward which an estimate relaxes
    /// between samples. Set it near the pool's typical latency.
    pub neutral_latency: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            decay: DEFAULT_DECAY,
            neutral_latency: DEFAULT_NEUTRAL_LATENCY,
        }
    }
}

/// Live load of one endpoint: requests in flight and its latency estimate.
///
/// Create them through a [`PoolLoad`], which also keeps the pool's total in
/// flight (used by bounded-load consistent hashing), or alone with
/// [`EndpointLoad::new`].
#[derive(Debug)]
#[repr(align(64))] // one cache line per endpoint: no false sharing between pods
pub struct EndpointLoad {
    in_flight: AtomicU64,
    /// Latency estimate, in nanoseconds.
    estimate: AtomicU64,
    /// When `estimate` was last updated, in the caller's nanoseconds.
    updated_at: AtomicU64,
    /// Whether `estimate` comes from a sample rather than the neutral start.
    sampled: AtomicBool,
    /// [`LoadConfig::decay`] in nanoseconds, at least 1.
    decay: AtomicU64,
    /// [`LoadConfig::neutral_latency`] in nanoseconds.
    neutral: AtomicU64,
    /// In flight over the whole pool, shared by the pool's endpoints.
    pool_in_flight: Arc<AtomicU64>,
}

impl EndpointLoad {
    /// A new endpoint with nothing in flight and the neutral latency estimate, as
    /// of `now`, counted in a pool of its own.
    #[must_use]
    pub fn new(config: LoadConfig, now: u64) -> Self {
        Self::in_pool(config, now, Arc::default())
    }

    fn in_pool(config: LoadConfig, now: u64, pool_in_flight: Arc<AtomicU64>) -> Self {
        let load = Self {
            in_flight: AtomicU64::new(0),
            estimate: AtomicU64::new(nanos(config.neutral_latency)),
            updated_at: AtomicU64::new(now),
            sampled: AtomicBool::new(false),
            decay: AtomicU64::new(1),
            neutral: AtomicU64::new(0),
            pool_in_flight,
        };
        load.set_config(config);
        load
    }

    /// Applies a new configuration; the estimate and the count are kept.
    pub fn set_config(&self, config: LoadConfig) {
        self.decay.store(nanos(config.decay).max(1), Relaxed);
        self.neutral.store(nanos(config.neutral_latency), Relaxed);
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> LoadConfig {
        LoadConfig {
            decay: Duration::from_nanos(self.decay.load(Relaxed)),
            neutral_latency: Duration::from_nanos(self.neutral.load(Relaxed)),
        }
    }

    /// Requests started on this endpoint and not yet finished or dropped.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.pool_in_flight.fetch_add(1, Relaxed);
        InFlight {
            load: Arc::clone(self),
        }
    }

    /// Like [`start`](Self::start), but only while fewer than `limit` requests are
    /// in flight: the exact `maxConcurrency` check, race-free between threads.
    ///
    /// Returns `None`, counting nothing, when the endpoint is full.
    pub fn try_start(self: &Arc<Self>, limit: u64) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()?;
        self.pool_in_flight.fetch_add(1, Relaxed);
        Some(InFlight {
            load: Arc::clone(self),
        })
    }

    /// Folds one observed latency into the estimate, as of `now` (see the
    /// [module documentation](self)).
    pub fn record(&self, latency: Duration, now: u64) {
        let sample = nanos(latency);
        let decay = self.decay.load(Relaxed);
        let first = !self.sampled.load(Relaxed);
        let mut current = self.estimate.load(Relaxed);
        loop {
            let next = if first || sample >= current {
                sample
            } else {
                let elapsed = now.saturating_sub(self.updated_at.load(Relaxed));
                blend(current, sample, retention(elapsed, decay))
            };
            match self
                .estimate
                .compare_exchange_weak(current, next, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.updated_at.fetch_max(now, Relaxed);
        self.sampled.store(true, Relaxed);
    }

    /// The latency estimate as of `now`: the last one, relaxed toward the neutral
    /// latency by the time elapsed since it was updated.
    #[must_use]
    pub fn latency(&self, now: u64) -> Duration {
        Duration::from_nanos(self.latency_nanos(now) as u64)
    }

    /// Peak-EWMA cost as of `now`: latency estimate (ns) × (in flight + 1).
    ///
    /// Lower is better; it estimates how long a new request would wait behind the
    /// ones already there.
    #[must_use]
    pub fn cost(&self, now: u64) -> f64 {
        self.latency_nanos(now) * (self.in_flight() as f64 + 1.0)
    }

    /// The cost with each request in flight counting `scale` (the weighted selectors'
    /// `mean weight / weight`): latency × (in flight × scale + 1).
    #[must_use]
    pub fn weighted_cost(&self, now: u64, scale: f64) -> f64 {
        self.latency_nanos(now) * (self.in_flight() as f64 * scale + 1.0)
    }

    fn latency_nanos(&self, now: u64) -> f64 {
        if !self.sampled.load(Relaxed) {
            return self.neutral.load(Relaxed) as f64;
        }
        let estimate = self.estimate.load(Relaxed) as f64;
        let elapsed = now.saturating_sub(self.updated_at.load(Relaxed));
        let keep = retention(elapsed, self.decay.load(Relaxed));
        estimate * keep + self.neutral.load(Relaxed) as f64 * (1.0 - keep)
    }
}

/// A request in flight on one endpoint; dropping it ends the request.
///
/// Call [`finish`](Self::finish) with the observed latency when the request
/// completes normally. Dropping the guard without it (a cancelled or failed
/// request) only decrements the count; to penalise failures, finish with the time
/// they took.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard is alive"]
pub struct InFlight {
    load: Arc<EndpointLoad>,
}

impl InFlight {
    /// Ends the request, recording `latency` as observed at `now`.
    pub fn finish(self, latency: Duration, now: u64) {
        self.load.record(latency, now);
    }

    /// The endpoint this request runs on.
    #[must_use]
    pub fn load(&self) -> &Arc<EndpointLoad> {
        &self.load
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Relaxed);
        self.load.pool_in_flight.fetch_sub(1, Relaxed);
    }
}

/// The live load of every endpoint of one pool, by endpoint index, with the
/// addresses that identify endpoints from one table to the next.
///
/// Cloning is cheap (three `Arc`s); selectors built for a table keep a clone.
#[derive(Debug, Clone, Default)]
pub struct PoolLoad {
    addresses: Arc<[Box<str>]>,
    endpoints: Arc<[Arc<EndpointLoad>]>,
    in_flight: Arc<AtomicU64>,
}

impl PoolLoad {
    /// Fresh state for endpoints with the given addresses, as of `now`.
    ///
    /// An address listed twice (the same pod behind two backends) gets one shared
    /// state.
    #[must_use]
    pub fn new<A: AsRef<str>>(addresses: &[A], config: LoadConfig, now: u64) -> Self {
        Self::default().rebuild(addresses, config, now)
    }

    /// State for the next table's endpoints: an address already present keeps its
    /// state (in-flight count, latency estimate; `config` is applied to it), a new
    /// one starts fresh as of `now`. The pool total carries over, including requests
    /// still running on endpoints that left.
    #[must_use]
    pub fn rebuild<A: AsRef<str>>(&self, addresses: &[A], config: LoadConfig, now: u64) -> Self {
        let mut known: HashMap<&str, &Arc<EndpointLoad>> = self
            .addresses
            .iter()
            .map(|a| &**a)
            .zip(self.endpoints.iter())
            .collect();
        let mut created: HashMap<&str, Arc<EndpointLoad>> = HashMap::new();
        let endpoints = addresses
            .iter()
            .map(|address| {
                let address = address.as_ref();
                if let Some(load) = known.remove(address) {
                    load.set_config(config);
                    created.insert(address, Arc::clone(load));
                }
                Arc::clone(created.entry(address).or_insert_with(|| {
                    Arc::new(EndpointLoad::in_pool(
                        config,
                        now,
                        Arc::clone(&self.in_flight),
                    ))
                }))
            })
            .collect();
        Self {
            addresses: addresses.iter().map(|a| a.as_ref().into()).collect(),
            endpoints,
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// Number of endpoints.
    #[must_use]
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// `true` when the pool has no endpoint.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The state of endpoint `index`.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&Arc<EndpointLoad>> {
        self.endpoints.get(index)
    }

    /// Every endpoint's state, by index.
    #[must_use]
    pub fn endpoints(&self) -> &[Arc<EndpointLoad>] {
        &self.endpoints
    }

    /// Every endpoint's address, by index.
    #[must_use]
    pub fn addresses(&self) -> &[Box<str>] {
        &self.addresses
    }

    /// Requests in flight over the whole pool, including on endpoints that have
    /// left it since and still finish requests.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
}

/// A duration in nanoseconds, saturating after 584 years.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The weight an estimate keeps after `elapsed` nanoseconds: `exp(-elapsed/decay)`.
fn retention(elapsed: u64, decay: u64) -> f64 {
    (-(elapsed as f64) / decay as f64).exp()
}

/// `old × keep + new × (1 − keep)`, rounded; `as` saturates, and the result lies
/// between `old` and `new`.
fn blend(old: u64, new: u64, keep: f64) -> u64 {
    (old as f64 * keep + new as f64 * (1.0 - keep)).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn config(decay_ms: u64, neutral_ms: u64) -> LoadConfig {
        LoadConfig {
            decay: Duration::from_millis(decay_ms),
            neutral_latency: Duration::from_millis(neutral_ms),
        }
    }

    #[test]
    fn starts_at_the_neutral_latency_with_nothing_in_flight() {
        let load = EndpointLoad::new(config(1_000, 250), 5 * MS);
        assert_eq!(load.in_flight(), 0);
        assert_eq!(load.latency(5 * MS), Duration::from_millis(250));
        assert_eq!(load.latency(500 * MS), Duration::from_millis(250));
    }

    #[test]
    fn guard_counts_until_dropped() {
        let load = Arc::new(EndpointLoad::new(LoadConfig::default(), 0));
        let a = load.start();
        let b = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(a);
        assert_eq!(load.in_flight(), 1);
        b.finish(Duration::from_millis(3), 0);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn try_start_respects_the_limit() {
        let load = Arc::new(EndpointLoad::new(LoadConfig::default(), 0));
        let first = load.try_start(2);
        let second = load.try_start(2);
        assert!(first.is_some() && second.is_some());
        assert!(load.try_start(2).is_none());
        assert_eq!(load.in_flight(), 2);
        drop(first);
        assert!(load.try_start(2).is_some());
        assert!(load.try_start(0).is_none());
    }

    #[test]
    fn the_first_sample_replaces_the_neutral_start() {
        let load = EndpointLoad::new(config(1_000, 500), 0);
        load.record(Duration::from_millis(20), 0);
        assert_eq!(load.latency(0), Duration::from_millis(20));
    }

    #[test]
    fn a_higher_sample_replaces_the_estimate_at_once() {
        let load = EndpointLoad::new(config(1_000, 10), 0);
        load.record(Duration::from_millis(400), MS);
        assert_eq!(load.latency(MS), Duration::from_millis(400));
    }

    #[test]
    fn a_lower_sample_is_blended_by_elapsed_time() {
        let load = EndpointLoad::new(config(1_000, 500), 0);
        load.record(Duration::from_millis(100), 0);
        // One decay constant later the old estimate keeps 1/e of its weight.
        load.record(Duration::from_millis(20), 1_000 * MS);
        let want = 100.0 / std::f64::consts::E + 20.0 * (1.0 - 1.0 / std::f64::consts::E);
        let got = load.latency(1_000 * MS).as_secs_f64() * 1e3;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }

    #[test]
    fn the_estimate_relaxes_toward_neutral_between_samples() {
        let load = EndpointLoad::new(config(1_000, 100), 0);
        load.record(Duration::from_millis(900), 0);
        let later = load.latency(10_000 * MS).as_secs_f64() * 1e3;
        assert!((later - 100.0).abs() < 0.1, "{later}");
    }

    #[test]
    fn cost_grows_with_requests_in_flight() {
        let load = Arc::new(EndpointLoad::new(config(1_000, 10), 0));
        let idle = load.cost(0);
        let _guard = load.start();
        assert!((load.cost(0) - 2.0 * idle).abs() < 1.0);
    }

    #[test]
    fn zero_decay_is_taken_as_one_nanosecond() {
        let load = EndpointLoad::new(config(0, 10), 0);
        assert_eq!(load.config().decay, Duration::from_nanos(1));
    }

    #[test]
    fn rebuild_keeps_state_by_address_and_the_pool_total() {
        let pool = PoolLoad::new(&["a", "b", "c"], config(1_000, 10), 0);
        let b = pool.get(1).expect("b").start();
        let c = pool.get(2).expect("c").start();
        assert_eq!(pool.in_flight(), 2);

        let next = pool.rebuild(&["b", "d"], config(2_000, 20), 1);
        assert!(Arc::ptr_eq(&next.endpoints()[0], b.load()));
        assert_eq!(next.get(0).expect("b").in_flight(), 1);
        assert_eq!(
            next.get(0).expect("b").config().decay,
            Duration::from_secs(2)
        );
        assert_eq!(next.get(1).expect("d").in_flight(), 0);
        assert_eq!(next.in_flight(), 2, "c has left but its request still runs");
        drop(c);
        assert_eq!(next.in_flight(), 1);
        drop(b);
        assert_eq!(next.in_flight(), 0);
        assert_eq!(&*next.addresses()[1], "d");
    }

    #[test]
    fn duplicate_addresses_share_one_state() {
        let pool = PoolLoad::new(&["a", "b", "a"], LoadConfig::default(), 0);
        assert!(Arc::ptr_eq(&pool.endpoints()[0], &pool.endpoints()[2]));
        let next = pool.rebuild(&["a", "a"], LoadConfig::default(), 0);
        assert!(Arc::ptr_eq(&next.endpoints()[0], &pool.endpoints()[0]));
        assert!(Arc::ptr_eq(&next.endpoints()[1], &pool.endpoints()[0]));
    }
}
