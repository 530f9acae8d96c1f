//! [`GlobalLimiter`]: one global quota, checked through local leases of Redis
//! tokens (see the [module documentation](super) for the design and bounds).

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::redis::{Acquire, Grant};
use super::{DecisionSource, FailureMode, GlobalDecision, GlobalError, GlobalKey, RedisBackend};
use crate::algorithm::sealed::Step;
use crate::algorithm::{Algorithm, from_nanos, nanos_of};
use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::gcra::Gcra;
use crate::quota::Quota;
use crate::store::{KeyedStore, KeyedUndo, StoreConfig};

const SHARDS: usize = 16;

/// One shard of the lease table, by key hash.
type LeaseShard = RwLock<HashMap<u64, Arc<Lease>>>;

/// How a [`GlobalLimiter`] leases tokens and what it does when Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalConfig {
    /// What a request gets while Redis is unavailable.
    pub failure_mode: FailureMode,
    /// The largest lease, in tokens. The effective lease is also capped at a
    /// tenth of the quota's burst (at least 1), so that no replica holds much
    /// of a small limit. 1 disables batching: one Redis call per request.
    pub max_lease: NonZeroU32,
    /// How long a lease's tokens may be spent locally (local clock).
    pub lease_ttl: Duration,
    /// The most keys with a lease at once (and the bound of the fallback
    /// limiter); beyond it, keys are checked in Redis one request at a time.
    pub max_keys: NonZeroUsize,
    /// The quota of the local fallback limiter (failure mode open); `None`
    /// uses the global quota itself, per replica.
    pub fallback: Option<Quota>,
}

impl GlobalConfig {
    /// Leases of up to 16 tokens for 1 s, 100 000 keys, the global quota as
    /// fallback.
    #[must_use]
    pub fn new(failure_mode: FailureMode) -> Self {
        Self {
            failure_mode,
            max_lease: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            lease_ttl: Duration::from_secs(1),
            max_keys: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
            fallback: None,
        }
    }
}

/// What one admitted [`GlobalLimiter::check`] charged, to give back with
/// [`GlobalLimiter::refund`]. A refused check charged nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalCharge {
    n: u32,
    from: ChargedFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChargedFrom {
    /// Nothing to give back: refused, or taken from Redis in a call of its own.
    Nothing,
    /// Spent from the key's lease.
    Lease,
    /// Charged to the local fallback limiter while Redis was unavailable.
    Fallback(KeyedUndo),
}

impl GlobalCharge {
    /// Nothing charged.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            n: 0,
            from: ChargedFrom::Nothing,
        }
    }

    fn lease(n: u32) -> Self {
        Self {
            n,
            from: ChargedFrom::Lease,
        }
    }

    /// Whether there is anything to give back.
    #[must_use]
    pub fn is_none(&self) -> bool {
        self.from == ChargedFrom::Nothing
    }
}

/// Local lease state of one key.
#[derive(Debug)]
struct Lease {
    /// Tokens left to spend locally.
    tokens: AtomicU32,
    /// Local clock reading from which the tokens may no longer be spent.
    expires_at: AtomicU64,
    /// Local clock reading until which Redis said the key is spent.
    denied_until: AtomicU64,
    /// Local clock reading at which Redis expects the limit replenished.
    reset_at: AtomicU64,
    /// Tokens Redis had left at the last call (for the headers).
    redis_remaining: AtomicU32,
    /// Held while refilling, so one request per key and replica calls Redis.
    refill: tokio::sync::Mutex<Refill>,
}

#[derive(Debug)]
struct Refill {
    /// The next lease size.
    size: u32,
    /// The Redis TAT right after the current lease was granted (µs).
    end: u64,
}

impl Lease {
    fn new() -> Self {
        Self {
            tokens: AtomicU32::new(0),
            expires_at: AtomicU64::new(0),
            denied_until: AtomicU64::new(0),
            reset_at: AtomicU64::new(0),
            redis_remaining: AtomicU32::new(0),
            refill: tokio::sync::Mutex::new(Refill { size: 1, end: 0 }),
        }
    }

    /// Decides from local state alone, if it can.
    fn take(&self, n: u32, now: u64) -> Option<Decision> {
        let reset_after = from_nanos(u128::from(
            self.reset_at.load(Ordering::Relaxed).saturating_sub(now),
        ));
        let denied_until = self.denied_until.load(Ordering::Acquire);
        if now < denied_until {
            let retry_after = from_nanos(u128::from(denied_until - now));
            return Some(Decision::Denied {
                retry_after,
                reset_after: reset_after.max(retry_after),
            });
        }
        if now >= self.expires_at.load(Ordering::Acquire) {
            return None;
        }
        let left = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                tokens.checked_sub(n)
            })
            .ok()?
            - n;
        Some(Decision::Allowed {
            remaining: left.saturating_add(self.redis_remaining.load(Ordering::Relaxed)),
            reset_after,
        })
    }

    /// Idle: nothing to spend, no refusal to remember, nobody refilling.
    fn is_idle(&self, now: u64) -> bool {
        (self.tokens.load(Ordering::Relaxed) == 0 || now >= self.expires_at.load(Ordering::Relaxed))
            && now >= self.denied_until.load(Ordering::Relaxed)
            && self.refill.try_lock().is_ok()
    }
}

