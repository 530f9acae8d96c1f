//! What each proxy reports of its pools' load to the controller, and how reports of
//! several proxies add up.
//!
//! A proxy posts a [`LoadReport`] every few seconds on [`REPORT_PATH`](crate::push::REPORT_PATH)
//! (the push channel, with its bearer token): per pool of the table it runs, the
//! requests in flight, the requests queued, the capacity of the live endpoints (the sum
//! of their `maxConcurrency`, when every one has one), and the latency histogram
//! `sluice_request_duration_seconds` as cumulative counts per bucket of
//! [`LATENCY_BUCKETS`] since the proxy started: the same numbers its `/metrics`
//! exports as `sluice_requests_in_flight`, `sluice_queue_depth`,
//! `sluice_pool_utilisation` and `sluice_request_duration_seconds_bucket`.
//!
//! Counts per bucket, unlike percentiles, add up across proxies: the controller takes
//! the increase of each proxy's counts over a window ([`increase`]), sums them
//! ([`PoolTotal`]) and reads the 95th percentile from the sum ([`quantile`], the
//! interpolation of Prometheus' `histogram_quantile`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::push::ProxyId;

/// Upper bounds, in seconds, of the buckets of the proxies' latency histograms; the
/// last bucket (`+Inf`) is implied. Agents answer in 20 ms to minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Most pools in one report.
pub const MAX_REPORT_POOLS: usize = 10_000;

/// Longest pool key (`namespace/name`: two DNS labels or names and a `/`).
const MAX_POOL_KEY: usize = 253 + 1 + 253;

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// More pools than [`MAX_REPORT_POOLS`]. Not retryable.
    #[error("{0} pools in one report, more than {MAX_REPORT_POOLS}")]
    TooManyPools(usize),
    /// A pool key is empty, too long, or not `namespace/name`. Not retryable.
    #[error("pool {0:?} is not namespace/name")]
    PoolKey(String),
    /// A pool is reported twice. Not retryable.
    #[error("pool {0:?} is reported twice")]
    Duplicate(String),
    /// A latency histogram has not one count per bucket and one for `+Inf`, or its
    /// counts decrease. Not retryable: the proxy is built with other buckets.
    #[error(
        "pool {0:?}: latency must be {n} cumulative counts (one per bucket and +Inf), never decreasing",
        n = LATENCY_BUCKETS.len() + 1
    )]
    Latency(String),
}

/// The body of `POST` [`REPORT_PATH`](crate::push::REPORT_PATH).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The name the proxy subscribed under.
    pub proxy: ProxyId,
    /// One entry per pool of the table the proxy runs.
    pub pools: Vec<PoolReport>,
}

/// One pool's load on one proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// The pool's key, `namespace/name`.
    pub pool: String,
    /// Requests whose response has not ended (`sluice_requests_in_flight`).
    pub in_flight: u64,
    /// Requests waiting for a free endpoint (`sluice_queue_depth`).
    pub queued: u64,
    /// The sum of the `maxConcurrency` of the live endpoints, `None` when one has
    /// none or none is live (then `sluice_pool_utilisation` is not exported either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Cumulative counts of `sluice_request_duration_seconds`: one per bucket of
    /// [`LATENCY_BUCKETS`], then the total (`+Inf`).
    pub latency: Vec<u64>,
}

