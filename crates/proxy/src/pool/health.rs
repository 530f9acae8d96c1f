//! An endpoint's health: active checks (a task per pool probes its endpoints and flips
//! their health after the configured number of consecutive results), and whether it
//! accepts connections, as requests find out.
//!
//! Routing reads the checks' verdict (and outlier ejection). `sluice_endpoint_healthy`
//! reports both: an endpoint where nothing listens shows 0 from the first connection
//! it refuses, with checks or without, and 1 again from the first connection that
//! succeeds (a response, or a passed probe). A refused connection is logged as a
//! warning: the first at once, then at most one line per endpoint every
//! [`CONNECT_WARNING_INTERVAL`], with the number of failures since the last line.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use sluice_balance::{CheckResult, HealthState, StartAs};

use super::PoolRuntime;

/// The least time between two warnings that one endpoint refuses connections.
pub const CONNECT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What a proxy knows of one endpoint's health, kept across tables by pool and address.
#[derive(Debug)]
pub struct EndpointHealth {
    /// The active health checks' verdict, which routing reads.
    pub checks: HealthState,
    /// Its last connection attempt failed; cleared by the next one that succeeds.
    refusing: AtomicBool,
    /// When (proxy clock, nanoseconds) the last connect warning was logged;
    /// `u64::MAX` before the first.
    warned_at: AtomicU64,
    /// Connect failures not yet reported in a warning.
    failures: AtomicU64,
}

