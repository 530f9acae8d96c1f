//! [`GlobalBudget`]: an LLM token budget shared by every replica through Redis, with
//! the reservation and settlement of a local [`TokenBudget`](crate::TokenBudget).
//!
//! A token budget is per organisation, not per replica: its state lives in Redis, in
//! the same GCRA script as global request limits. A request reserves its
//! `max_tokens` with one call (all of them, or a refusal with the wait); when the
//! agent reports its usage, one more call gives back what it did not use (only the
//! part of the reservation still ahead of Redis's clock, so a refund never makes the
//! budget more generous than if the tokens had not been reserved) or charges what it
//! used beyond the reservation (at most one budget ahead). A settlement of exactly
//! the reservation needs no call.
//!
//! There are no leases here: a reservation is hundreds of tokens, not one, and an LLM
//! request takes far longer than two Redis round trips. Every token admitted was
//! granted by Redis first, so the replicas together never admit more than the budget
//! (what they may overspend is usage beyond the reservations, charged after the
//! fact, as with a local budget). While Redis is unreachable the failure mode
//! decides, as for request limits: `Open` reserves in a local budget of the same
//! quota, per replica; `Closed` answers unavailable.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::lease::grant_decision;
use super::redis::Acquire;
use super::{FailureMode, GlobalError, GlobalKey, RedisBackend};
use crate::algorithm::{Algorithm, nanos_of};
use crate::budget::{BudgetQuota, Reservation, Reserve, Settlement, TokenBudget};
use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::store::{KeyedStore, StoreConfig};

/// The answer of [`GlobalBudget::reserve`].
#[derive(Debug)]
pub enum BudgetDecision {
    /// The tokens are reserved; settle the reservation when the request ends.
    Granted {
        /// Settle this with [`GlobalBudget::settle`].
        reservation: GlobalReservation,
        /// For the `RateLimit` headers.
        decision: Decision,
    },
    /// Not enough tokens: the wait until they are.
    Refused(Decision),
    /// Redis is unavailable and the failure mode is closed: answer 503.
    Unavailable {
        /// When to try again.
        retry_after: Duration,
        /// Why Redis could not decide.
        error: GlobalError,
    },
}

/// Tokens held in a [`GlobalBudget`] for an admitted request, until settled.
/// Dropping it unsettled keeps the whole charge.
#[must_use = "a reservation keeps its whole charge until it is settled"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalReservation {
    tokens: u32,
    /// Redis's TAT right after the reservation (µs of Redis's clock).
    end: u64,
    /// Local clock reading of the reservation.
    reserved_at: u64,
    /// Reserved in the local fallback budget while Redis was unavailable.
    fallback: Option<Reservation>,
}

impl GlobalReservation {
    /// The number of tokens reserved.
    #[must_use]
    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

/// One token budget ([`BudgetQuota`]) shared by every replica through Redis, per key.
#[derive(Debug)]
pub struct GlobalBudget<C: Clock> {
    backend: Arc<RedisBackend>,
    quota: BudgetQuota,
    failure_mode: FailureMode,
    clock: C,
    fallback: KeyedStore<TokenBudget>,
}

impl<C: Clock> GlobalBudget<C> {
    /// A budget of `quota` on `backend`; while Redis is unavailable `failure_mode`
    /// decides, with a local fallback budget tracking up to `max_keys` keys. `clock`
    /// times settlements (the budget itself runs on Redis's clock).
    #[must_use]
    pub fn new(
        backend: Arc<RedisBackend>,
        quota: BudgetQuota,
        failure_mode: FailureMode,
        max_keys: std::num::NonZeroUsize,
        clock: C,
    ) -> Self {
        Self {
            backend,
            fallback: KeyedStore::new(quota, StoreConfig::new(max_keys)),
            quota,
            failure_mode,
            clock,
        }
    }

    /// What the IETF `RateLimit-Policy` header advertises for this budget.
    #[must_use]
    pub fn info(&self) -> QuotaInfo {
        self.fallback.info()
    }

