//! Passive outlier detection: take an endpoint out for a while when its real traffic
//! keeps failing, as Envoy's outlier detection does.
//!
//! The proxy reports the outcome of every request it sent to an endpoint
//! ([`OutlierDetector::record`]) and skips endpoints for which
//! [`OutlierDetector::is_ejected`] is `true`. No probe is involved: this catches the
//! endpoint that passes its health check but answers real requests with 5xx, and
//! covers new endpoints before their first active check.
//!
//! # Rules
//!
//! * **Counting.** Each endpoint has two runs. The *failure* run counts
//!   [`Outcome::Failure5xx`] and [`Outcome::ConnectFailure`] and is reset by a
//!   success. The *connect-failure* run counts only connect failures and is reset by
//!   any answer (a success or a 5xx: the connection worked). The connect-failure run
//!   is never longer than the failure run, so its threshold only matters when it is
//!   lower: "eject after 2 refused connections, or after 5 failures of any kind".
//!   A threshold of `None` disables that rule.
//! * **Ejection.** When a run reaches its threshold the endpoint is ejected for
//!   `base_ejection × m`, capped at `max(max_ejection, base_ejection)`, where `m` is
//!   its ejection multiplier: 1 for the first ejection, one more for each ejection
//!   that follows before the multiplier decayed. Both runs restart from zero after
//!   every ejection attempt, made or skipped.
//! * **Cap.** At most `max_ejection_percent` of the pool is ejected at once, rounded
//!   down but at least one endpoint when the percentage is not zero (as in Envoy), so
//!   a one-endpoint pool can still fail over to its fallback. An ejection that would
//!   exceed the cap is skipped ([`Ejection::Skipped`]): the endpoint stays in and
//!   must fail a full run again before the next attempt.
//! * **Return.** An ejected endpoint is back as soon as its time is over: ejection
//!   is a deadline compared with `now`, nothing has to run to end it.
//! * **Decay.** The multiplier drops by one for every `multiplier_decay` the
//!   endpoint has spent back in the pool since its last ejection ended (worked out
//!   when it is next ejected). With the defaults (30 s base, 30 s decay), an endpoint
//!   ejected again within 30 s of coming back gets 60 s, then 90 s, …; after a
//!   90 s ejection (multiplier 3), 90 s back in the pool bring the next one down
//!   to 30 s again.
//! * **Already ejected.** Results for requests that were sent before the ejection
//!   still arrive; they are counted, but a run that completes while the endpoint
//!   is out neither extends nor repeats its ejection.
//!
//! # Concurrency and time
//!
//! Each endpoint's state is a few atomics. [`is_ejected`](OutlierDetector::is_ejected)
//! is one relaxed load and a comparison; recording a success is two stores, a
//! failure one or two `fetch_add`s. Only an ejection attempt, once per run of
//! failures, takes the detector's mutex, so that two endpoints ejected at the same
//! moment cannot both slip under the cap; it scans the pool's ejection deadlines
//! (O(endpoints) loads) and nothing else.
//!
//! Time is a `u64` of nanoseconds from any monotonic clock, passed to every call.
//! A reading earlier than a previous one is safe: it can only make an endpoint look
//! ejected for longer.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// What happened to one request sent to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint answered with anything but a server error (4xx included: the
    /// client was wrong, not the endpoint).
    Success,
    /// The endpoint answered with a 5xx, or the exchange failed after the connection
    /// was made (reset, first-byte timeout): the proxy's choice.
    Failure5xx,
    /// The connection could not be made (refused, unreachable, connect timeout).
    ConnectFailure,
}

/// Which rule ejected an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectionReason {
    /// [`OutlierConfig::consecutive_failures`] failures of any kind in a row.
    ConsecutiveFailures,
    /// [`OutlierConfig::consecutive_connect_failures`] connect failures in a row.
    ConsecutiveConnectFailures,
}

impl EjectionReason {
    /// A short snake-case name, usable as a metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::ConsecutiveConnectFailures => "consecutive_connect_failures",
        }
    }
}

/// A pool's outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures of any kind in a row that eject an endpoint; `None` disables the rule.
    pub consecutive_failures: Option<NonZeroU32>,
    /// Connect failures in a row that eject an endpoint; `None` disables the rule.
    pub consecutive_connect_failures: Option<NonZeroU32>,
    /// How long a first ejection lasts; later ones last a multiple of it.
    pub base_ejection: Duration,
    /// The longest an ejection lasts (`base_ejection` if that is longer).
    pub max_ejection: Duration,
    /// The largest share of the pool ejected at once, in percent; values above 100
    /// mean 100 and 0 disables ejection altogether.
    pub max_ejection_percent: u8,
    /// How long an endpoint must stay in the pool, after an ejection ended, for its
    /// multiplier to drop by one. Zero means ejections never grow.
    pub multiplier_decay: Duration,
}

