//! The generic cell rate algorithm (GCRA), with its whole state in one `AtomicU64`.
//!
//! GCRA tracks a single timestamp, the theoretical arrival time (TAT): when the
//! next request would be due if every admitted request had arrived exactly on the
//! quota's schedule. With emission interval `T` and burst `b`, a charge of `n`
//! requests at time `now` moves the TAT to `max(TAT, now) + n × T`, and is admitted
//! only if that new TAT is at most `now + b × T` (that is, at most `τ = (b − 1) × T`
//! ahead of schedule for a single request). A fresh state has a TAT of zero, which
//! is in the past for every reading, so the first `b` requests pass at once.
//!
//! An admitted charge replaces the TAT with a compare-and-exchange loop; a refused
//! one changes nothing. A clock reading earlier than a previous one only makes the
//! check stricter (`max(TAT, now) − now` grows as `now` shrinks), so a clock
//! stepping backwards never admits extra requests.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::algorithm::sealed::{self, Step, Undo};
use crate::algorithm::{Algorithm, from_nanos};
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::quota::Quota;

/// Rate-limit state for one key: the theoretical arrival time, in clock
/// nanoseconds.
///
/// The quota is passed to every check rather than stored, so a key store holds
/// eight bytes per key and a new quota applies to existing keys at once.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Creates a state with a full burst available.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            tat: AtomicU64::new(0),
        }
    }

    /// Charges one request at `now` (nanoseconds of the limiter's
    /// [`Clock`](crate::Clock)) if `quota` allows it.
    pub fn check(&self, quota: &Quota, now: u64) -> Decision {
        self.charge(quota, 1, now)
    }

    /// Charges `n` requests at once at `now` if `quota` allows all of them; a
    /// refusal charges none.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `n` exceeds the quota's burst: such a charge can
    /// never be admitted, unlike a [`Decision::Denied`] which only asks to wait.
    pub fn check_n(
        &self,
        quota: &Quota,
        n: NonZeroU32,
        now: u64,
    ) -> Result<Decision, InsufficientCapacity> {
        <Self as Algorithm>::validate(quota, n)?;
        Ok(self.charge(quota, n.get(), now))
    }

    /// Returns `true` if the full burst is available again at `now`, whatever the
    /// quota: the state is then indistinguishable from a fresh one, so a key store
    /// may evict it.
    #[must_use]
    pub fn is_replenished(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }

    /// The current TAT.
    pub(crate) fn raw(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }

    /// Charges `n <= burst` requests with a compare-and-exchange loop.
    pub(crate) fn charge_step(&self, quota: &Quota, n: u32, now: u64) -> Step {
        // The TAT is the only shared state and publishes nothing else: relaxed
        // ordering is enough for a linearizable read-modify-write of it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let step = <Self as Algorithm>::charge(u128::from(tat), quota, n, now);
            let Step::Admit { state, .. } = step else {
                return step;
            };
            let stored = low_u64(state);
            match self
                .tat
                .compare_exchange_weak(tat, stored, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return step,
                Err(current) => tat = current,
            }
        }
    }

    /// Takes back an admitted charge (see [`undo_tat`]).
    pub(crate) fn undo_step(&self, undo: Undo, now: u64) {
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(undo_tat(tat, undo, now))
            });
    }

    fn charge(&self, quota: &Quota, n: u32, now: u64) -> Decision {
        match self.charge_step(quota, n, now) {
            Step::Admit { decision, .. } | Step::Deny(decision) => decision,
        }
    }
}

impl sealed::Sealed for Gcra {}

impl Algorithm for Gcra {
    type Quota = Quota;

    fn info(quota: &Quota) -> QuotaInfo {
        QuotaInfo {
            limit: quota.burst().get(),
            window: Duration::from_nanos(quota.window_nanos()),
        }
    }

    fn validate(quota: &Quota, n: NonZeroU32) -> Result<(), InsufficientCapacity> {
        if n > quota.burst() {
            return Err(InsufficientCapacity {
                requested: n.get(),
                burst: quota.burst().get(),
            });
        }
        Ok(())
    }

