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

pub mod clock;
pub mod decision;
pub mod gcra;
pub mod quota;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use decision::{Decision, InsufficientCapacity};
pub use gcra::Gcra;
pub use quota::{MAX_BURST_WINDOW, MAX_PERIOD, Quota, QuotaError};