impl LoadReport {
    /// Checks the bounds and shapes a controller relies on.
    ///
    /// # Errors
    ///
    /// The first problem found ([`LoadError`]).
    pub fn check(&self) -> Result<(), LoadError> {
        if self.pools.len() > MAX_REPORT_POOLS {
            return Err(LoadError::TooManyPools(self.pools.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            let key_ok = p.pool.len() <= MAX_POOL_KEY
                && p.pool
                    .split_once('/')
                    .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty());
            if !key_ok {
                return Err(LoadError::PoolKey(p.pool.clone()));
            }
            if !seen.insert(p.pool.as_str()) {
                return Err(LoadError::Duplicate(p.pool.clone()));
            }
            if p.latency.len() != LATENCY_BUCKETS.len() + 1
                || p.latency.windows(2).any(|w| w[0] > w[1])
            {
                return Err(LoadError::Latency(p.pool.clone()));
            }
        }
        Ok(())
    }
}

/// How much each cumulative count grew from `older` to `newer`. A count that shrank
/// means the histogram started again (a new process under the same name): the growth
/// is then `newer` itself, as Prometheus' `increase` reads a counter reset.
pub fn increase(newer: &[u64], older: &[u64]) -> Vec<u64> {
    if newer.len() != older.len() || newer.iter().zip(older).any(|(n, o)| n < o) {
        return newer.to_vec();
    }
    newer.iter().zip(older).map(|(n, o)| n - o).collect()
}

/// The `q` quantile (0 to 1) of a histogram of cumulative counts over
/// [`LATENCY_BUCKETS`] and `+Inf`, interpolated linearly within its bucket as
/// Prometheus' `histogram_quantile` does (the first bucket from 0; a rank in `+Inf`
/// reads as the highest finite bound). `None` for an empty histogram or one of
/// another shape.
pub fn quantile(q: f64, counts: &[u64]) -> Option<f64> {
    if counts.len() != LATENCY_BUCKETS.len() + 1 {
        return None;
    }
    let total = *counts.last()?;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let i = counts.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = LATENCY_BUCKETS.get(i) else {
        return LATENCY_BUCKETS.last().copied();
    };
    let (lower, below) = match i.checked_sub(1) {
        Some(j) => (LATENCY_BUCKETS[j], counts[j]),
        None => (0.0, 0),
    };
    let within = counts[i] - below;
    if within == 0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / within as f64)
}

/// One pool's load on one proxy over the controller's window: the latest report's
/// gauges, and how much its latency histogram grew within the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolWindow {
    /// The pool's key, `namespace/name`.
    pub pool: String,
    /// Requests in flight, as last reported.
    pub in_flight: u64,
    /// Requests queued, as last reported.
    pub queued: u64,
    /// Capacity, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// The growth of the latency counts over the window; `None` until two reports
    /// span some time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Vec<u64>>,
}

/// One pool's load summed over proxies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolTotal {
    /// Proxies counted.
    pub proxies: usize,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests queued.
    pub queued: u64,
    /// Capacity of the proxies that report one.
    pub capacity: u64,
    /// Requests in flight on the proxies that report a capacity.
    pub in_flight_of_capacity: u64,
    /// Latency counts over the window, summed; `None` while no proxy has a window yet
    /// (a single report).
    pub latency: Option<Vec<u64>>,
}

impl PoolTotal {
    /// Adds one proxy's pool.
    pub fn add(&mut self, pool: &PoolWindow) {
        self.proxies += 1;
        self.in_flight += pool.in_flight;
        self.queued += pool.queued;
        if let Some(c) = pool.capacity {
            self.capacity += c;
            self.in_flight_of_capacity += pool.in_flight;
        }
        if let Some(counts) = &pool.latency {
            match &mut self.latency {
                Some(sum) if sum.len() == counts.len() => {
                    sum.iter_mut().zip(counts).for_each(|(s, c)| *s += c);
                }
                Some(_) => {}
                None => self.latency = Some(counts.clone()),
            }
        }
    }

    /// In flight over capacity, over the proxies that report a capacity; `None` when
    /// none does.
    pub fn utilisation(&self) -> Option<f64> {
        (self.capacity > 0).then(|| self.in_flight_of_capacity as f64 / self.capacity as f64)
    }

    /// The 95th percentile of the latency over the window; 0 when no request ended in
    /// it, `None` while no proxy has a window yet.
    pub fn p95(&self) -> Option<f64> {
        self.latency
            .as_deref()
            .map(|counts| quantile(0.95, counts).unwrap_or(0.0))
    }
}

