//! The sliding-window counter (as popularised by Cloudflare): N requests per
//! window, with the previous window's count weighted by how much of it still
//! overlaps the sliding window ending now.
//!
//! Time is cut into fixed windows of length `W`. At a point `e` into the current
//! window the estimate of recent use is `prev × (W − e) / W + cur`, and a charge
//! of `n` is admitted if the estimate plus `n` is at most the limit. The check is
//! done in integers (`prev × (W − e) + (cur + n) × W <= limit × W`), so it is
//! exact.
//!
//! Unlike a fixed window, this admits no double burst at a boundary: requests
//! admitted within any span `d <= W` number at most `limit × (1 + d / W)`, since
//! the previous window's count still weighs almost fully just after the boundary.
//!
//! The whole state (window index: 48 bits, previous and current counts: 24 bits
//! each) is 96 bits, kept in one 128-bit atomic, so checks take no lock. A clock
//! reading from before the stored window is treated as the start of that window,
//! the strictest point in it, so a clock stepping backwards admits nothing extra.

use std::num::NonZeroU32;
use std::time::Duration;

use portable_atomic::{AtomicU128, Ordering};

use crate::algorithm::sealed::{self, Step, Undo};
use crate::algorithm::{Algorithm, from_nanos, nanos_of};
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::quota::MAX_PERIOD;

/// Shortest accepted window: one millisecond (so the window index fits 48 bits).
pub const MIN_WINDOW: Duration = Duration::from_millis(1);

/// Largest accepted limit per window: 2^24 − 1 (the counts are 24 bits).
pub const MAX_WINDOW_LIMIT: u32 = (1 << 24) - 1;

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u128 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u128 = (1 << 48) - 1;

/// Why a [`WindowQuota`] could not be built. Every variant is a configuration
/// error: the same input always fails, so retrying is pointless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowQuotaError {
    /// The window is shorter than [`MIN_WINDOW`].
    #[error("the sliding window {window:?} is shorter than the minimum of {min:?}")]
    WindowTooShort {
        /// The rejected window.
        window: Duration,
        /// [`MIN_WINDOW`].
        min: Duration,
    },
    /// The window is longer than [`MAX_PERIOD`].
    #[error("the sliding window {window:?} is longer than the maximum of {max:?}")]
    WindowTooLong {
        /// The rejected window.
        window: Duration,
        /// [`MAX_PERIOD`].
        max: Duration,
    },
    /// The limit is above [`MAX_WINDOW_LIMIT`].
    #[error("a sliding-window limit of {limit} is above the maximum of {max}")]
    LimitTooHigh {
        /// The rejected limit.
        limit: NonZeroU32,
        /// [`MAX_WINDOW_LIMIT`].
        max: u32,
    },
}

/// `limit` requests per `window`, for a [`SlidingWindow`]. Only valid values can
/// be built: a non-zero limit of at most [`MAX_WINDOW_LIMIT`] and a window in
/// [`MIN_WINDOW`]`..=`[`MAX_PERIOD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowQuota {
    limit: NonZeroU32,
    window_nanos: u64,
}

impl WindowQuota {
    /// Allows `limit` requests per sliding `window`.
    ///
    /// # Errors
    ///
    /// [`WindowQuotaError`] if the window is out of range or the limit too high.
    pub fn new(limit: NonZeroU32, window: Duration) -> Result<Self, WindowQuotaError> {
        if window < MIN_WINDOW {
            return Err(WindowQuotaError::WindowTooShort {
                window,
                min: MIN_WINDOW,
            });
        }
        if window > MAX_PERIOD {
            return Err(WindowQuotaError::WindowTooLong {
                window,
                max: MAX_PERIOD,
            });
        }
        if limit.get() > MAX_WINDOW_LIMIT {
            return Err(WindowQuotaError::LimitTooHigh {
                limit,
                max: MAX_WINDOW_LIMIT,
            });
        }
        Ok(Self {
            limit,
            window_nanos: nanos_of(window),
        })
    }

