//! Who is limited most: per rate policy, the callers refused (429) and warned (past a
//! soft limit) most often, in bounded memory.
//!
//! Each policy keeps a Space-Saving summary (Metwally et al.) of at most
//! [`TRACKED`] callers per window: a caller not yet tracked takes the place of the
//! least counted one, inheriting its count as its possible over-count, so the callers
//! refused most are always kept, whatever the number of callers. Two windows are kept:
//! the current one and the last complete one, so a reading covers between one and two
//! windows of history.
//!
//! Exported as `sluice_ratelimit_top_consumers{policy, consumer, kind}` (the top
//! `n` callers by refusals in the windows kept, each with its refusals and warnings,
//! and the rest summed as `consumer="other"`), and as JSON on the admin listener's
//! `/limits/top`. A caller is its consumer name, or `anonymous` with its client
//! address when unidentified; no credential or header value is ever a label.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use serde::Serialize;

use crate::clock::SharedClock;

/// Callers tracked per policy and window.
pub const TRACKED: usize = 256;
/// The length of a window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Callers exported by name per policy, unless configured otherwise.
pub const DEFAULT_TOP: usize = 10;
/// Policies tracked at most (a table has far fewer; the bound keeps memory fixed).
const MAX_POLICIES: usize = 1024;

/// What happened to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request refused with 429.
    Refused,
    /// A request admitted past a soft limit.
    Warned,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    refused: u64,
    warned: u64,
    /// Possible over-count inherited on replacement.
    error: u64,
    /// Requests left at the caller's last decision.
    remaining: Option<u32>,
}

/// A Space-Saving summary of one window.
#[derive(Debug, Default)]
struct Summary {
    callers: HashMap<String, Counts>,
    refused: u64,
    warned: u64,
}

impl Summary {
    fn record(&mut self, caller: &str, event: Event, remaining: Option<u32>) {
        match event {
            Event::Refused => self.refused += 1,
            Event::Warned => self.warned += 1,
        }
        let counts = match self.callers.get_mut(caller) {
            Some(c) => c,
            None => {
                let inherited = if self.callers.len() >= TRACKED {
                    // Replace the least refused (then least warned) caller.
                    let evicted = self
                        .callers
                        .iter()
                        .min_by_key(|(_, c)| (c.refused, c.warned))
                        .map(|(k, c)| (k.clone(), *c));
                    match evicted {
                        Some((key, c)) => {
                            self.callers.remove(&key);
                            c
                        }
                        None => Counts::default(),
                    }
                } else {
                    Counts::default()
                };
                self.callers.entry(caller.to_owned()).or_insert(Counts {
                    error: inherited.refused.max(inherited.warned),
                    ..inherited
                })
            }
        };
        match event {
            Event::Refused => counts.refused += 1,
            Event::Warned => counts.warned += 1,
        }
        counts.remaining = remaining;
    }
}

#[derive(Debug, Default)]
struct PolicyTop {
    /// Start of the current window, in clock nanoseconds.
    started: u64,
    current: Summary,
    previous: Summary,
}

impl PolicyTop {
    fn rotate(&mut self, now: u64, window: u64) {
        if now.saturating_sub(self.started) < window {
            return;
        }
        let windows = (now - self.started) / window;
        self.previous = if windows == 1 {
            std::mem::take(&mut self.current)
        } else {
            // More than a whole window passed quietly: nothing recent is left.
            self.current = Summary::default();
            Summary::default()
        };
        self.started += windows * window;
    }
}

/// One caller in a reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The consumer, or `anonymous (ADDRESS)`, or `other` for the rest.
    pub consumer: String,
    /// Requests refused (429).
    pub refused: u64,
    /// Requests admitted past a soft limit.
    pub warned: u64,
    /// Requests left in the window at the caller's last decision, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
    /// How much `refused` and `warned` may over-count: what the caller inherited
    /// when it took the place of one no longer tracked (0: exact).
    pub overcount: u64,
}

/// One policy in a reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyReading {
    /// The policy.
    pub policy: String,
    /// The callers refused most, most first.
    pub consumers: Vec<Caller>,
    /// Everyone else, summed.
    pub other: Caller,
}

/// The most limited callers of every policy.
#[derive(Debug)]
pub struct TopLimited {
    policies: Mutex<HashMap<String, PolicyTop>>,
    clock: SharedClock,
    window: u64,
    top: usize,
    gauge: IntGaugeVec,
}