/// Pool key → its total.
pub type PoolTotals = BTreeMap<String, PoolTotal>;

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(per_bucket: &[(usize, u64)]) -> Vec<u64> {
        let mut raw = vec![0u64; LATENCY_BUCKETS.len() + 1];
        for &(i, n) in per_bucket {
            raw[i] += n;
        }
        raw.iter()
            .scan(0, |acc, n| {
                *acc += n;
                Some(*acc)
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 100 requests between 0.1 and 0.25 s: p95 at 95% of the bucket.
        let c = counts(&[(7, 100)]);
        let p95 = quantile(0.95, &c).expect("some");
        assert!((p95 - (0.1 + 0.15 * 0.95)).abs() < 1e-9, "{p95}");
        // 90 fast and 10 slow: p95 falls in the slow bucket's middle.
        let c = counts(&[(0, 90), (9, 10)]);
        let p95 = quantile(0.95, &c).expect("some");
        assert!((p95 - 0.75).abs() < 1e-9, "{p95}");
        // Beyond the last bound: the last bound.
        let c = counts(&[(LATENCY_BUCKETS.len(), 5)]);
        assert_eq!(quantile(0.95, &c), Some(300.0));
        assert_eq!(quantile(0.95, &counts(&[])), None);
        assert_eq!(quantile(0.95, &[1, 2]), None);
    }

    #[test]
    fn increases_and_resets() {
        assert_eq!(increase(&[2, 5, 9], &[1, 3, 4]), vec![1, 2, 5]);
        assert_eq!(increase(&[1, 1, 2], &[1, 3, 4]), vec![1, 1, 2], "reset");
    }

    #[test]
    fn totals_add_up_and_keep_utilisation_to_limited_proxies() {
        let window = |in_flight, capacity, latency: Option<Vec<u64>>| PoolWindow {
            pool: "a/b".into(),
            in_flight,
            queued: 1,
            capacity,
            latency,
        };
        let mut total = PoolTotal::default();
        let fast = counts(&[(0, 95)]);
        let slow = counts(&[(9, 5)]);
        total.add(&window(3, Some(4), Some(fast)));
        total.add(&window(1, Some(4), Some(slow)));
        total.add(&window(2, None, None));
        assert_eq!((total.proxies, total.in_flight, total.queued), (3, 6, 3));
        assert_eq!(total.utilisation(), Some(0.5));
        let p95 = total.p95().expect("a window");
        assert!((p95 - 0.001).abs() < 1e-9, "{p95}");
        assert_eq!(PoolTotal::default().p95(), None);
        let mut idle = PoolTotal::default();
        idle.add(&window(0, None, Some(counts(&[]))));
        assert_eq!(idle.p95(), Some(0.0));
        assert_eq!(idle.utilisation(), None);
    }

    #[test]
    fn reports_are_checked() {
        let good = || LoadReport {
            proxy: "p-1".parse().expect("valid"),
            pools: vec![PoolReport {
                pool: "agents/chat".into(),
                in_flight: 0,
                queued: 0,
                capacity: None,
                latency: counts(&[(2, 3)]),
            }],
        };
        assert_eq!(good().check(), Ok(()));
        let mut r = good();
        r.pools[0].latency.pop();
        assert!(matches!(r.check(), Err(LoadError::Latency(_))));
        let mut r = good();
        r.pools[0].latency[0] = 9;
        assert!(matches!(r.check(), Err(LoadError::Latency(_))));
        let mut r = good();
        r.pools[0].pool = "chat".into();
        assert!(matches!(r.check(), Err(LoadError::PoolKey(_))));
        let mut r = good();
        r.pools.push(r.pools[0].clone());
        assert!(matches!(r.check(), Err(LoadError::Duplicate(_))));
        let json = serde_json::to_value(good()).expect("json");
        assert_eq!(json["pools"][0]["inFlight"], 0);
        assert!(json["pools"][0].get("capacity").is_none());
    }
}