    /// Returns the Redis backend (and through it the counters).
    #[must_use]
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Reserves `tokens` for `key`: one Redis call, within the backend's deadline.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `tokens` exceeds the budget's burst.
    ///
    /// # Cancel safety
    ///
    /// Cancelling may leave the tokens reserved in Redis: the budget errs strict.
    pub async fn reserve(
        &self,
        key: &GlobalKey,
        tokens: NonZeroU32,
    ) -> Result<BudgetDecision, InsufficientCapacity> {
        <TokenBudget as Algorithm>::validate(&self.quota, tokens)?;
        let n = tokens.get();
        let request = self.acquire(key, n, n, 0, 0, 0);
        let now = self.clock.now_nanos();
        match self.backend.acquire(request).await {
            Ok(grant) => {
                let decision = grant_decision(&grant, n);
                Ok(if grant.granted >= n {
                    BudgetDecision::Granted {
                        reservation: GlobalReservation {
                            tokens: n,
                            end: grant.end,
                            reserved_at: now,
                            fallback: None,
                        },
                        decision,
                    }
                } else {
                    BudgetDecision::Refused(decision)
                })
            }
            Err(error) => Ok(match self.failure_mode {
                FailureMode::Open => {
                    self.backend.stats().fallback();
                    match self.fallback.reserve(key.hash(), tokens, now)? {
                        Reserve::Granted {
                            reservation,
                            decision,
                        } => BudgetDecision::Granted {
                            reservation: GlobalReservation {
                                tokens: n,
                                end: 0,
                                reserved_at: now,
                                fallback: Some(reservation),
                            },
                            decision,
                        },
                        Reserve::Refused(decision) => BudgetDecision::Refused(decision),
                    }
                }
                FailureMode::Closed => {
                    self.backend.stats().unavailable();
                    BudgetDecision::Unavailable {
                        retry_after: self.backend.retry_in(),
                        error,
                    }
                }
            }),
        }
    }

    /// Settles `reservation` of `key` with the `actual` tokens used: gives back what
    /// was not used or charges what was used beyond it (one Redis call; none when
    /// `actual` is what was reserved, or when the settlement comes later than the
    /// budget's `settle_within` and has nothing to give back). If Redis cannot be
    /// reached the settlement is lost: an unused reservation stays charged, an
    /// overspend goes uncharged.
    pub async fn settle(
        &self,
        key: &GlobalKey,
        reservation: GlobalReservation,
        actual: u64,
    ) -> Settlement {
        let now = self.clock.now_nanos();
        if let Some(local) = reservation.fallback {
            return self.fallback.settle(local, actual, now);
        }
        let reserved = u64::from(reservation.tokens);
        let late =
            now.saturating_sub(reservation.reserved_at) > nanos_of(self.quota.settle_within());
        let (give_back, charge) = match actual.cmp(&reserved) {
            std::cmp::Ordering::Equal => return Settlement::default(),
            std::cmp::Ordering::Less if late => return Settlement::default(),
            std::cmp::Ordering::Less => (u32::try_from(reserved - actual).unwrap_or(u32::MAX), 0),
            std::cmp::Ordering::Greater => {
                (0, u32::try_from(actual - reserved).unwrap_or(u32::MAX))
            }
        };
        let request = self.acquire(key, 0, 0, give_back, reservation.end, charge);
        match self.backend.acquire(request).await {
            Ok(grant) => Settlement {
                refunded: u64::from(grant.returned),
                charged: u64::from(charge),
            },
            Err(_) => Settlement::default(),
        }
    }

    fn acquire<'a>(
        &self,
        key: &'a GlobalKey,
        want: u32,
        need: u32,
        give_back: u32,
        lease_end: u64,
        charge: u32,
    ) -> Acquire<'a> {
        let quota = self.quota.quota();
        Acquire {
            key: key.redis_key(),
            interval_micros: quota.emission_interval().as_nanos() as f64 / 1_000.0,
            burst: quota.burst().get(),
            want,
            need,
            give_back,
            lease_end,
            charge,
        }
    }
}