/// A global quota (one [`Quota`] shared by every replica through Redis),
/// checked per key with local leases.
#[derive(Debug)]
pub struct GlobalLimiter<C: Clock> {
    backend: Arc<RedisBackend>,
    quota: Quota,
    config: GlobalConfig,
    clock: C,
    leases: Box<[LeaseShard]>,
    fallback: KeyedStore<Gcra>,
}

impl<C: Clock> GlobalLimiter<C> {
    /// A limiter for `quota` on `backend`; `clock` times leases and remembered
    /// refusals (decisions themselves use Redis's clock).
    #[must_use]
    pub fn new(backend: Arc<RedisBackend>, quota: Quota, config: GlobalConfig, clock: C) -> Self {
        let fallback = KeyedStore::new(
            config.fallback.unwrap_or(quota),
            StoreConfig::new(config.max_keys),
        );
        Self {
            backend,
            quota,
            config,
            clock,
            leases: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            fallback,
        }
    }

    /// Returns the global quota.
    #[must_use]
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// What the IETF `RateLimit-Policy` header advertises for this limit.
    #[must_use]
    pub fn info(&self) -> QuotaInfo {
        <Gcra as Algorithm>::info(&self.quota)
    }

    /// Returns the Redis backend (and through it the counters).
    #[must_use]
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Checks a charge of `n` for `key`: from the local lease when it can, else
    /// with one Redis call (which refills the lease), else per the failure mode.
    /// Returns within the backend's deadline.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `n` exceeds the quota's burst.
    ///
    /// # Cancel safety
    ///
    /// Cancelling may lose tokens already taken from Redis: the limit then errs
    /// strict, never lenient.
    pub async fn check(
        &self,
        key: &GlobalKey,
        n: NonZeroU32,
    ) -> Result<GlobalDecision, InsufficientCapacity> {
        <Gcra as Algorithm>::validate(&self.quota, n)?;
        let stats = self.backend.stats();
        let now = self.clock.now_nanos();
        let Some(lease) = self.lease(key, now) else {
            // The lease table is full of busy keys: one call per request.
            let request = self.request(key, n.get(), n.get(), 0, 0);
            return Ok(match self.backend.acquire(request).await {
                Ok(grant) => GlobalDecision::Decided {
                    decision: grant_decision(&grant, n.get()),
                    source: DecisionSource::Redis,
                    charge: GlobalCharge::none(),
                },
                Err(error) => self.failed(key, n, now, error),
            });
        };
        if let Some(decision) = lease.take(n.get(), now) {
            if decision.is_allowed() {
                stats.lease_admitted();
            } else {
                stats.lease_denied();
            }
            return Ok(GlobalDecision::Decided {
                charge: lease_charge(&decision, n.get()),
                decision,
                source: DecisionSource::Lease,
            });
        }
        let deadline = self.backend.config().deadline;
        Ok(
            match tokio::time::timeout(deadline, self.refill(key, &lease, n.get())).await {
                Ok(Ok(decided)) => decided,
                Ok(Err(error)) => self.failed(key, n, now, error),
                Err(_) => {
                    // The call inside has the same deadline and may not have seen it
                    // yet: count it and open the circuit here.
                    self.backend.timed_out();
                    self.failed(key, n, now, GlobalError::Timeout { deadline })
                }
            },
        )
    }

    /// One Redis call for `key`, under the key's refill lock.
    async fn refill(
        &self,
        key: &GlobalKey,
        lease: &Lease,
        n: u32,
    ) -> Result<GlobalDecision, GlobalError> {
        let mut refill = lease.refill.lock().await;
        let now = self.clock.now_nanos();
        // Another request may have refilled while this one waited.
        if let Some(decision) = lease.take(n, now) {
            return Ok(GlobalDecision::Decided {
                charge: lease_charge(&decision, n),
                decision,
                source: DecisionSource::Lease,
            });
        }
        let leftover = lease.tokens.swap(0, Ordering::AcqRel);
        // Grow the lease while leases run dry, shrink it when they expire unused.
        refill.size = if leftover == 0 {
            refill.size.saturating_mul(2)
        } else if leftover > refill.size / 2 {
            refill.size / 2
        } else {
            refill.size
        }
        .clamp(1, self.lease_cap());
        let want = refill.size.max(n);
        let request = self.request(key, want, n, leftover, refill.end);
        let grant = self.backend.acquire(request).await?;
        self.backend.stats().leased(grant.granted, leftover);
        let now = self.clock.now_nanos();
        lease.reset_at.store(
            now.saturating_add(nanos_of(grant.reset_after)),
            Ordering::Relaxed,
        );
        lease
            .redis_remaining
            .store(grant.remaining, Ordering::Relaxed);
        if grant.granted >= n {
            refill.end = grant.end;
            lease.expires_at.store(
                now.saturating_add(nanos_of(self.config.lease_ttl)),
                Ordering::Release,
            );
            lease.tokens.store(grant.granted - n, Ordering::Release);
        } else {
            refill.end = 0;
            lease.denied_until.store(
                now.saturating_add(nanos_of(grant.retry_after)),
                Ordering::Release,
            );
        }
        let decision = grant_decision(&grant, n);
        Ok(GlobalDecision::Decided {
            // An admitted request's token came with the lease's: it goes back there.
            charge: lease_charge(&decision, n),
            decision,
            source: DecisionSource::Redis,
        })
    }

