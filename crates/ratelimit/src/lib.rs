//! Rate limiting for Sluice: decide whether a request fits its quota, and if not,
//! how long the caller should wait.
//!
//! # Model
//!
//! A [`Quota`] is a rate (`requests` per `period`) plus a burst. It is validated
//! once, when configuration is loaded ([`Quota::per_period`] fails with a
//! [`QuotaError`]); after that nothing on the request path can fail.
//!
//! A [`Gcra`] is the state of one rate-limited key (a consumer, a client IP, a
//! pool). It implements the generic cell rate algorithm, the token bucket written
//! as a single timestamp: its whole state is one `AtomicU64`, updated with a
//! compare-and-exchange, so checks from many threads take no lock. The quota is
//! passed to each check instead of being stored, which keeps per-key state at eight
//! bytes.
//!
//! Each check returns a [`Decision`]: admitted with the remaining capacity, or
//! refused with the exact wait (`Retry-After`). A refused check changes nothing.
//! Charging more than the burst at once is an [`InsufficientCapacity`] error
//! because no amount of waiting would help.
//!
//! # What else is here
//!
//! * [`SlidingWindow`] ([`WindowQuota`]): N per window with the previous window
//!   weighted, for users who think "per minute"; 96 bits of state in one 128-bit
//!   atomic.
//! * [`KeyedStore`]: per-key state for one quota, lock-free for present keys,
//!   bounded (`max_keys`, about 20 bytes per key, allocated once); when full, a
//!   new key takes the place of the key of least debt, never refused for want of
//!   room. Keys are [`KeyHash`]es from a
//!   [`KeyHasher`].
//! * [`check_all`]: admission against several [`Limit`]s at once (a consumer key
//!   and a pool ceiling, a burst and a per-minute limit): admitted only if all
//!   admit, a refusal charges none, with [`SoftLimit`] warnings and the limit to
//!   report in the headers ([`Admission`]).
//! * [`TokenBudget`] ([`BudgetQuota`]): LLM token budgets that reserve at
//!   admission and [settle](TokenBudget::settle) with the real usage.
//! * [`global`]: limits shared by every replica through Redis, with leases,
//!   deadlines and a [`FailureMode`].
//! * [`retry_after_secs`], [`Decision::reset_secs`], [`QuotaInfo`]: the values of
//!   the `Retry-After`, `RateLimit` and `RateLimit-Policy` headers.
//!
//! # Per request, in the proxy
//!
//! ```
//! use std::num::{NonZeroU32, NonZeroUsize};
//! use std::time::Duration;
//!
//! use sluice_ratelimit::{
//!     Clock, Gcra, KeyHasher, KeyedStore, Limit, ManualClock, Quota, SoftLimit,
//!     StoreConfig, check_all,
//! };
//!
//! // Built once per route table: a store per (policy, tier), a ceiling per pool.
//! let standard = Quota::per_period(NonZeroU32::new(50).unwrap(), Duration::from_secs(60))?;
//! let consumers = KeyedStore::<Gcra>::new(standard, StoreConfig::new(NonZeroUsize::new(100_000).unwrap()));
//! let pool_quota = Quota::per_period(NonZeroU32::new(1_000).unwrap(), Duration::from_secs(1))?;
//! let pool = Gcra::new();
//! let hasher = KeyHasher::new();
//! let soft = SoftLimit::percent(80).unwrap();
//! let clock = ManualClock::new(0);
//!
//! // Per request.
//! let key = hasher.hash(&[b"team-a/echo", b"demo-standard-key"]);
//! let limits = [
//!     Limit::keyed(&consumers, key).with_soft(soft),
//!     Limit::gcra(&pool, &pool_quota),
//! ];
//! let admission = check_all(&limits, NonZeroU32::MIN, clock.now_nanos())?;
//! assert!(admission.is_allowed());
//! // RateLimit-Policy: "standard";q=50;w=60   RateLimit: "standard";r=49;t=2
//! assert_eq!((admission.info.limit, admission.info.window_secs()), (50, 60));
//! assert_eq!((admission.decision.remaining(), admission.decision.reset_secs()), (49, 2));
//! assert_eq!(admission.soft_warning, None);
//! assert_eq!(admission.decision.retry_after_secs(), None); // Some(secs) on a 429
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Time
//!
//! The current time is an argument: a `u64` of nanoseconds read from a [`Clock`].
//! Production code uses [`MonotonicClock`]; tests use [`ManualClock`] and move time
//! by hand. A reading earlier than a previous one never admits extra requests.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//!
//! use sluice_ratelimit::{Clock, Decision, Gcra, ManualClock, Quota};
//!
//! let quota = Quota::per_period(NonZeroU32::new(2).unwrap(), Duration::from_secs(1))?;
//! let clock = ManualClock::new(0);
//! let limiter = Gcra::new();
//!
//! assert!(limiter.check(&quota, clock.now_nanos()).is_allowed());
//! assert!(limiter.check(&quota, clock.now_nanos()).is_allowed());
//! let Decision::Denied { retry_after, .. } = limiter.check(&quota, clock.now_nanos()) else {
//!     unreachable!("the burst of 2 is used up");
//! };
//! assert_eq!(retry_after, Duration::from_millis(500));
//!
//! clock.advance(retry_after);
//! assert!(limiter.check(&quota, clock.now_nanos()).is_allowed());
//! # Ok::<(), sluice_ratelimit::QuotaError>(())
//! ```

pub mod admission;
pub mod algorithm;
pub mod budget;
pub mod clock;
pub mod decision;
pub mod gcra;
pub mod global;
pub mod key;
pub mod quota;
pub mod sliding_window;
pub mod soft;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use admission::{Admission, Charges, Limit, check_all, check_all_charged, peek_all};
pub use algorithm::Algorithm;
pub use budget::{BudgetQuota, Reservation, Reserve, Settlement, TokenBudget};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use decision::{Decision, InsufficientCapacity, QuotaInfo, retry_after_secs};
pub use gcra::Gcra;
pub use global::{
    BudgetDecision, DecisionSource, FailureMode, GlobalBudget, GlobalCharge, GlobalConfig,
    GlobalDecision, GlobalError, GlobalKey, GlobalLimiter, GlobalReservation, RedisBackend,
    RedisConfig,
};
pub use key::{KeyHash, KeyHasher};
pub use quota::{MAX_BURST_WINDOW, MAX_PERIOD, Quota, QuotaError};
pub use sliding_window::{SlidingWindow, WindowQuota, WindowQuotaError};
pub use soft::{SoftLimit, SoftLimitError};
pub use store::{KeyedStore, StoreConfig, StoreStats};
