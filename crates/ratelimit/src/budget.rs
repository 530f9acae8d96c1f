//! LLM token budgets: reserve tokens when a request is admitted, settle with the
//! tokens it really used when it ends.
//!
//! A budget is GCRA over tokens: `tokens` per `period`, with a burst (by default
//! the whole budget). [`TokenBudget::reserve`] charges the request's `max_tokens`
//! (or the configured estimate) up front, so concurrent requests cannot together
//! overspend the way charging each response after the fact would allow; a
//! request that does not fit is refused with the time the tokens take to come
//! back. [`TokenBudget::settle`] then corrects the charge:
//!
//! * used more than reserved: the difference is charged at once (never refused:
//!   the tokens are spent), but the debt is capped at one full burst, so a
//!   refusal's wait never exceeds the budget's window;
//! * used less: the unused part is refunded by moving the TAT back, but only the
//!   part of the reservation that is still ahead of `now` in the budget's
//!   schedule, and never past `now`.
//!
//! # Exactness of refunds
//!
//! A refund never returns more than the exact model ("charge `actual` instead of
//! the reservation, at admission") would have left available, so settlement can
//! only err on the strict side:
//!
//! * a reservation's charge drains over time; what has drained by the time it is
//!   settled cannot be refunded, so a request settled long after its tokens would
//!   have refilled anyway gets nothing back (which is exact when the bucket was
//!   never empty in between, and strict by at most the settle delay otherwise);
//! * refunds of reservations taken earlier shift a later reservation forward in
//!   the schedule. The state counts every refund (in whole emission intervals,
//!   rounded up, in the 32 bits next to the TAT) and a reservation remembers the
//!   count when it was taken, so it can assume the largest shift that could have
//!   happened, which again errs strict only when refunds of *later* reservations
//!   are counted too;
//! * a reservation settled after [`BudgetQuota::settle_within`] is never
//!   refunded (its key may have been evicted and reused meanwhile; a keyed store
//!   keeps a budget for that long after its last charge drains).

use std::num::NonZeroU32;
use std::time::Duration;

use portable_atomic::{AtomicU128, Ordering};

use crate::algorithm::sealed::{self, Step, Undo};
use crate::algorithm::{Algorithm, nanos_of};
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::gcra::{Gcra, low_u64, undo_tat};
use crate::key::KeyHash;
use crate::quota::{Quota, QuotaError};
use crate::store::{Applied, KeyedStore, Update};

/// Default for [`BudgetQuota::settle_within`]: one hour.
pub const DEFAULT_SETTLE_WITHIN: Duration = Duration::from_secs(3_600);

/// A token budget: a [`Quota`] over tokens, and how long after admission a
/// reservation may still be refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BudgetQuota {
    quota: Quota,
    settle_within: Duration,
}

impl BudgetQuota {
    /// Allows `tokens` per `period`, all of them at once if need be.
    ///
    /// # Errors
    ///
    /// As [`Quota::per_period`].
    pub fn per_period(tokens: NonZeroU32, period: Duration) -> Result<Self, QuotaError> {
        Ok(Self::from_quota(Quota::per_period(tokens, period)?))
    }

    /// Wraps a quota over tokens (its burst is the largest reservation).
    #[must_use]
    pub fn from_quota(quota: Quota) -> Self {
        Self {
            quota,
            settle_within: DEFAULT_SETTLE_WITHIN,
        }
    }

    /// Returns this budget with reservations refundable for `settle_within` after
    /// admission: set it to the longest a request may run (the route's total
    /// timeout). Keyed budgets stay tracked that long after their last charge
    /// drained.
    #[must_use]
    pub fn with_settle_within(self, settle_within: Duration) -> Self {
        Self {
            settle_within,
            ..self
        }
    }

    /// Returns the underlying quota over tokens.
    #[must_use]
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Returns how long after admission a reservation may still be refunded.
    #[must_use]
    pub fn settle_within(&self) -> Duration {
        self.settle_within
    }
}

/// Tokens held for an admitted request until it is [settled](TokenBudget::settle).
///
/// Settle every reservation exactly once; one that is dropped (a request
/// cancelled before it could report usage) simply keeps its whole charge.
#[must_use = "a reservation keeps its whole charge until it is settled"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    key: Option<KeyHash>,
    tokens: u32,
    end: u64,
    refunds_mark: u32,
    reserved_at: u64,
}

