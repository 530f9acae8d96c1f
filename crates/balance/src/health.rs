//! Active health checking: whether an endpoint passes its probes, with hysteresis.
//!
//! The proxy runs the probes (an HTTP `GET` on a health path, a TCP connect, …) from a
//! checker task and feeds each result to the endpoint's [`HealthState`]; requests read
//! [`HealthState::is_healthy`] before sending to it. This module does no I/O: it only
//! decides when a run of results is long enough to change the verdict.
//!
//! # State machine
//!
//! ```text
//!               unhealthy_threshold failures in a row
//!   Healthy ────────────────────────────────────────────► Unhealthy
//!      ▲  ◄────────────────────────────────────────────      ▲
//!      │          healthy_threshold successes in a row       │
//!      │ first success                         first failure │
//!      └──────────────────────── Pending ────────────────────┘
//! ```
//!
//! * In [`Health::Healthy`] a success clears the failure run; the state flips to
//!   [`Health::Unhealthy`] only on the `unhealthy_threshold`-th failure in a row.
//! * In [`Health::Unhealthy`] a failure clears the success run; the state flips back
//!   only on the `healthy_threshold`-th success in a row.
//! * [`Health::Pending`] is for an endpoint nobody has probed yet, when the pool asks
//!   for it ([`StartAs::Pending`]): it takes no traffic, and the *first* result decides,
//!   whatever the thresholds (as Envoy treats a host waiting for its first check).
//!   A pending endpoint that fails then needs `healthy_threshold` successes, like
//!   any unhealthy one.
//!
//! Which start state to use is the pool's choice. [`StartAs::Healthy`], the default,
//! is the optimistic one (as in pingora): an endpoint that appears in a new table
//! takes traffic at once, and passive [outlier detection](crate::outlier) covers it
//! until its first probes have run. [`StartAs::Pending`] is the cautious one: no
//! request reaches an endpoint before it has passed a probe, at the price of a pool
//! that has no capacity at all until its first round of probes.
//!
//! # Concurrency
//!
//! The whole state (verdict and current run length) is one [`AtomicU64`]. Reading the
//! verdict is one relaxed load, so the request path pays nothing; recording a result
//! is a compare-and-exchange loop, so several checkers may write without a lock (one
//! is the expected case). The thresholds are passed to every
//! [`record`](HealthState::record) rather than stored, so the state is eight bytes and
//! can outlive a route table: the proxy keeps one state per endpoint address across
//! table swaps, and a new table's thresholds apply from the next result.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many results in a row it takes to change an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Successes in a row that bring an unhealthy endpoint back.
    pub healthy_threshold: NonZeroU32,
    /// Failures in a row that take a healthy endpoint out.
    pub unhealthy_threshold: NonZeroU32,
}

impl Default for HealthConfig {
    /// Two successes to come back, three failures to go out: one lost probe never
    /// takes an endpoint out, one lucky probe never brings it back.
    fn default() -> Self {
        Self {
            healthy_threshold: NonZeroU32::MIN.saturating_add(1),
            unhealthy_threshold: NonZeroU32::MIN.saturating_add(2),
        }
    }
}

/// The verdict on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// The endpoint takes traffic.
    Healthy,
    /// The endpoint failed enough probes in a row; it takes no traffic until it
    /// passes enough in a row.
    Unhealthy,
    /// The endpoint has not been probed yet and takes no traffic; the first result
    /// decides.
    Pending,
}

impl Health {
    /// A short lowercase name, usable as a metric label or in a log line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Pending => "pending",
        }
    }
}

/// The state a new endpoint starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAs {
    /// Takes traffic at once; `unhealthy_threshold` failures take it out.
    #[default]
    Healthy,
    /// Takes no traffic until its first probe; the first result decides.
    Pending,
}

/// The result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckResult {
    /// The endpoint answered the probe as expected.
    Success,
    /// The probe failed: refused, timed out or answered with an unexpected status.
    Failure,
}

/// The health of one endpoint, shared between its checker and the request path.
///
/// Layout of the atomic: bits 32–33 hold the [`Health`], bits 0–31 the length of the
/// current run of results that disagree with it (failures while healthy, successes
/// while unhealthy).
#[derive(Debug)]
pub struct HealthState {
    packed: AtomicU64,
}