    /// Returns the number of requests admitted per window.
    #[must_use]
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// Returns the window length.
    #[must_use]
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_nanos)
    }
}

/// Sliding-window state for one key, in one 128-bit atomic.
#[derive(Debug, Default)]
pub struct SlidingWindow {
    state: AtomicU128,
}

impl SlidingWindow {
    /// Creates a state with nothing counted.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: AtomicU128::new(0),
        }
    }

    /// Charges one request at `now` if `quota` allows it.
    pub fn check(&self, quota: &WindowQuota, now: u64) -> Decision {
        match self.charge_step(quota, 1, now) {
            Step::Admit { decision, .. } | Step::Deny(decision) => decision,
        }
    }

    /// Charges `n` requests at once if `quota` allows all of them; a refusal
    /// charges none.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `n` exceeds the limit.
    pub fn check_n(
        &self,
        quota: &WindowQuota,
        n: NonZeroU32,
        now: u64,
    ) -> Result<Decision, InsufficientCapacity> {
        <Self as Algorithm>::validate(quota, n)?;
        Ok(match self.charge_step(quota, n.get(), now) {
            Step::Admit { decision, .. } | Step::Deny(decision) => decision,
        })
    }

    /// Returns `true` if nothing counted still weighs at `now`, so the state is
    /// indistinguishable from a fresh one.
    #[must_use]
    pub fn is_idle(&self, quota: &WindowQuota, now: u64) -> bool {
        <Self as Algorithm>::is_idle(self.state.load(Ordering::Relaxed), quota, now)
    }

    /// The current packed state.
    pub(crate) fn raw(&self) -> u128 {
        self.state.load(Ordering::Relaxed)
    }

    pub(crate) fn charge_step(&self, quota: &WindowQuota, n: u32, now: u64) -> Step {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let step = <Self as Algorithm>::charge(current, quota, n, now);
            let Step::Admit { state, .. } = step else {
                return step;
            };
            match self.state.compare_exchange_weak(
                current,
                state,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return step,
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn undo_step(&self, quota: &WindowQuota, undo: Undo, now: u64) {
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                Some(<Self as Algorithm>::undo(state, quota, undo, now))
            });
    }
}

fn unpack(state: u128) -> (u64, u128, u128) {
    // Masked to 48 bits, so the conversion cannot fail.
    let index = u64::try_from((state >> (2 * COUNT_BITS)) & INDEX_MASK).unwrap_or(0);
    let prev = (state >> COUNT_BITS) & COUNT_MASK;
    let cur = state & COUNT_MASK;
    (index, prev, cur)
}

fn pack(index: u64, prev: u128, cur: u128) -> u128 {
    (u128::from(index) & INDEX_MASK) << (2 * COUNT_BITS)
        | (prev & COUNT_MASK) << COUNT_BITS
        | (cur & COUNT_MASK)
}

/// The state as seen at `now`: (window index, offset into it, previous count,
/// current count, how far `now` lies before the stored window).
fn view(state: u128, quota: &WindowQuota, now: u64) -> (u64, u128, u128, u128, u128) {
    let window = quota.window_nanos;
    let (index, prev, cur) = unpack(state);
    let now_index = now / window;
    let offset = u128::from(now % window);
    if now_index > index.saturating_add(1) {
        (now_index, offset, 0, 0, 0)
    } else if now_index == index.saturating_add(1) && now_index != index {
        (now_index, offset, cur, 0, 0)
    } else if now_index == index {
        (index, offset, prev, cur, 0)
    } else {
        // Before the stored window: judge at its start, the strictest point.
        let start = u128::from(index) * u128::from(window);
        (index, 0, prev, cur, start - u128::from(now))
    }
}

impl sealed::Sealed for SlidingWindow {}

impl Algorithm for SlidingWindow {
    type Quota = WindowQuota;

    fn info(quota: &WindowQuota) -> QuotaInfo {
        QuotaInfo {
            limit: quota.limit.get(),
            window: quota.window(),
        }
    }

