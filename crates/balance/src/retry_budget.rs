//! Retry budget: retries allowed as a share of recent requests, so that retries can
//! never multiply the load on a pool that is already failing.
//!
//! This is the budget of Finagle, linkerd and tower (`TpsBudget`), with the clock
//! injected and no lock. Every original request [deposits](RetryBudget::deposit)
//! `ratio` retries; every retry [withdraws](RetryBudget::withdraw) one, and is
//! refused when the balance would go below zero. On top of that a reserve of
//! `min_per_second × ttl` retries is always available, so that a pool with little
//! traffic can still retry. Deposits and withdrawals count for `ttl`, then expire.
//!
//! With `ratio = 0.2`, `min_per_second = 10` and `ttl = 10 s` (linkerd's defaults), a
//! pool that served 1000 requests in the last ten seconds may retry
//! `0.2 × 1000 + 10 × 10 = 300` times in that window.
//!
//! # Window
//!
//! The window is kept as ten slots of `ttl / 10` each, in a ring. A deposit or
//! withdrawal goes to the slot of the current time; the balance is the sum of the
//! slots of the last ten slot periods, the current one included. Something recorded
//! at time `t` therefore expires between `t + ttl − ttl / 10` and `t + ttl`.
//!
//! # Concurrency
//!
//! Each slot is one [`AtomicU64`]: the low 32 bits of its slot period number and a
//! signed 32-bit balance. Recording is a compare-and-exchange loop on one slot;
//! reading the balance is ten loads. A withdrawal checks the balance and then
//! records itself, so under contention concurrent withdrawals that all saw the last
//! retry available may all succeed: the overdraft is bounded by the number of
//! threads withdrawing at the same moment, and repaid within `ttl`.
//!
//! Amounts are kept in thousandths of a retry, so the ratio is applied to the
//! nearest 0.001. A slot's balance saturates at ±2³¹ thousandths (over two million
//! requests in one slot at ratio 1), beyond which the budget is only approximate.
//! Slot period numbers wrap after 2³² periods (over thirteen years at the shortest
//! slot); a slot left untouched for exactly that long would be read as current.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The number of slots the window is divided into.
const SLOTS: usize = 10;
/// One retry, in the budget's unit.
const RETRY: i64 = 1000;
/// The shortest window accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest window accepted.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// The largest ratio accepted (retries per request).
pub const MAX_RATIO: f64 = 1000.0;

/// A retry budget's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// How long a deposit or a withdrawal counts, between [`MIN_TTL`] and
    /// [`MAX_TTL`].
    pub ttl: Duration,
    /// Retries allowed per second of `ttl` whatever the traffic.
    pub min_per_second: u32,
    /// Retries allowed per original request, between 0 and [`MAX_RATIO`].
    pub ratio: f64,
}

impl Default for RetryBudgetConfig {
    /// linkerd's defaults: 20 % of requests over 10 s, plus 10 retries a second.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

/// Why a [`RetryBudgetConfig`] was refused. Not retryable: the configuration must
/// change.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum RetryBudgetError {
    /// `ttl` is outside [`MIN_TTL`]..=[`MAX_TTL`].
    #[error("retry budget window of {ttl:?} is outside 1s..=60s")]
    Ttl {
        /// The window asked for.
        ttl: Duration,
    },
    /// `ratio` is negative, above [`MAX_RATIO`] or not a number.
    #[error("retry ratio {ratio} is outside 0..=1000")]
    Ratio {
        /// The ratio asked for.
        ratio: f64,
    },
    /// `min_per_second × ttl` retries do not fit the budget's counters.
    #[error("{min_per_second} retries per second over {ttl:?} is too large a reserve")]
    Reserve {
        /// The rate asked for.
        min_per_second: u32,
        /// The window asked for.
        ttl: Duration,
    },
}

/// A retry budget for one pool, shared by all its requests.
#[derive(Debug)]
pub struct RetryBudget {
    slots: [AtomicU64; SLOTS],
    slot_nanos: u64,
    /// What one request deposits, in thousandths of a retry.
    deposit: i64,
    /// What is always available, in thousandths of a retry.
    reserve: i64,
}

/// Packs a slot period's low 32 bits and a balance.
fn pack(period: u32, balance: i32) -> u64 {
    (u64::from(period) << 32) | u64::from(balance.cast_unsigned())
}

