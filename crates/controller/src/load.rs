//! The load each proxy reports, kept per proxy over a window.
//!
//! A proxy posts a [`LoadReport`] every few seconds (`POST /v1/proxies/report`, see
//! [`sluice_api::load`]); the [`ProxyRegistry`](crate::proxies::ProxyRegistry) keeps a
//! [`LoadHistory`] in each tracked proxy's entry, so the history goes with the proxy's
//! subscription. From it, [`LoadHistory::load`] gives the proxy's [`ProxyLoad`]: the
//! gauges of its latest report, and how much its latency histogram grew over the
//! window (about [`LoadSettings::window`]: from the newest sample at least that old,
//! else the oldest one kept). A proxy whose latest report is older than
//! [`LoadSettings::max_age`] has no load: it is counted nowhere until it reports
//! again.
//!
//! A history holds at most [`MAX_SAMPLES`] samples, spaced at least a
//! [`MAX_SAMPLES`]th of the window apart (a report closer than that to the one before
//! replaces the latest, unless the pools differ: the first report of a pool stays, as
//! its base), whatever the reporting interval.
//!
//! [`totals`] sums the loads of several proxies per pool; with several controller
//! replicas, the loads of the proxies of the other replicas come from
//! [`peers`](crate::peers) (each replica lists its proxies' loads on `GET
//! /v1/proxies`), and a proxy counts once.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_api::load::{PoolReport, PoolTotals, PoolWindow, increase};
use tokio::time::Instant;

/// The most samples a proxy's history keeps.
pub const MAX_SAMPLES: usize = 16;
/// The latency window by default (the prometheus-adapter rules' rate window).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// How old a proxy's latest report may be and still count, by default (six reports at
/// the proxies' default interval).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);

/// How reports are windowed and when they go stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSettings {
    /// The window the latency percentiles are read over.
    pub window: Duration,
    /// A proxy whose latest report is older than this counts nowhere.
    pub max_age: Duration,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// One proxy's load now: what `GET /v1/proxies` lists and replicas merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyLoad {
    /// Milliseconds since its latest report, when this was read.
    pub age_millis: u64,
    /// Its pools.
    pub pools: Vec<PoolWindow>,
}

/// Proxy name → its load.
pub type ProxyLoads = BTreeMap<String, ProxyLoad>;

/// The reports of one proxy, oldest first.
#[derive(Debug, Default)]
pub struct LoadHistory {
    samples: VecDeque<(Instant, Vec<PoolReport>)>,
}

impl LoadHistory {
    /// Keeps `pools`, reported at `at` (not before the samples kept).
    pub fn record(&mut self, at: Instant, pools: Vec<PoolReport>, window: Duration) {
        // The newest sample at least a window old is the base: drop those before it.
        while self.samples.get(1).is_some_and(|(t, _)| *t + window <= at) {
            self.samples.pop_front();
        }
        // The latest is replaced by a report too close to the one before it, unless it
        // is the first of its pools (the base of a pool that appeared).
        let spacing = window / u32::try_from(MAX_SAMPLES).unwrap_or(u32::MAX);
        let n = self.samples.len();
        if n >= 2
            && at.duration_since(self.samples[n - 2].0) < spacing
            && same_pools(&self.samples[n - 2].1, &self.samples[n - 1].1)
            && same_pools(&self.samples[n - 1].1, &pools)
        {
            self.samples.pop_back();
        }
        self.samples.push_back((at, pools));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The load as of `now`; `None` before the first report or when the latest is
    /// older than `settings.max_age`.
    pub fn load(&self, now: Instant, settings: LoadSettings) -> Option<ProxyLoad> {
        let (last_at, last) = self.samples.back()?;
        let age = now.saturating_duration_since(*last_at);
        if age > settings.max_age {
            return None;
        }
        let earlier = self.samples.len() - 1;
        let pools = last
            .iter()
            .map(|p| {
                // Per pool, as a pool may be new: the newest earlier sample at least a
                // window old that has it, else the oldest that has it.
                let has = |(_, pools): &&(Instant, Vec<PoolReport>)| {
                    pools.iter().any(|b| b.pool == p.pool)
                };
                let base = self
                    .samples
                    .iter()
                    .take(earlier)
                    .rev()
                    .filter(has)
                    .find(|(t, _)| *t + settings.window <= *last_at)
                    .or_else(|| self.samples.iter().take(earlier).find(has));
                let latency = base
                    .and_then(|(_, pools)| pools.iter().find(|b| b.pool == p.pool))
                    .map(|b| increase(&p.latency, &b.latency));
                PoolWindow {
                    pool: p.pool.clone(),
                    in_flight: p.in_flight,
                    queued: p.queued,
                    capacity: p.capacity,
                    latency,
                }
            })
            .collect();
        Some(ProxyLoad {
            age_millis: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            pools,
        })
    }
}

fn same_pools(a: &[PoolReport], b: &[PoolReport]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.pool == b.pool)
}