impl Reservation {
    /// Returns the number of tokens reserved.
    #[must_use]
    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

/// The outcome of [`TokenBudget::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// The tokens are reserved; `decision` is [`Decision::Allowed`].
    Granted {
        /// Settle this when the request ends.
        reservation: Reservation,
        /// For the `RateLimit` headers.
        decision: Decision,
    },
    /// Not enough tokens: [`Decision::Denied`] with the wait until they are.
    Refused(Decision),
}

impl Reserve {
    /// The decision either way.
    pub fn decision(&self) -> Decision {
        match *self {
            Self::Granted { decision, .. } | Self::Refused(decision) => decision,
        }
    }
}

/// What a settlement changed, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settlement {
    /// Whole tokens given back.
    pub refunded: u64,
    /// Tokens charged beyond the reservation.
    pub charged: u64,
}

/// A token budget's state: the TAT and a count of refunds, in one 128-bit atomic.
#[derive(Debug, Default)]
pub struct TokenBudget {
    state: AtomicU128,
}

impl TokenBudget {
    /// Creates a budget with everything available.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: AtomicU128::new(0),
        }
    }

    /// Reserves `tokens` at `now`, or refuses with the wait until they fit.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `tokens` exceeds the budget's burst.
    pub fn reserve(
        &self,
        quota: &BudgetQuota,
        tokens: NonZeroU32,
        now: u64,
    ) -> Result<Reserve, InsufficientCapacity> {
        <Self as Algorithm>::validate(quota, tokens)?;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let step = <Self as Algorithm>::charge(current, quota, tokens.get(), now);
            let Step::Admit { state, .. } = step else {
                return Ok(reserve_of(step, None, current, tokens.get(), now));
            };
            match self.state.compare_exchange_weak(
                current,
                state,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(reserve_of(step, None, current, tokens.get(), now)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Settles `reservation` with the `actual` tokens used, at `now`.
    pub fn settle(
        &self,
        quota: &BudgetQuota,
        reservation: Reservation,
        actual: u64,
        now: u64,
    ) -> Settlement {
        let mut outcome = Settlement::default();
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                let (state, settled) = settle_state(state, quota, &reservation, actual, now);
                outcome = settled;
                Some(state)
            });
        outcome
    }

    /// Returns how many tokens could be reserved at `now`.
    #[must_use]
    pub fn remaining(&self, quota: &BudgetQuota, now: u64) -> u32 {
        let state = self.state.load(Ordering::Relaxed);
        let tat = u128::from(low_u64(state)).max(u128::from(now));
        let limit = u128::from(now) + u128::from(quota.quota.window_nanos());
        u32::try_from(limit.saturating_sub(tat) / u128::from(quota.quota.interval_nanos()))
            .unwrap_or(u32::MAX)
    }
}

impl KeyedStore<TokenBudget> {
    /// Reserves `tokens` for `key` at `now` (see [`TokenBudget::reserve`]).
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `tokens` exceeds the budget's burst.
    pub fn reserve(
        &self,
        key: KeyHash,
        tokens: NonZeroU32,
        now: u64,
    ) -> Result<Reserve, InsufficientCapacity> {
        <TokenBudget as Algorithm>::validate(self.quota(), tokens)?;
        let quota = *self.quota();
        let applied = self.update(key, now, true, |state| {
            let step = <TokenBudget as Algorithm>::charge(state, &quota, tokens.get(), now);
            let reserve = reserve_of(step, Some(key), state, tokens.get(), now);
            match step {
                Step::Admit { state, .. } => Update::Write(state, reserve),
                Step::Deny(_) => Update::Keep(reserve),
            }
        });
        Ok(match applied {
            Applied::Done(reserve) => reserve,
            // Untracked: nothing to settle.
            Applied::Absent | Applied::Full => match self.charge(key, tokens.get(), now).0 {
                Step::Admit { decision, .. } => Reserve::Granted {
                    reservation: Reservation {
                        key: None,
                        tokens: tokens.get(),
                        end: 0,
                        refunds_mark: 0,
                        reserved_at: now,
                    },
                    decision,
                },
                Step::Deny(decision) => Reserve::Refused(decision),
            },
        })
    }

