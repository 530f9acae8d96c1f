//! Time source for the limiters, injected so that tests control it.
//!
//! Limiters take the current time as a plain `u64` of nanoseconds since an arbitrary
//! epoch. Production code reads it from a [`MonotonicClock`]; tests (in this crate
//! and in others) drive a [`ManualClock`] by hand instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic source of time, in nanoseconds since an arbitrary epoch.
///
/// Only differences between readings are meaningful. Readings of one clock should
/// never decrease; the limiters stay safe if they do (a clock stepping backwards
/// never admits extra requests), they just become stricter until it catches up.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Returns the current time in nanoseconds since this clock's epoch.
    fn now_nanos(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

/// The real clock: [`Instant`] readings relative to the moment it was created.
///
/// Readings saturate at `u64::MAX` nanoseconds (about 584 years after creation).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    epoch: Instant,
}

impl MonotonicClock {
    /// Creates a clock whose epoch is now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to, for tests.
///
/// It can be shared between threads (`&ManualClock` and `Arc<ManualClock>` are
/// clocks too) and can be [`set`](ManualClock::set) backwards to test how a limiter
/// copes with a clock that steps back.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Creates a clock reading `nanos`.
    #[must_use]
    pub fn new(nanos: u64) -> Self {
        Self {
            nanos: AtomicU64::new(nanos),
        }
    }

    /// Moves the clock forward by `by`, saturating at `u64::MAX` nanoseconds.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Sets the reading to `nanos`, which may be earlier than the current one.
    pub fn set(&self, nanos: u64) {
        self.nanos.store(nanos, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now_nanos(), 5);
        clock.advance(Duration::from_micros(1));
        assert_eq!(clock.now_nanos(), 1_005);
        clock.set(2);
        assert_eq!(clock.now_nanos(), 2);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_nanos(), u64::MAX);
    }

    #[test]
    fn clocks_work_through_references_and_arcs() {
        fn read(clock: impl Clock) -> u64 {
            clock.now_nanos()
        }
        let clock = Arc::new(ManualClock::new(7));
        let shared: Arc<dyn Clock> = clock.clone();
        clock.advance(Duration::from_nanos(3));
        assert_eq!(read(shared), 10);
        assert_eq!(read(&*clock), 10);
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards() {
        let clock = MonotonicClock::new();
        let first = clock.now_nanos();
        assert!(clock.now_nanos() >= first);
    }
}