    /// Gives back what an admitted [`check`](Self::check) of `key` charged (see the
    /// [module documentation](super)): into the key's lease, or to the local
    /// fallback limiter. A lease that expired meanwhile returns the token to Redis
    /// with its next refill, counting only the part of it still ahead of Redis's
    /// clock, so a refund never makes the limit more generous than if the request
    /// had not come.
    pub fn refund(&self, key: &GlobalKey, charge: GlobalCharge) {
        match charge.from {
            ChargedFrom::Nothing => {}
            ChargedFrom::Lease => {
                let hash = key.hash().0;
                let shard = &self.leases[usize::try_from(hash % SHARDS as u64).unwrap_or(0)];
                let lease = shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&hash)
                    .cloned();
                if let Some(lease) = lease {
                    lease.tokens.fetch_add(charge.n, Ordering::AcqRel);
                }
            }
            ChargedFrom::Fallback(undo) => {
                self.fallback.undo_charge(undo, self.clock.now_nanos());
            }
        }
    }

    fn failed(
        &self,
        key: &GlobalKey,
        n: NonZeroU32,
        now: u64,
        error: GlobalError,
    ) -> GlobalDecision {
        let stats = self.backend.stats();
        match self.config.failure_mode {
            FailureMode::Open => {
                stats.fallback();
                // `n` fits the global quota; a smaller fallback may refuse it.
                let (decision, charge) =
                    match <Gcra as Algorithm>::validate(self.fallback.quota(), n) {
                        Ok(()) => {
                            let (step, undo) = self.fallback.charge(key.hash(), n.get(), now);
                            let decision = match step {
                                Step::Admit { decision, .. } | Step::Deny(decision) => decision,
                            };
                            let charge = GlobalCharge {
                                n: n.get(),
                                from: if decision.is_allowed() {
                                    ChargedFrom::Fallback(undo)
                                } else {
                                    ChargedFrom::Nothing
                                },
                            };
                            (decision, charge)
                        }
                        Err(_) => (
                            Decision::Denied {
                                retry_after: self.fallback.info().window,
                                reset_after: self.fallback.info().window,
                            },
                            GlobalCharge::none(),
                        ),
                    };
                GlobalDecision::Decided {
                    decision,
                    source: DecisionSource::Fallback,
                    charge,
                }
            }
            FailureMode::Closed => {
                stats.unavailable();
                GlobalDecision::Unavailable {
                    retry_after: self.backend.retry_in(),
                    error,
                }
            }
        }
    }

    fn lease_cap(&self) -> u32 {
        (self.quota.burst().get() / 10).clamp(1, self.config.max_lease.get())
    }

    fn request<'a>(
        &self,
        key: &'a GlobalKey,
        want: u32,
        need: u32,
        give_back: u32,
        lease_end: u64,
    ) -> Acquire<'a> {
        Acquire {
            key: key.redis_key(),
            interval_micros: self.quota.emission_interval().as_nanos() as f64 / 1_000.0,
            burst: self.quota.burst().get(),
            want,
            need,
            give_back,
            lease_end,
            charge: 0,
        }
    }

    /// The key's lease, created if there is room.
    fn lease(&self, key: &GlobalKey, now: u64) -> Option<Arc<Lease>> {
        let hash = key.hash().0;
        let shard = &self.leases[usize::try_from(hash % SHARDS as u64).unwrap_or(0)];
        if let Some(lease) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
        {
            return Some(Arc::clone(lease));
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = map.get(&hash) {
            return Some(Arc::clone(lease));
        }
        let cap = self.config.max_keys.get().div_ceil(SHARDS);
        if map.len() >= cap {
            map.retain(|_, lease| Arc::strong_count(lease) > 1 || !lease.is_idle(now));
            if map.len() >= cap {
                return None;
            }
        }
        let lease = Arc::new(Lease::new());
        map.insert(hash, Arc::clone(&lease));
        Some(lease)
    }
}

/// What a decision from a lease charged.
fn lease_charge(decision: &Decision, n: u32) -> GlobalCharge {
    if decision.is_allowed() {
        GlobalCharge::lease(n)
    } else {
        GlobalCharge::none()
    }
}

pub(super) fn grant_decision(grant: &Grant, n: u32) -> Decision {
    if grant.granted >= n {
        Decision::Allowed {
            remaining: (grant.granted - n).saturating_add(grant.remaining),
            reset_after: grant.reset_after,
        }
    } else {
        let retry_after = grant.retry_after.max(Duration::from_micros(1));
        Decision::Denied {
            retry_after,
            reset_after: grant.reset_after.max(retry_after),
        }
    }
}