    /// Settles `reservation` with the `actual` tokens used, at `now` (see
    /// [`TokenBudget::settle`]). A reservation admitted untracked settles to
    /// nothing.
    pub fn settle(&self, reservation: Reservation, actual: u64, now: u64) -> Settlement {
        let Some(key) = reservation.key else {
            return Settlement::default();
        };
        let quota = *self.quota();
        let overspent = actual > u64::from(reservation.tokens);
        match self.update(key, now, overspent, |state| {
            let (state, settled) = settle_state(state, &quota, &reservation, actual, now);
            Update::Write(state, settled)
        }) {
            Applied::Done(settled) => settled,
            Applied::Absent | Applied::Full => Settlement::default(),
        }
    }
}

fn reserve_of(step: Step, key: Option<KeyHash>, before: u128, tokens: u32, now: u64) -> Reserve {
    match step {
        Step::Admit { decision, undo, .. } => Reserve::Granted {
            reservation: Reservation {
                key,
                tokens,
                end: undo.mark,
                refunds_mark: refunds_of(before),
                reserved_at: now,
            },
            decision,
        },
        Step::Deny(decision) => Reserve::Refused(decision),
    }
}

fn refunds_of(state: u128) -> u32 {
    // Masked to 32 bits, so the conversion cannot fail.
    u32::try_from((state >> 64) & u128::from(u32::MAX)).unwrap_or(0)
}

/// The budget state after settling `reservation` with `actual` tokens.
fn settle_state(
    state: u128,
    quota: &BudgetQuota,
    reservation: &Reservation,
    actual: u64,
    now: u64,
) -> (u128, Settlement) {
    let tat = low_u64(state);
    let refunds = refunds_of(state);
    let interval = quota.quota.interval_nanos();
    let reserved = u64::from(reservation.tokens);
    if actual >= reserved {
        let extra = actual - reserved;
        if extra == 0 {
            return (state, Settlement::default());
        }
        let cost = u128::from(extra) * u128::from(interval);
        let cap = u128::from(now) + u128::from(quota.quota.window_nanos());
        let next = (u128::from(tat.max(now)) + cost).min(cap.max(u128::from(tat)));
        let next = u64::try_from(next).unwrap_or(u64::MAX);
        let state = (state & !u128::from(u64::MAX)) | u128::from(next);
        return (
            state,
            Settlement {
                refunded: 0,
                charged: extra,
            },
        );
    }
    if now.saturating_sub(reservation.reserved_at) > nanos_of(quota.settle_within) {
        return (state, Settlement::default());
    }
    let unused = u128::from(reserved - actual) * u128::from(interval);
    // Refunds since the reservation may have shifted it forward; assume they all
    // did.
    let shift = u128::from(refunds.wrapping_sub(reservation.refunds_mark)) * u128::from(interval);
    let end = u128::from(reservation.end).saturating_sub(shift);
    let refund = unused
        .min(end.saturating_sub(u128::from(now)))
        .min(u128::from(tat.saturating_sub(now)));
    // `refund <= tat − now`, so it fits a u64.
    let refund = u64::try_from(refund).unwrap_or(0);
    let units = refund.div_ceil(interval);
    let refunds = refunds.wrapping_add(u32::try_from(units).unwrap_or(u32::MAX));
    let state = u128::from(refunds) << 64 | u128::from(tat - refund);
    (
        state,
        Settlement {
            refunded: refund / interval,
            charged: 0,
        },
    )
}

impl sealed::Sealed for TokenBudget {}

impl Algorithm for TokenBudget {
    type Quota = BudgetQuota;

    fn info(quota: &BudgetQuota) -> QuotaInfo {
        <Gcra as Algorithm>::info(&quota.quota)
    }

    fn validate(quota: &BudgetQuota, n: NonZeroU32) -> Result<(), InsufficientCapacity> {
        <Gcra as Algorithm>::validate(&quota.quota, n)
    }

    fn charge(state: u128, quota: &BudgetQuota, n: u32, now: u64) -> Step {
        <Gcra as Algorithm>::charge(state, &quota.quota, n, now)
    }

    fn undo(state: u128, _quota: &BudgetQuota, undo: Undo, now: u64) -> u128 {
        let tat = undo_tat(low_u64(state), undo, now);
        (state & !u128::from(u64::MAX)) | u128::from(tat)
    }

    fn is_idle(state: u128, quota: &BudgetQuota, now: u64) -> bool {
        low_u64(state).saturating_add(nanos_of(quota.settle_within)) <= now
    }