    fn validate(quota: &WindowQuota, n: NonZeroU32) -> Result<(), InsufficientCapacity> {
        if n > quota.limit {
            return Err(InsufficientCapacity {
                requested: n.get(),
                burst: quota.limit.get(),
            });
        }
        Ok(())
    }

    fn charge(state: u128, quota: &WindowQuota, n: u32, now: u64) -> Step {
        let window = u128::from(quota.window_nanos);
        let (index, offset, prev, cur, behind) = view(state, quota, now);
        let n = u128::from(n);
        let cap = u128::from(quota.limit.get()) * window;
        let need = n * window;
        let used = prev * (window - offset) + cur * window;
        if used + need <= cap {
            let cur = cur + n;
            let reset = if cur > 0 {
                2 * window - offset
            } else if prev > 0 {
                window - offset
            } else {
                0
            };
            return Step::Admit {
                state: pack(index, prev, cur),
                decision: Decision::Allowed {
                    remaining: u32::try_from((cap - used - need) / window).unwrap_or(u32::MAX),
                    reset_after: from_nanos(reset + behind),
                },
                undo: Undo {
                    mark: index,
                    amount: u64::try_from(n).unwrap_or(u64::MAX),
                },
            };
        }
        let wait = if cur * window + need <= cap {
            // The previous window's weight must decay: prev > 0 here, or the
            // charge would have been admitted.
            let slack = (cap - cur * window - need) / prev.max(1);
            window.saturating_sub(slack) - offset
        } else {
            // Only the next window can admit it, once this one's count (then the
            // previous one) has decayed enough.
            let later = cap
                .saturating_sub(need)
                .checked_div(cur)
                .map_or(0, |slack| window.saturating_sub(slack));
            window - offset + later
        };
        let reset = if cur > 0 {
            2 * window - offset
        } else {
            window - offset
        };
        Step::Deny(Decision::Denied {
            retry_after: from_nanos((wait + behind).clamp(1, window)),
            reset_after: from_nanos(reset + behind),
        })
    }

    fn undo(state: u128, _quota: &WindowQuota, undo: Undo, _now: u64) -> u128 {
        let (index, prev, cur) = unpack(state);
        let n = u128::from(undo.amount);
        if index == undo.mark {
            pack(index, prev, cur.saturating_sub(n))
        } else if index == undo.mark.saturating_add(1) {
            pack(index, prev.saturating_sub(n), cur)
        } else {
            state
        }
    }

    fn is_idle(state: u128, quota: &WindowQuota, now: u64) -> bool {
        let (index, prev, cur) = unpack(state);
        (prev == 0 && cur == 0) || now / quota.window_nanos >= index.saturating_add(2)
    }