const HEALTHY: u64 = 0;
const UNHEALTHY: u64 = 1;
const PENDING: u64 = 2;
const SHIFT: u32 = 32;
const RUN_MASK: u64 = u32::MAX as u64;

const fn pack(health: Health, run: u32) -> u64 {
    let tag = match health {
        Health::Healthy => HEALTHY,
        Health::Unhealthy => UNHEALTHY,
        Health::Pending => PENDING,
    };
    (tag << SHIFT) | run as u64
}

const fn unpack(packed: u64) -> (Health, u32) {
    let health = match packed >> SHIFT {
        HEALTHY => Health::Healthy,
        UNHEALTHY => Health::Unhealthy,
        _ => Health::Pending,
    };
    // The mask keeps 32 bits, so the cast is lossless.
    let run = (packed & RUN_MASK) as u32;
    (health, run)
}

/// Applies one result: the new state, and the new verdict if it changed.
fn step(
    config: &HealthConfig,
    health: Health,
    run: u32,
    result: CheckResult,
) -> (u64, Option<Health>) {
    let flip = |run: u32, threshold: NonZeroU32, to: Health| {
        let run = run.saturating_add(1);
        if run >= threshold.get() {
            (pack(to, 0), Some(to))
        } else {
            (pack(health, run), None)
        }
    };
    match (health, result) {
        (Health::Healthy, CheckResult::Success) | (Health::Unhealthy, CheckResult::Failure) => {
            (pack(health, 0), None)
        }
        (Health::Healthy, CheckResult::Failure) => {
            flip(run, config.unhealthy_threshold, Health::Unhealthy)
        }
        (Health::Unhealthy, CheckResult::Success) => {
            flip(run, config.healthy_threshold, Health::Healthy)
        }
        (Health::Pending, CheckResult::Success) => {
            (pack(Health::Healthy, 0), Some(Health::Healthy))
        }
        (Health::Pending, CheckResult::Failure) => {
            (pack(Health::Unhealthy, 0), Some(Health::Unhealthy))
        }
    }
}

impl HealthState {
    /// Creates the state of a new endpoint.
    #[must_use]
    pub const fn new(start: StartAs) -> Self {
        let health = match start {
            StartAs::Healthy => Health::Healthy,
            StartAs::Pending => Health::Pending,
        };
        Self {
            packed: AtomicU64::new(pack(health, 0)),
        }
    }

    /// Returns `true` if the endpoint may take traffic: one relaxed atomic load.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.packed.load(Ordering::Relaxed) >> SHIFT == HEALTHY
    }

    /// Returns the current verdict.
    #[must_use]
    pub fn health(&self) -> Health {
        unpack(self.packed.load(Ordering::Relaxed)).0
    }

    /// Returns how many results in a row currently disagree with the verdict
    /// (failures while healthy, successes while unhealthy; always 0 while pending).
    #[must_use]
    pub fn run_length(&self) -> u32 {
        unpack(self.packed.load(Ordering::Relaxed)).1
    }

    /// Records the result of one probe under `config`'s thresholds.
    ///
    /// Returns the new verdict when this result changed it (for a log line, an
    /// event or a transition counter), `None` otherwise.
    pub fn record(&self, config: &HealthConfig, result: CheckResult) -> Option<Health> {
        let mut current = self.packed.load(Ordering::Relaxed);
        loop {
            let (health, run) = unpack(current);
            let (next, changed) = step(config, health, run, result);
            match self.packed.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return changed,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for HealthState {
    /// A healthy endpoint ([`StartAs::Healthy`]).
    fn default() -> Self {
        Self::new(StartAs::Healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        for health in [Health::Healthy, Health::Unhealthy, Health::Pending] {
            for run in [0, 1, 7, u32::MAX] {
                assert_eq!(unpack(pack(health, run)), (health, run));
            }
        }
    }

    #[test]
    fn the_largest_threshold_is_reachable() {
        let config = HealthConfig {
            healthy_threshold: NonZeroU32::MAX,
            unhealthy_threshold: NonZeroU32::MAX,
        };
        let (next, changed) = step(&config, Health::Healthy, u32::MAX - 1, CheckResult::Failure);
        assert_eq!(changed, Some(Health::Unhealthy));
        assert_eq!(unpack(next), (Health::Unhealthy, 0));
    }
}