impl Default for OutlierConfig {
    /// Five failures in a row, no separate connect rule, 30 s base ejection up to
    /// 300 s, at most 10 % of the pool, multiplier decaying every 30 s.
    fn default() -> Self {
        Self {
            consecutive_failures: NonZeroU32::new(5),
            consecutive_connect_failures: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            multiplier_decay: Duration::from_secs(30),
        }
    }
}

/// What an ejection attempt did, for logs and metrics.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// The endpoint is out of the pool until `until`.
    Ejected {
        /// The endpoint's index.
        endpoint: usize,
        /// The rule that fired.
        reason: EjectionReason,
        /// How long the ejection lasts.
        duration: Duration,
        /// When the endpoint is back, in the detector's clock nanoseconds.
        until: u64,
        /// The multiplier `duration` was computed with (1 for a first ejection).
        multiplier: u32,
    },
    /// A rule fired but the pool already has as many endpoints ejected as
    /// `max_ejection_percent` allows, so the endpoint stays in.
    Skipped {
        /// The endpoint's index.
        endpoint: usize,
        /// The rule that fired.
        reason: EjectionReason,
    },
}

impl Ejection {
    /// The endpoint the attempt was about.
    #[must_use]
    pub const fn endpoint(&self) -> usize {
        match *self {
            Self::Ejected { endpoint, .. } | Self::Skipped { endpoint, .. } => endpoint,
        }
    }

    /// The rule that fired.
    #[must_use]
    pub const fn reason(&self) -> EjectionReason {
        match *self {
            Self::Ejected { reason, .. } | Self::Skipped { reason, .. } => reason,
        }
    }

    /// Returns `true` if the endpoint was actually ejected.
    #[must_use]
    pub const fn is_ejected(&self) -> bool {
        matches!(self, Self::Ejected { .. })
    }
}

/// One endpoint's counters and ejection state.
#[derive(Debug, Default)]
struct EndpointState {
    failures: AtomicU32,
    connect_failures: AtomicU32,
    /// When the current or last ejection ends (0: never ejected). Written only under
    /// the detector's mutex.
    ejected_until: AtomicU64,
    /// The multiplier of the last ejection. Written only under the detector's mutex.
    multiplier: AtomicU32,
}