    fn debt(state: u128, quota: &WindowQuota, now: u64) -> u128 {
        // The weighted count a charge would see now, times the window length.
        let (index, prev, cur) = unpack(state);
        let window = quota.window_nanos;
        let remaining = u128::from(window - now % window);
        match (now / window).checked_sub(index) {
            // A state ahead of the clock (another proxy's clock) weighs fully.
            None => (prev + cur) * u128::from(window),
            Some(0) => prev * remaining + cur * u128::from(window),
            Some(1) => cur * remaining,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn quota(limit: u32, window_secs: u64) -> WindowQuota {
        WindowQuota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_secs(window_secs),
        )
        .unwrap()
    }

    #[test]
    fn fills_the_window_then_refuses_until_the_previous_weight_decays() {
        let quota = quota(10, 60);
        let window = SlidingWindow::new();
        let start = 600 * SEC; // the start of window 10
        for expected in (0..10).rev() {
            assert_eq!(window.check(&quota, start).remaining(), expected);
        }
        // Still in the same window: only the next one can admit, once the ten
        // counted here weigh at most nine: 6 s into it (60 s + 6 s from now).
        let refused = window.check(&quota, start);
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(60)));
        // At the boundary the previous ten still weigh fully: no double burst.
        assert!(!window.check(&quota, start + 60 * SEC).is_allowed());
        let refused = window.check(&quota, start + 60 * SEC);
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(6)));
        assert!(!window.check(&quota, start + 66 * SEC - 1).is_allowed());
        assert!(window.check(&quota, start + 66 * SEC).is_allowed());
        assert!(!window.check(&quota, start + 66 * SEC).is_allowed());
    }

    #[test]
    fn waits_are_never_longer_than_the_window() {
        let quota = quota(10, 60);
        let window = SlidingWindow::new();
        // All ten at the very start of a window: the true wait for an eleventh
        // one second later is 59 s + 6 s, reported as the window.
        assert!(
            window
                .check_n(&quota, NonZeroU32::new(10).unwrap(), 0)
                .unwrap()
                .is_allowed()
        );
        let refused = window.check(&quota, SEC);
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn charges_beyond_the_limit_can_never_succeed() {
        let quota = quota(5, 1);
        let window = SlidingWindow::new();
        assert_eq!(
            window.check_n(&quota, NonZeroU32::new(6).unwrap(), 0),
            Err(InsufficientCapacity {
                requested: 6,
                burst: 5
            })
        );
    }

    #[test]
    fn a_clock_stepping_backwards_is_judged_at_the_stored_window_start() {
        let quota = quota(2, 10);
        let window = SlidingWindow::new();
        assert!(window.check(&quota, 25 * SEC).is_allowed());
        assert!(window.check(&quota, 25 * SEC).is_allowed());
        // Back into window 1: judged at the start of window 2, 5 s further on.
        let refused = window.check(&quota, 15 * SEC);
        assert!(!refused.is_allowed());
        assert!(!window.check(&quota, 0).is_allowed());
        assert!(!window.is_idle(&quota, 0));
        assert!(window.is_idle(&quota, 40 * SEC));
    }

    #[test]
    fn undo_takes_back_exactly_the_charge_even_after_a_window_roll() {
        let quota = quota(3, 1);
        let window = SlidingWindow::new();
        let Step::Admit { undo, .. } = window.charge_step(&quota, 2, 0) else {
            panic!("fresh state admits");
        };
        window.undo_step(&quota, undo, 0);
        assert!(window.is_idle(&quota, 0));
        let Step::Admit { undo, .. } = window.charge_step(&quota, 2, 0) else {
            panic!("admits again");
        };
        // Roll into the next window: the charge is now the previous count.
        assert!(window.check(&quota, SEC).is_allowed());
        window.undo_step(&quota, undo, SEC);
        let (_, prev, cur) = unpack(window.state.load(Ordering::Relaxed));
        assert_eq!((prev, cur), (0, 1));
    }

    #[test]
    fn invalid_quotas_are_rejected() {
        let one = NonZeroU32::new(1).unwrap();
        assert!(matches!(
            WindowQuota::new(one, Duration::from_micros(999)),
            Err(WindowQuotaError::WindowTooShort { .. })
        ));
        assert!(matches!(
            WindowQuota::new(one, MAX_PERIOD + Duration::from_secs(1)),
            Err(WindowQuotaError::WindowTooLong { .. })
        ));
        assert!(matches!(
            WindowQuota::new(NonZeroU32::new(1 << 24).unwrap(), Duration::from_secs(1)),
            Err(WindowQuotaError::LimitTooHigh { .. })
        ));
        let max = WindowQuota::new(NonZeroU32::new(MAX_WINDOW_LIMIT).unwrap(), MAX_PERIOD);
        assert!(max.is_ok());
    }

    #[test]
    fn huge_limits_and_times_stay_exact() {
        let quota =
            WindowQuota::new(NonZeroU32::new(MAX_WINDOW_LIMIT).unwrap(), MAX_PERIOD).unwrap();
        let window = SlidingWindow::new();
        let now = u64::MAX - 1;
        let all = NonZeroU32::new(MAX_WINDOW_LIMIT).unwrap();
        assert!(window.check_n(&quota, all, now).unwrap().is_allowed());
        assert!(!window.check(&quota, now).is_allowed());
    }
}
