//! Reserving a place on an endpoint: at once when one has room, else waiting in the
//! pool's bounded priority queue.

use std::sync::Arc;
use std::time::Duration;

use sluice_balance::{InFlight, Pick, QueueError, WaitQueue};
use tokio::time::Instant;

use super::{PickRequest, PoolRuntime, Unavailable};
use crate::error::ProxyError;

/// A reserved place on an endpoint: dropping it frees the slot and wakes the queue.
#[derive(Debug)]
pub struct Slot {
    /// Index of the endpoint in the pool.
    pub index: usize,
    guard: Option<InFlight>,
    pool_gauge: prometheus::IntGauge,
    queue: Arc<WaitQueue>,
    /// Wake every waiter, not the first, when freed (see [`PoolRuntime`]'s
    /// `mixed_capabilities`).
    wake_all: bool,
}

impl Slot {
    /// Records the time to response headers in the endpoint's latency estimate, at
    /// `now` (the pool's [`PoolRuntime::now`]).
    pub fn record_latency(&self, latency: Duration, now: u64) {
        if let Some(g) = &self.guard {
            g.load().record(latency, now);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.guard.take();
        self.pool_gauge.dec();
        if self.wake_all {
            self.queue.notify_all();
        } else {
            self.queue.notify_one();
        }
    }
}

impl PoolRuntime {
    /// Picks an endpoint and reserves a slot on it, without waiting.
    pub fn try_acquire(&self, req: &PickRequest<'_>, exclude: &[usize]) -> Option<Slot> {
        let now = self.now();
        let accept = |i: usize| self.alive(i, now, req.capability, exclude) && self.has_room(i);
        for _ in 0..3 {
            let pick = Pick {
                random: self.entropy.next_u64(),
                hash: req.hash,
                now,
                accept: &accept,
            };
            let i = self.selector.pick(&pick)?;
            let load = self.load.get(i)?;
            let guard = match self.endpoints[i].max_concurrency {
                Some(m) => load.try_start(u64::from(m.get())),
                None => Some(load.start()),
            };
            // A concurrent request may have taken the last slot since `accept`.
            if let Some(guard) = guard {
                let e = &self.endpoints[i];
                e.stats.count_request();
                self.metrics.in_flight.inc();
                return Some(Slot {
                    index: i,
                    guard: Some(guard),
                    pool_gauge: self.metrics.in_flight.clone(),
                    queue: self.queue.clone(),
                    wake_all: self.mixed_capabilities,
                });
            }
        }
        None
    }

    /// Reserves a slot, waiting in the queue (by `priority`, until `deadline` or the
    /// queue timeout) when every live endpoint is full.
    ///
    /// # Errors
    ///
    /// [`Unavailable::NoCapacity`] when no endpoint is alive; [`Unavailable::Queue`]
    /// when the queue is full or the wait timed out.
    pub async fn acquire(
        &self,
        req: &PickRequest<'_>,
        deadline: Instant,
    ) -> Result<Slot, Unavailable> {
        if let Some(slot) = self.try_acquire(req, &[]) {
            return Ok(slot);
        }
        if !self.any_alive(req.capability) {
            return Err(Unavailable::NoCapacity);
        }
        let queued = Instant::now();
        let timeout = self
            .spec
            .queue
            .as_ref()
            .map_or(0, |q| q.timeout.as_millis());
        let wait_until = deadline.min(queued + Duration::from_millis(timeout));
        let mut waiter = match self.queue.register(req.priority) {
            Ok(w) => w,
            Err(_) => {
                self.observe_wait(queued, "full");
                return Err(Unavailable::Queue(ProxyError::QueueFull {
                    pool: self.key().to_owned(),
                }));
            }
        };
        self.metrics
            .queue_depth
            .set(i64::try_from(self.queue.depth()).unwrap_or(i64::MAX));
        let result = loop {
            if self.replaced.load(std::sync::atomic::Ordering::Acquire) {
                break Err(Unavailable::Replaced);
            }
            if let Some(slot) = self.try_acquire(req, &[]) {
                break Ok(slot);
            }
            if !self.any_alive(req.capability) {
                break Err(Unavailable::NoCapacity);
            }
            match waiter.wait(wait_until).await {
                Ok(()) => {}
                Err(QueueError::TimedOut) => {
                    break Err(Unavailable::Queue(ProxyError::QueueTimeout {
                        pool: self.key().to_owned(),
                        timeout_ms: timeout,
                    }));
                }
                Err(QueueError::Full) => {
                    break Err(Unavailable::Queue(ProxyError::QueueFull {
                        pool: self.key().to_owned(),
                    }));
                }
            }
        };
        drop(waiter);
        self.metrics
            .queue_depth
            .set(i64::try_from(self.queue.depth()).unwrap_or(i64::MAX));
        self.observe_wait(
            queued,
            if result.is_ok() {
                "admitted"
            } else {
                "refused"
            },
        );
        result
    }

    fn observe_wait(&self, since: Instant, result: &str) {
        self.metrics_all
            .queue_wait
            .with_label_values(&[self.key(), result])
            .observe(since.elapsed().as_secs_f64());
    }
}