    /// The state is the TAT in the low 64 bits. Arithmetic is done in `u128`, so
    /// it is exact: `n × T` and `now + b × T` cannot overflow.
    fn charge(state: u128, quota: &Quota, n: u32, now: u64) -> Step {
        let tat = u128::from(low_u64(state));
        let interval = u128::from(quota.interval_nanos());
        let cost = interval * u128::from(n);
        let now_wide = u128::from(now);
        let limit = now_wide + u128::from(quota.window_nanos());
        let next = tat.max(now_wide) + cost;
        if next > limit {
            return Step::Deny(Decision::Denied {
                retry_after: from_nanos(next - limit),
                reset_after: from_nanos(tat.saturating_sub(now_wide)),
            });
        }
        // `next <= now + 2^62` fits unless the clock reads beyond ~438 years;
        // saturating keeps the state conservative even then.
        let stored = u64::try_from(next).unwrap_or(u64::MAX);
        Step::Admit {
            state: (state & !u128::from(u64::MAX)) | u128::from(stored),
            decision: Decision::Allowed {
                remaining: u32::try_from((limit - next) / interval).unwrap_or(u32::MAX),
                reset_after: from_nanos(next - now_wide),
            },
            undo: Undo {
                mark: stored,
                amount: u64::try_from(cost).unwrap_or(u64::MAX),
            },
        }
    }

    fn undo(state: u128, _quota: &Quota, undo: Undo, now: u64) -> u128 {
        let tat = undo_tat(low_u64(state), undo, now);
        (state & !u128::from(u64::MAX)) | u128::from(tat)
    }

    fn is_idle(state: u128, _quota: &Quota, now: u64) -> bool {
        low_u64(state) <= now
    }

    fn debt(state: u128, _quota: &Quota, now: u64) -> u128 {
        // Nanoseconds until the full burst is back.
        u128::from(low_u64(state).saturating_sub(now))
    }
}

/// Takes back a charge that moved the TAT to `undo.mark` at a cost of
/// `undo.amount` nanoseconds.
///
/// Only the part of the charge still ahead of `now` is returned, and never more
/// than brings the TAT back to `now`: `TAT − min(cost, mark − now, TAT − now)`.
/// Undone at the clock reading it was charged at, this restores exactly the
/// capacity the charge took (the concurrency tests rely on it). Undone later, the
/// part of the charge that has drained in between is not returned, so an undo
/// never admits more than if the charge had never happened, with one exception:
/// when several charges are undone concurrently, an undo may return up to the
/// time that elapsed between an earlier charge and its own undo (microseconds on
/// the request path).
pub(crate) fn undo_tat(tat: u64, undo: Undo, now: u64) -> u64 {
    let refund = undo
        .amount
        .min(undo.mark.saturating_sub(now))
        .min(tat.saturating_sub(now));
    tat - refund
}