    fn debt(state: u128, quota: &BudgetQuota, now: u64) -> u128 {
        // Until the budget is full again and no settlement can still arrive.
        u128::from(
            low_u64(state)
                .saturating_add(nanos_of(quota.settle_within))
                .saturating_sub(now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// 1000 tokens per 10 s: T = 10 ms per token.
    fn budget() -> BudgetQuota {
        BudgetQuota::per_period(nz(1_000), Duration::from_secs(10)).unwrap()
    }

    fn granted(reserve: Reserve) -> Reservation {
        match reserve {
            Reserve::Granted { reservation, .. } => reservation,
            Reserve::Refused(decision) => panic!("refused: {decision:?}"),
        }
    }

    #[test]
    fn settling_at_once_refunds_exactly_the_unused_tokens() {
        let quota = budget();
        let budget = TokenBudget::new();
        let now = 100 * SEC;
        let reservation = granted(budget.reserve(&quota, nz(600), now).unwrap());
        assert_eq!(budget.remaining(&quota, now), 400);
        let settled = budget.settle(&quota, reservation, 150, now);
        assert_eq!(
            settled,
            Settlement {
                refunded: 450,
                charged: 0
            }
        );
        assert_eq!(budget.remaining(&quota, now), 850);
    }

    #[test]
    fn reservations_stop_concurrent_overspending_and_refusals_wait_truly() {
        let quota = budget();
        let budget = TokenBudget::new();
        let now = 100 * SEC;
        let first = granted(budget.reserve(&quota, nz(700), now).unwrap());
        let Reserve::Refused(refused) = budget.reserve(&quota, nz(400), now).unwrap() else {
            panic!("700 + 400 exceed the budget of 1000");
        };
        // 100 tokens must come back: 100 × 10 ms.
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
        budget.settle(&quota, first, 700, now);
        assert!(matches!(
            budget.reserve(&quota, nz(400), now + SEC).unwrap(),
            Reserve::Granted { .. }
        ));
    }

    #[test]
    fn overspending_is_charged_but_capped_at_one_budget() {
        let quota = budget();
        let budget = TokenBudget::new();
        let now = 100 * SEC;
        let reservation = granted(budget.reserve(&quota, nz(100), now).unwrap());
        let settled = budget.settle(&quota, reservation, 5_000, now);
        assert_eq!(settled.charged, 4_900);
        assert_eq!(budget.remaining(&quota, now), 0);
        let Reserve::Refused(refused) = budget.reserve(&quota, nz(1), now).unwrap() else {
            panic!("the budget is spent");
        };
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(10)));
        assert!(refused.retry_after().unwrap() <= quota.quota().period());
    }

    #[test]
    fn drained_reservations_refund_nothing() {
        let quota = budget();
        let budget = TokenBudget::new();
        let reservation = granted(budget.reserve(&quota, nz(100), 0).unwrap());
        // 100 tokens drain in 1 s; settled after 0.5 s only half is still ahead.
        let settled = budget.settle(&quota, reservation, 0, SEC / 2);
        assert_eq!(settled.refunded, 50);
        let reservation = granted(budget.reserve(&quota, nz(100), 10 * SEC).unwrap());
        assert_eq!(budget.settle(&quota, reservation, 0, 12 * SEC).refunded, 0);
    }

    #[test]
    fn late_settlements_never_refund() {
        let quota = budget().with_settle_within(Duration::from_secs(5));
        let budget = TokenBudget::new();
        let reservation = granted(budget.reserve(&quota, nz(1_000), 0).unwrap());
        assert_eq!(
            budget.settle(&quota, reservation, 0, 6 * SEC),
            Settlement::default()
        );
    }

    #[test]
    fn an_earlier_refund_shifts_a_later_reservation_and_is_accounted_for() {
        let quota = budget();
        let budget = TokenBudget::new();
        let first = granted(budget.reserve(&quota, nz(500), 0).unwrap());
        let second = granted(budget.reserve(&quota, nz(500), 0).unwrap());
        // The first gives back 400, moving the second's slot 4 s earlier.
        assert_eq!(budget.settle(&quota, first, 100, 0).refunded, 400);
        // 5.5 s later, the second (now ending at 6 s) has 0.5 s = 50 tokens
        // still ahead: at most that comes back, though 500 were unused.
        let settled = budget.settle(&quota, second, 0, 5 * SEC + SEC / 2);
        assert_eq!(settled.refunded, 50);
        assert_eq!(budget.remaining(&quota, 5 * SEC + SEC / 2), 1_000);
    }
}