impl TopLimited {
    /// Tracks callers over windows of `window`, exporting the `top` refused most.
    ///
    /// # Errors
    ///
    /// Never with the fixed metric definition.
    pub fn new(clock: SharedClock, window: Duration, top: usize) -> prometheus::Result<Self> {
        Ok(Self {
            policies: Mutex::new(HashMap::new()),
            clock,
            window: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1),
            top,
            gauge: IntGaugeVec::new(
                Opts::new(
                    "sluice_ratelimit_top_consumers",
                    "Requests refused (kind=refused) or warned (kind=warned) in the last one to two windows, for the callers refused most, and the rest as other",
                ),
                &["policy", "consumer", "kind"],
            )?,
        })
    }

    /// Records an `event` for `caller` under `policy`, with the requests it had left.
    pub fn record(&self, policy: &str, caller: &str, event: Event, remaining: Option<u32>) {
        let now = self.clock.now_nanos();
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        if !policies.contains_key(policy) && policies.len() >= MAX_POLICIES {
            return;
        }
        let top = policies
            .entry(policy.to_owned())
            .or_insert_with(|| PolicyTop {
                started: now,
                ..PolicyTop::default()
            });
        top.rotate(now, self.window);
        top.current.record(caller, event, remaining);
    }

    /// The `top` callers of each policy, refused most first, over the windows kept.
    pub fn reading(&self) -> Vec<PolicyReading> {
        let now = self.clock.now_nanos();
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (policy, top) in policies.iter_mut() {
            top.rotate(now, self.window);
            let mut merged: HashMap<&str, Caller> = HashMap::new();
            for summary in [&top.previous, &top.current] {
                for (name, c) in &summary.callers {
                    let entry = merged.entry(name).or_insert_with(|| Caller {
                        consumer: name.clone(),
                        refused: 0,
                        warned: 0,
                        remaining: None,
                        overcount: 0,
                    });
                    entry.refused += c.refused;
                    entry.warned += c.warned;
                    entry.overcount += c.error;
                    entry.remaining = c.remaining.or(entry.remaining);
                }
            }
            let mut callers: Vec<Caller> = merged.into_values().collect();
            callers.sort_by(|a, b| {
                (b.refused, b.warned, &a.consumer).cmp(&(a.refused, a.warned, &b.consumer))
            });
            callers.truncate(self.top);
            let total_refused = top.previous.refused + top.current.refused;
            let total_warned = top.previous.warned + top.current.warned;
            let other = Caller {
                consumer: "other".to_owned(),
                refused: total_refused
                    .saturating_sub(callers.iter().map(|c| c.refused).sum::<u64>()),
                warned: total_warned.saturating_sub(callers.iter().map(|c| c.warned).sum::<u64>()),
                remaining: None,
                overcount: 0,
            };
            out.push(PolicyReading {
                policy: policy.clone(),
                consumers: callers,
                other,
            });
        }
        out.sort_by(|a, b| a.policy.cmp(&b.policy));
        out
    }
}

impl Collector for TopLimited {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Series of callers that left the top go with this reading.
        self.gauge.reset();
        for policy in self.reading() {
            for c in policy
                .consumers
                .iter()
                .chain(std::iter::once(&policy.other))
            {
                for (kind, n) in [("refused", c.refused), ("warned", c.warned)] {
                    self.gauge
                        .with_label_values(&[&policy.policy, &c.consumer, kind])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_ratelimit::ManualClock;

    use super::*;

    fn top(clock: &Arc<ManualClock>, n: usize) -> TopLimited {
        TopLimited::new(clock.clone(), Duration::from_secs(60), n).expect("metric")
    }

    #[test]
    fn the_callers_refused_most_are_named_and_the_rest_summed() {
        let clock = Arc::new(ManualClock::new(0));
        let t = top(&clock, 2);
        for (caller, times) in [("a", 5), ("b", 3), ("c", 1), ("d", 1)] {
            for _ in 0..times {
                t.record("ns/p", caller, Event::Refused, Some(0));
            }
        }
        t.record("ns/p", "d", Event::Warned, Some(4));
        let reading = t.reading();
        assert_eq!(reading.len(), 1);
        let names: Vec<_> = reading[0]
            .consumers
            .iter()
            .map(|c| c.consumer.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reading[0].other.refused, 2);
        assert_eq!(reading[0].other.warned, 1);
    }

    #[test]
    fn memory_stays_bounded_and_heavy_callers_survive_a_flood() {
        let clock = Arc::new(ManualClock::new(0));
        let t = top(&clock, 1);
        for i in 0..10_000 {
            t.record("ns/p", &format!("one-off-{i}"), Event::Refused, None);
            if i % 10 == 0 {
                t.record("ns/p", "heavy", Event::Refused, None);
            }
        }
        let policies = t.policies.lock().expect("lock");
        assert!(policies["ns/p"].current.callers.len() <= TRACKED);
        drop(policies);
        assert_eq!(t.reading()[0].consumers[0].consumer, "heavy");
    }

    #[test]
    fn counts_age_out_after_two_windows() {
        let clock = Arc::new(ManualClock::new(0));
        let t = top(&clock, 5);
        t.record("ns/p", "a", Event::Refused, None);
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            t.reading()[0].consumers[0].refused,
            1,
            "the last window is kept"
        );
        clock.advance(Duration::from_secs(60));
        assert!(t.reading()[0].consumers.is_empty());
    }
}