fn unpack(slot: u64) -> (u32, i32) {
    // Each half holds exactly 32 bits, so the casts are lossless.
    let (period, bits) = ((slot >> 32) as u32, slot as u32);
    (period, bits.cast_signed())
}

impl RetryBudget {
    /// Creates an empty budget: only the reserve is available.
    ///
    /// # Errors
    ///
    /// [`RetryBudgetError`] when `config` is out of range.
    pub fn new(config: &RetryBudgetConfig) -> Result<Self, RetryBudgetError> {
        let RetryBudgetConfig {
            ttl,
            min_per_second,
            ratio,
        } = *config;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(RetryBudgetError::Ttl { ttl });
        }
        if !(0.0..=MAX_RATIO).contains(&ratio) {
            return Err(RetryBudgetError::Ratio { ratio });
        }
        // `ttl` is at most 60 000 ms, so the product fits an i64 easily.
        let reserve = i64::from(min_per_second) * i64::try_from(ttl.as_millis()).unwrap_or(0);
        // The reserve is withdrawn from the slots, so it must fit one slot.
        if reserve > i64::from(i32::MAX) {
            return Err(RetryBudgetError::Reserve {
                min_per_second,
                ttl,
            });
        }
        // In range 0..=1e6 after the check above, so the cast is exact.
        let deposit = (ratio * 1000.0).round() as i64;
        // `ttl` is at most 60 s, so its nanoseconds fit a u64.
        let slot_nanos = u64::try_from(ttl.as_nanos() / SLOTS as u128).unwrap_or(u64::MAX);
        Ok(Self {
            slots: std::array::from_fn(|_| AtomicU64::new(pack(0, 0))),
            slot_nanos,
            deposit,
            reserve,
        })
    }

    /// Records one original request at `now` (nanoseconds of any monotonic clock).
    ///
    /// Call it once per request, not per attempt: a retry is a withdrawal, not a
    /// request, so that `ratio` is retries per request.
    pub fn deposit(&self, now: u64) {
        self.add(self.deposit, now);
    }

    /// Asks for one retry at `now`; returns `true`, and charges it, if the budget
    /// allows it.
    #[must_use = "a refused withdrawal means the retry must not be sent"]
    pub fn withdraw(&self, now: u64) -> bool {
        if self.balance(now) < RETRY {
            return false;
        }
        self.add(-RETRY, now);
        true
    }

    /// The number of retries that would be allowed at `now` if nothing else
    /// happened, reserve included.
    #[must_use]
    pub fn available(&self, now: u64) -> u64 {
        u64::try_from(self.balance(now) / RETRY).unwrap_or(0)
    }

    fn period(&self, now: u64) -> u64 {
        now / self.slot_nanos
    }

    /// The reserve plus the balance of the slots still in the window at `now`.
    fn balance(&self, now: u64) -> i64 {
        // Only the low 32 bits of period numbers are stored; compare them wrapping.
        let current = self.period(now) as u32;
        self.slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Relaxed)))
            .filter(|&(period, _)| (current.wrapping_sub(period) as usize) < SLOTS)
            .map(|(_, balance)| i64::from(balance))
            .sum::<i64>()
            + self.reserve
    }

    fn add(&self, amount: i64, now: u64) {
        let period = self.period(now);
        // `period % SLOTS` is below SLOTS, so the cast is lossless.
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let period = period as u32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (stored, balance) = unpack(current);
            // A slot from an earlier lap starts over; one from a later lap (the clock
            // stepped back) keeps its period and takes the amount.
            let (keep, base) = if stored == period || stored.wrapping_sub(period).cast_signed() > 0
            {
                (stored, i64::from(balance))
            } else {
                (period, 0)
            };
            let clamped = (base + amount).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
            // Clamped to the i32 range just above.
            let next = pack(keep, clamped as i32);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        for period in [0, 1, u32::MAX] {
            for balance in [0, -1, 1, i32::MIN, i32::MAX] {
                assert_eq!(unpack(pack(period, balance)), (period, balance));
            }
        }
    }

    #[test]
    fn a_slot_balance_saturates() {
        let budget = RetryBudget::new(&RetryBudgetConfig {
            ratio: MAX_RATIO,
            min_per_second: 0,
            ..RetryBudgetConfig::default()
        })
        .unwrap();
        for _ in 0..3_000 {
            budget.deposit(0);
        }
        assert_eq!(budget.balance(0), i64::from(i32::MAX));
    }
}