/// Outlier detection for the endpoints of one pool, indexed like the pool's
/// endpoint list.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    endpoints: Box<[EndpointState]>,
    /// Serialises ejection attempts so that the cap holds.
    ejecting: Mutex<()>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl OutlierDetector {
    /// Creates a detector for `endpoints` endpoints, none ejected.
    #[must_use]
    pub fn new(config: OutlierConfig, endpoints: usize) -> Self {
        Self {
            config,
            endpoints: (0..endpoints).map(|_| EndpointState::default()).collect(),
            ejecting: Mutex::new(()),
        }
    }

    /// Creates the detector for a rebuilt pool, keeping what this one knows about the
    /// endpoints both pools share.
    ///
    /// `previous` yields, for each endpoint of the new pool in order, its index in
    /// this detector, or `None` for an endpoint this one did not have. Runs,
    /// ejections and multipliers are copied for the endpoints that stay, so a table
    /// update does not bring every ejected endpoint back. Endpoints still ejected may
    /// exceed the new pool's cap; they stay out until their time ends and the cap
    /// applies to new ejections. Results recorded in this detector after the copy
    /// are not carried over.
    #[must_use]
    pub fn carry_over<I>(&self, config: OutlierConfig, previous: I) -> Self
    where
        I: IntoIterator<Item = Option<usize>>,
    {
        let endpoints = previous
            .into_iter()
            .map(|old| {
                let Some(old) = old.and_then(|i| self.endpoints.get(i)) else {
                    return EndpointState::default();
                };
                EndpointState {
                    failures: AtomicU32::new(old.failures.load(Ordering::Relaxed)),
                    connect_failures: AtomicU32::new(old.connect_failures.load(Ordering::Relaxed)),
                    ejected_until: AtomicU64::new(old.ejected_until.load(Ordering::Relaxed)),
                    multiplier: AtomicU32::new(old.multiplier.load(Ordering::Relaxed)),
                }
            })
            .collect();
        Self {
            config,
            endpoints,
            ejecting: Mutex::new(()),
        }
    }

    /// The settings this detector applies.
    #[must_use]
    pub const fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// The number of endpoints this detector was built for.
    #[must_use]
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Returns `true` if the detector has no endpoints.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The most endpoints that may be ejected at once.
    #[must_use]
    pub fn max_ejected(&self) -> usize {
        let percent = usize::from(self.config.max_ejection_percent.min(100));
        if percent == 0 {
            0
        } else {
            (self.endpoints.len() * percent / 100).max(1)
        }
    }

    /// Records the outcome of one request sent to `endpoint` at `now`.
    ///
    /// Returns what happened when this outcome completed a run of failures (so the
    /// proxy can count ejections and skipped ejections), `None` otherwise. An
    /// `endpoint` out of range is ignored.
    pub fn record(&self, endpoint: usize, outcome: Outcome, now: u64) -> Option<Ejection> {
        let state = self.endpoints.get(endpoint)?;
        let (failures, connect_failures) = match outcome {
            Outcome::Success => {
                state.failures.store(0, Ordering::Relaxed);
                state.connect_failures.store(0, Ordering::Relaxed);
                return None;
            }
            Outcome::Failure5xx => {
                state.connect_failures.store(0, Ordering::Relaxed);
                (increment(&state.failures), 0)
            }
            Outcome::ConnectFailure => (
                increment(&state.failures),
                increment(&state.connect_failures),
            ),
        };
        self.reason(failures, connect_failures)?;
        self.try_eject(endpoint, state, now)
    }

    /// Returns `true` if `endpoint` is ejected at `now`: one relaxed load, no lock.
    /// An `endpoint` out of range is not ejected.
    #[must_use]
    pub fn is_ejected(&self, endpoint: usize, now: u64) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|state| now < state.ejected_until.load(Ordering::Relaxed))
    }

    /// The number of endpoints ejected at `now`, for a gauge: O(endpoints).
    #[must_use]
    pub fn ejected_count(&self, now: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|state| now < state.ejected_until.load(Ordering::Relaxed))
            .count()
    }

    /// `endpoint`'s ejection multiplier at `now`, after decay: the multiplier of its
    /// current ejection while it is ejected, then one less for each
    /// `multiplier_decay` it has been back, down to 0 (never ejected, or forgiven).
    /// Its next ejection uses this plus one.
    #[must_use]
    pub fn multiplier(&self, endpoint: usize, now: u64) -> u32 {
        self.endpoints
            .get(endpoint)
            .map_or(0, |state| self.decayed_multiplier(state, now))
    }

    /// The rule a pair of run lengths fires, the connect rule first.
    fn reason(&self, failures: u32, connect_failures: u32) -> Option<EjectionReason> {
        let reached = |run: u32, threshold: Option<NonZeroU32>| {
            threshold.is_some_and(|threshold| run >= threshold.get())
        };
        if reached(connect_failures, self.config.consecutive_connect_failures) {
            Some(EjectionReason::ConsecutiveConnectFailures)
        } else if reached(failures, self.config.consecutive_failures) {
            Some(EjectionReason::ConsecutiveFailures)
        } else {
            None
        }
    }

    fn decayed_multiplier(&self, state: &EndpointState, now: u64) -> u32 {
        let multiplier = state.multiplier.load(Ordering::Relaxed);
        let back_since = state.ejected_until.load(Ordering::Relaxed);
        let decay = nanos(self.config.multiplier_decay);
        if decay == 0 {
            return 0;
        }
        if now < back_since {
            return multiplier;
        }
        let steps = u32::try_from((now - back_since) / decay).unwrap_or(u32::MAX);
        multiplier.saturating_sub(steps)
    }

    fn try_eject(&self, endpoint: usize, state: &EndpointState, now: u64) -> Option<Ejection> {
        let _guard = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have handled this run (or a success ended it) since the
        // caller saw the threshold reached.
        let reason = self.reason(
            state.failures.load(Ordering::Relaxed),
            state.connect_failures.load(Ordering::Relaxed),
        )?;
        state.failures.store(0, Ordering::Relaxed);
        state.connect_failures.store(0, Ordering::Relaxed);
        if self.is_ejected(endpoint, now) {
            return None;
        }
        if self.ejected_count(now) >= self.max_ejected() {
            return Some(Ejection::Skipped { endpoint, reason });
        }
        let multiplier = self.decayed_multiplier(state, now).saturating_add(1);
        let cap = self.config.max_ejection.max(self.config.base_ejection);
        let duration = self
            .config
            .base_ejection
            .saturating_mul(multiplier)
            .min(cap);
        let until = now.saturating_add(nanos(duration));
        state.multiplier.store(multiplier, Ordering::Relaxed);
        state.ejected_until.store(until, Ordering::Relaxed);
        Some(Ejection::Ejected {
            endpoint,
            reason,
            duration,
            until,
            multiplier,
        })
    }
}

/// Adds one to a run and returns the new length.
///
/// The stored run could only wrap after 2^32 failures with no ejection attempt in
/// between, that is with its rule disabled, when its length does not matter.
fn increment(run: &AtomicU32) -> u32 {
    run.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_at_least_one_unless_disabled() {
        let config = |percent| OutlierConfig {
            max_ejection_percent: percent,
            ..OutlierConfig::default()
        };
        assert_eq!(OutlierDetector::new(config(10), 3).max_ejected(), 1);
        assert_eq!(OutlierDetector::new(config(30), 10).max_ejected(), 3);
        assert_eq!(OutlierDetector::new(config(0), 10).max_ejected(), 0);
        assert_eq!(OutlierDetector::new(config(250), 4).max_ejected(), 4);
    }

    #[test]
    fn out_of_range_endpoints_are_ignored() {
        let detector = OutlierDetector::new(OutlierConfig::default(), 1);
        for _ in 0..10 {
            assert_eq!(detector.record(5, Outcome::ConnectFailure, 0), None);
        }
        assert!(!detector.is_ejected(5, 0));
        assert_eq!(detector.multiplier(5, 0), 0);
    }
}
