//! Active health checks: a task per pool probes its endpoints and flips their health
//! after the configured number of consecutive results.

use std::sync::{Arc, PoisonError};

use http_body_util::{BodyExt, Empty};
use sluice_balance::CheckResult;

use super::PoolRuntime;

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
                    let uri = upstream.uri(&e.address, &check.path);
                    async move {
                        // A backend by URL is probed as it is called: with its
                        // `Host` and its credential.
                        let req = uri.ok().and_then(|uri| {
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
                                tokio::time::timeout(timeout, upstream.client.request(req)).await,
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
        if let Some(to) = e.health.record(config, result) {
            e.healthy_gauge.set(i64::from(e.health.is_healthy()));
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