/// The low 64 bits of a state word (the TAT).
pub(crate) fn low_u64(state: u128) -> u64 {
    // Masked to 64 bits, so the conversion cannot fail.
    u64::try_from(state & u128::from(u64::MAX)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Clock, ManualClock};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// 10 per second: T = 100 ms.
    fn ten_per_second(burst: u32) -> Quota {
        Quota::per_period(nz(10), Duration::from_secs(1))
            .unwrap()
            .with_burst(nz(burst))
    }

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn burst_is_admitted_at_once_then_refused_for_the_true_wait() {
        let clock = ManualClock::new(1_000_000_000);
        let quota = ten_per_second(5);
        let gcra = Gcra::new();
        for expected_remaining in (0..5).rev() {
            assert_eq!(
                gcra.check(&quota, clock.now_nanos()),
                Decision::Allowed {
                    remaining: expected_remaining,
                    reset_after: T * (5 - expected_remaining),
                }
            );
        }
        assert_eq!(
            gcra.check(&quota, clock.now_nanos()),
            Decision::Denied {
                retry_after: T,
                reset_after: T * 5
            }
        );
    }

    #[test]
    fn waiting_retry_after_admits_exactly_one_more() {
        let clock = ManualClock::new(0);
        let quota = ten_per_second(3);
        let gcra = Gcra::new();
        for _ in 0..3 {
            assert!(gcra.check(&quota, clock.now_nanos()).is_allowed());
        }
        let Decision::Denied { retry_after, .. } = gcra.check(&quota, clock.now_nanos()) else {
            panic!("the burst is exhausted");
        };
        clock.advance(retry_after - Duration::from_nanos(1));
        assert!(!gcra.check(&quota, clock.now_nanos()).is_allowed());
        clock.advance(Duration::from_nanos(1));
        assert!(gcra.check(&quota, clock.now_nanos()).is_allowed());
        assert!(!gcra.check(&quota, clock.now_nanos()).is_allowed());
    }

    #[test]
    fn steady_traffic_at_the_quota_rate_is_always_admitted() {
        let clock = ManualClock::new(0);
        for quota in [
            ten_per_second(1),
            ten_per_second(10),
            Quota::per_period(nz(3), Duration::from_secs(1))
                .unwrap()
                .with_burst(nz(1)),
        ] {
            let gcra = Gcra::new();
            for _ in 0..10_000 {
                assert!(gcra.check(&quota, clock.now_nanos()).is_allowed());
                clock.advance(quota.emission_interval());
            }
        }
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let quota = ten_per_second(2);
        let gcra = Gcra::new();
        assert!(gcra.check(&quota, 0).is_allowed());
        assert!(gcra.check(&quota, 0).is_allowed());
        let before = gcra.tat.load(Ordering::Relaxed);
        for _ in 0..10 {
            assert!(!gcra.check(&quota, 0).is_allowed());
        }
        assert_eq!(gcra.tat.load(Ordering::Relaxed), before);
    }

    #[test]
    fn charging_several_at_once() {
        let quota = ten_per_second(5);
        let gcra = Gcra::new();
        assert_eq!(
            gcra.check_n(&quota, nz(3), 0),
            Ok(Decision::Allowed {
                remaining: 2,
                reset_after: T * 3
            })
        );
        assert_eq!(
            gcra.check_n(&quota, nz(3), 0),
            Ok(Decision::Denied {
                retry_after: T,
                reset_after: T * 3
            })
        );
        assert!(gcra.check_n(&quota, nz(2), 0).unwrap().is_allowed());
    }

    #[test]
    fn charges_beyond_the_burst_can_never_succeed() {
        let quota = ten_per_second(5);
        let gcra = Gcra::new();
        assert_eq!(
            gcra.check_n(&quota, nz(6), u64::MAX),
            Err(InsufficientCapacity {
                requested: 6,
                burst: 5
            })
        );
        assert!(gcra.is_replenished(0), "a refusal charges nothing");
    }

    #[test]
    fn a_clock_stepping_backwards_admits_nothing_extra() {
        let clock = ManualClock::new(10_000_000_000);
        let quota = ten_per_second(3);
        let gcra = Gcra::new();
        for _ in 0..3 {
            assert!(gcra.check(&quota, clock.now_nanos()).is_allowed());
        }
        for back in [1, 1_000, 100_000_000, 10_000_000_000] {
            clock.set(10_000_000_000 - back);
            let decision = gcra.check(&quota, clock.now_nanos());
            let Decision::Denied { retry_after, .. } = decision else {
                panic!("admitted after stepping back {back} ns: {decision:?}");
            };
            // The wait is measured from the earlier reading, so it is longer.
            assert_eq!(retry_after, T + Duration::from_nanos(back));
        }
        // Back at the original time, the state is exactly as it was.
        clock.set(10_000_000_000);
        clock.advance(T);
        assert!(gcra.check(&quota, clock.now_nanos()).is_allowed());
        assert!(!gcra.check(&quota, clock.now_nanos()).is_allowed());
    }

    #[test]
    fn replenished_state_can_be_evicted() {
        let quota = ten_per_second(2);
        let gcra = Gcra::new();
        assert!(gcra.is_replenished(0));
        assert!(gcra.check(&quota, 0).is_allowed());
        assert!(!gcra.is_replenished(0));
        assert!(!gcra.is_replenished(99_999_999));
        assert!(gcra.is_replenished(100_000_000));
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        let quota = Quota::per_period(nz(1), crate::quota::MAX_PERIOD)
            .unwrap()
            .with_burst(NonZeroU32::MAX);
        let gcra = Gcra::new();
        let burst = quota.burst().get();
        assert!(gcra.check_n(&quota, quota.burst(), 0).unwrap().is_allowed());
        let decision = gcra.check(&quota, 0);
        assert_eq!(
            decision,
            Decision::Denied {
                retry_after: quota.emission_interval(),
                reset_after: quota.emission_interval() * burst,
            }
        );
    }
}