impl EndpointHealth {
    /// The health of an endpoint nobody has checked or connected to yet.
    pub const fn new(start: StartAs) -> Self {
        Self {
            checks: HealthState::new(start),
            refusing: AtomicBool::new(false),
            warned_at: AtomicU64::new(u64::MAX),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether requests may go to it, as far as its health checks tell.
    pub fn is_healthy(&self) -> bool {
        self.checks.is_healthy()
    }

    /// What `sluice_endpoint_healthy` reports: passing its checks and accepting
    /// connections.
    pub fn reported(&self) -> bool {
        self.checks.is_healthy() && !self.refusing.load(Ordering::Relaxed)
    }

    /// Records a refused (or timed out) connection at `now` (proxy clock,
    /// nanoseconds). Returns the failures to report when a warning is due: at the
    /// first, then once [`CONNECT_WARNING_INTERVAL`] has passed since the last one.
    pub fn connect_failed(&self, now: u64) -> Option<u64> {
        self.refusing.store(true, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let last = self.warned_at.load(Ordering::Relaxed);
        let interval = u64::try_from(CONNECT_WARNING_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        let due = last == u64::MAX || now.saturating_sub(last) >= interval;
        (due && self
            .warned_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok())
        .then(|| self.failures.swap(0, Ordering::Relaxed))
    }

    /// Records a connection that succeeded. Returns whether the endpoint was refusing
    /// connections until now. (A load first: the usual case writes nothing.)
    pub fn connected(&self) -> bool {
        self.refusing.load(Ordering::Relaxed) && self.refusing.swap(false, Ordering::Relaxed)
    }
}

/// Starts the active health checks of `pool`, when it has them. The task holds a weak
/// reference: it ends when the pool is replaced or dropped, and a pool shared by
/// several tables keeps its one checker.
pub fn start_health_checks(pool: &Arc<PoolRuntime>) {
    let Some(check) = pool.spec.health_check.clone() else {
        return;
    };
    let weak = Arc::downgrade(pool);
    let task = tokio::spawn(async move {
        let interval = check.interval.get();
        let timeout = check.timeout.get();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            let probes = pool
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.terminating)
                .map(|(i, e)| {
                    let upstream = e.upstream.clone();
                    let uri = e.authority.as_ref().zip(check.path.parse().ok()).map(
                        |(authority, path)| upstream.uri(authority, &path),
                    );
                    async move {
                        // A backend by URL is probed as it is called: with its
                        // `Host` and its credential.
                        let req = uri.and_then(|uri| {
                            let mut req = http::Request::get(uri);
                            if let Some(host) = &upstream.host {
                                req = req.header(http::header::HOST, host);
                            }
                            if let Some((name, value)) = &upstream.auth {
                                req = req.header(name, value);
                            }
                            req.body(Empty::new().map_err(|never| match never {}).boxed())
                                .ok()
                        });
                        let ok = match req {
                            Some(req) => matches!(
                                tokio::time::timeout(timeout, upstream.client.current().request(req)).await,
                                Ok(Ok(resp)) if resp.status().is_success()
                            ),
                            None => false,
                        };
                        let result = if ok {
                            CheckResult::Success
                        } else {
                            CheckResult::Failure
                        };
                        (i, result)
                    }
                });
            for (i, result) in futures_util::future::join_all(probes).await {
                pool.record_health(i, result);
            }
        }
    });
    *pool.checker.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
}

impl Drop for PoolRuntime {
    fn drop(&mut self) {
        self.stop_checker();
    }
}

impl PoolRuntime {
    /// Marks the pool replaced by a newer table and wakes its waiters so that they
    /// move to the new pool.
    pub fn mark_replaced(&self) {
        self.stop_checker();
        self.replaced
            .store(true, std::sync::atomic::Ordering::Release);
        self.queue.notify_all();
    }

    /// The health checker task, while one runs.
    #[cfg(test)]
    pub(crate) fn checker_id(&self) -> Option<tokio::task::Id> {
        self.checker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(tokio::task::AbortHandle::id)
    }

    fn stop_checker(&self) {
        if let Some(task) = self
            .checker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// Records an active health check result for endpoint `i`.
    pub fn record_health(&self, i: usize, result: sluice_balance::CheckResult) {
        let Some(config) = &self.health_config else {
            return;
        };
        let e = &self.endpoints[i];
        if result == CheckResult::Success {
            // A passing check shows that it accepts connections again.
            e.health.connected();
        }
        if let Some(to) = e.health.checks.record(config, result) {
            self.metrics_all
                .health_transitions
                .with_label_values(&[self.key(), to.as_str()])
                .inc();
            tracing::info!(pool = self.key(), endpoint = %e.address, to = to.as_str(), "health changed");
            if e.health.is_healthy() {
                // Waiters may now find room.
                self.queue.notify_all();
            }
        }
    }
}

impl PoolRuntime {
    /// Records that a connection to endpoint `i` failed with `error`: its health gauge
    /// reads 0, and a warning is logged unless one was within
    /// [`CONNECT_WARNING_INTERVAL`].
    pub fn connect_failed(&self, i: usize, error: &(dyn Error + 'static)) {
        let e = &self.endpoints[i];
        if let Some(failures) = e.health.connect_failed(self.now()) {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            tracing::warn!(
                pool = self.key(),
                endpoint = %e.address,
                error = %message,
                failures,
                "cannot connect to endpoint"
            );
        }
    }

    /// Records that a connection to endpoint `i` succeeded (it answered).
    pub fn connected(&self, i: usize) {
        let e = &self.endpoints[i];
        if e.health.connected() {
            tracing::info!(pool = self.key(), endpoint = %e.address, "endpoint accepts connections again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_refusing_endpoint_is_reported_unhealthy_until_it_connects() {
        let h = EndpointHealth::new(StartAs::Healthy);
        assert!(h.reported());
        assert!(!h.connected(), "nothing to clear");
        assert_eq!(h.connect_failed(5 * SECOND), Some(1));
        assert!(!h.reported());
        assert!(h.is_healthy(), "routing still reads the checks' verdict");
        assert!(h.connected());
        assert!(h.reported());
        assert!(!h.connected(), "cleared once");
    }

    #[test]
    fn connect_warnings_are_one_per_interval_with_the_failures_since() {
        let h = EndpointHealth::new(StartAs::Healthy);
        assert_eq!(h.connect_failed(0), Some(1), "the first is logged at once");
        assert_eq!(h.connect_failed(SECOND), None);
        assert_eq!(h.connect_failed(9 * SECOND), None);
        assert_eq!(h.connect_failed(10 * SECOND), Some(3));
        assert_eq!(h.connect_failed(11 * SECOND), None);
        assert_eq!(h.connect_failed(25 * SECOND), Some(2));
    }

    #[test]
    fn a_failing_check_keeps_it_unhealthy_after_it_connects() {
        let config = sluice_balance::HealthConfig {
            healthy_threshold: std::num::NonZeroU32::MIN,
            unhealthy_threshold: std::num::NonZeroU32::MIN,
        };
        let h = EndpointHealth::new(StartAs::Healthy);
        h.checks.record(&config, CheckResult::Failure);
        h.connect_failed(0);
        assert!(h.connected());
        assert!(!h.reported(), "still failing its checks");
    }
}