/// The loads of `local` and `peers` summed per pool, each proxy once (`local`'s entry
/// winning: a proxy that moved here from a peer is still listed there for a poll).
pub fn totals(local: &ProxyLoads, peers: &ProxyLoads) -> PoolTotals {
    let mut totals = PoolTotals::new();
    let from_peers = peers.iter().filter(|(id, _)| !local.contains_key(*id));
    for (_, load) in local.iter().chain(from_peers) {
        for pool in &load.pools {
            totals.entry(pool.pool.clone()).or_default().add(pool);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use sluice_api::load::LATENCY_BUCKETS;

    use super::*;

    fn report(pool: &str, in_flight: u64, requests: u64) -> PoolReport {
        let mut latency = vec![0; LATENCY_BUCKETS.len() + 1];
        for c in &mut latency[6..] {
            *c = requests;
        }
        PoolReport {
            pool: pool.into(),
            in_flight,
            queued: 0,
            capacity: None,
            latency,
        }
    }

    fn total(load: &ProxyLoad, pool: &str) -> Option<u64> {
        let p = load.pools.iter().find(|p| p.pool == pool)?;
        p.latency.as_ref()?.last().copied()
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_counts_what_happened_within_it() {
        let settings = LoadSettings {
            window: Duration::from_secs(60),
            max_age: Duration::from_secs(15),
        };
        let mut h = LoadHistory::default();
        let t0 = Instant::now();
        h.record(t0, vec![report("a/b", 2, 100)], settings.window);
        let load = h.load(t0, settings).expect("fresh");
        assert_eq!(load.pools[0].in_flight, 2);
        assert_eq!(load.pools[0].latency, None, "one report: no window yet");
        // A report every 5 s, 10 requests each, and a new pool at 30 s.
        for i in 1..=24u64 {
            let mut pools = vec![report("a/b", 1, 100 + 10 * i)];
            if i >= 6 {
                pools.push(report("a/c", 0, 1000 + i));
            }
            h.record(t0 + Duration::from_secs(5 * i), pools, settings.window);
        }
        let now = t0 + Duration::from_secs(120);
        assert!(h.samples.len() <= MAX_SAMPLES, "{}", h.samples.len());
        let load = h.load(now, settings).expect("fresh");
        // About the last 60 s: at least 60, at most 60 and a spacing.
        let grew = total(&load, "a/b").expect("a window");
        assert!((120..=130).contains(&grew), "{grew}");
        // The new pool's window starts at its first report kept.
        let grew = total(&load, "a/c").expect("a window");
        assert!((12..=14).contains(&grew), "{grew}");
        // Stale once the latest report is older than max_age.
        assert!(h.load(now + Duration::from_secs(15), settings).is_some());
        assert!(h.load(now + Duration::from_secs(16), settings).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_report_of_a_pool_is_its_base() {
        let settings = LoadSettings::default();
        let mut h = LoadHistory::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Subscribed before the table: no pool; then the pool, idle; then traffic,
        // reported every 100 ms.
        h.record(at(0), vec![], settings.window);
        h.record(at(100), vec![report("a/b", 0, 0)], settings.window);
        for i in 2..50 {
            h.record(at(100 * i), vec![report("a/b", 1, 10 * i)], settings.window);
        }
        let load = h.load(at(4900), settings).expect("fresh");
        assert_eq!(total(&load, "a/b"), Some(490));
        assert!(h.samples.len() <= 3, "{}", h.samples.len());
    }

    #[test]
    fn a_proxy_counts_once_across_replicas() {
        let load = |in_flight| ProxyLoad {
            age_millis: 0,
            pools: vec![PoolWindow {
                pool: "a/b".into(),
                in_flight,
                queued: 1,
                capacity: Some(10),
                latency: None,
            }],
        };
        let local: ProxyLoads = [("p1".to_owned(), load(3))].into();
        let peers: ProxyLoads = [("p1".to_owned(), load(7)), ("p2".to_owned(), load(4))].into();
        let totals = totals(&local, &peers);
        let t = &totals["a/b"];
        assert_eq!((t.proxies, t.in_flight, t.queued), (2, 7, 2));
        assert_eq!(t.utilisation(), Some(0.35));
    }
}
