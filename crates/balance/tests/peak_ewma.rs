//! Latency-aware balancing with `PeakEwma`, simulated with injected time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use sluice_balance::{InFlight, LoadConfig, PeakEwma, Pick, PoolLoad, Selector};

const MS: u64 = 1_000_000;

/// A discrete-event simulation: requests arrive at a fixed interval, each endpoint
/// answers in its own fixed latency, and completions feed the estimates.
struct Simulation {
    load: PoolLoad,
    selector: PeakEwma,
    latencies_ms: Vec<u64>,
    now: u64,
    seq: u64,
    /// (finish time, sequence) of every running request; guards by sequence.
    finishing: BinaryHeap<Reverse<(u64, u64)>>,
    guards: HashMap<u64, (InFlight, u64)>,
    picks: Vec<usize>,
}

impl Simulation {
    fn new(latencies_ms: &[u64], config: LoadConfig) -> Self {
        let addresses: Vec<String> = (0..latencies_ms.len())
            .map(|i| format!("10.3.0.{i}:80"))
            .collect();
        let load = PoolLoad::new(&addresses, config, 0);
        Self {
            selector: PeakEwma::new(load.clone()),
            load,
            latencies_ms: latencies_ms.to_vec(),
            now: 0,
            seq: 0,
            finishing: BinaryHeap::new(),
            guards: HashMap::new(),
            picks: vec![0; latencies_ms.len()],
        }
    }

    /// Adds an endpoint (a table change), keeping the others' state.
    fn join(&mut self, latency_ms: u64, config: LoadConfig) {
        self.latencies_ms.push(latency_ms);
        let addresses: Vec<String> = (0..self.latencies_ms.len())
            .map(|i| format!("10.3.0.{i}:80"))
            .collect();
        self.load = self.load.rebuild(&addresses, config, self.now);
        self.selector = PeakEwma::new(self.load.clone());
        self.picks.push(0);
    }

    /// Advances to `until`, sending one request every `interval` and completing
    /// requests on time.
    fn run(&mut self, until: u64, interval: u64) {
        while self.now + interval <= until {
            let next = self.now + interval;
            self.complete_until(next);
            self.now = next;
            let index = self
                .selector
                .pick(&Pick::new(self.seq).at(self.now))
                .expect("an endpoint");
            self.picks[index] += 1;
            let latency = self.latencies_ms[index] * MS;
            let guard = self.load.endpoints()[index].start();
            self.guards.insert(self.seq, (guard, latency));
            self.finishing.push(Reverse((self.now + latency, self.seq)));
            self.seq += 1;
        }
    }

    fn complete_until(&mut self, time: u64) {
        while let Some(&Reverse((at, seq))) = self.finishing.peek() {
            if at > time {
                break;
            }
            self.finishing.pop();
            if let Some((guard, latency)) = self.guards.remove(&seq) {
                guard.finish(Duration::from_nanos(latency), at);
            }
        }
    }

    fn shares(&self) -> Vec<f64> {
        let total: usize = self.picks.iter().sum();
        self.picks
            .iter()
            .map(|&p| p as f64 / total as f64)
            .collect()
    }
}

fn config(neutral_ms: u64) -> LoadConfig {
    LoadConfig {
        decay: Duration::from_secs(10),
        neutral_latency: Duration::from_millis(neutral_ms),
    }
}

/// 20 ms vs 200 ms: the fast endpoint takes more than 80 % of the requests.
#[test]
fn the_slow_endpoint_gets_a_small_share() {
    let mut sim = Simulation::new(&[20, 200], config(100));
    sim.run(60_000 * MS, 5 * MS);
    let shares = sim.shares();
    assert!(shares[0] > 0.8 && shares[1] < 0.2, "{shares:?}");
}

/// One GPU pod, two CPU pods and one degraded pod, under enough load that every
/// pod is needed: the degraded one gets far less than round robin's 25 %.
#[test]
fn heterogeneous_pods_are_used_by_speed() {
    let mut sim = Simulation::new(&[20, 60, 60, 600], config(100));
    sim.run(60_000 * MS, MS);
    let shares = sim.shares();
    assert!(shares[0] > shares[1] && shares[0] > shares[2], "{shares:?}");
    assert!(shares[3] < 0.05, "{shares:?}");
}

/// A new endpoint with no sample yet competes at the neutral latency: before its
/// first answer comes back it takes about its fair share, not every request.
#[test]
fn a_new_endpoint_is_not_flooded() {
    let (new_share, others_max) = join_and_measure(100);
    assert!(
        new_share <= others_max + 2,
        "new endpoint took {new_share}, the most loaded other had {others_max}"
    );
}

/// The contrast: with a neutral latency of zero (decay toward zero as in linkerd),
/// the new endpoint costs nothing and takes far more than the others.
#[test]
fn a_zero_neutral_latency_floods_the_new_endpoint() {
    let (new_share, others_max) = join_and_measure(0);
    assert!(
        new_share > others_max + 2,
        "new endpoint took {new_share}, the most loaded other had {others_max}"
    );
}

/// Three 50 ms endpoints at steady state, then a fourth (also 50 ms) joins.
/// Returns how many requests the new endpoint has in flight when its first answer
/// arrives, and the most any other endpoint has then.
fn join_and_measure(neutral_ms: u64) -> (u64, u64) {
    let mut sim = Simulation::new(&[50, 50, 50], config(neutral_ms));
    sim.run(10_000 * MS, MS);
    sim.join(50, config(neutral_ms));
    // Just before the new endpoint's first answer (50 ms after its first request).
    sim.run(sim.now + 50 * MS, MS);
    let in_flight: Vec<u64> = sim.load.endpoints().iter().map(|e| e.in_flight()).collect();
    let others_max = in_flight[..3].iter().copied().max().unwrap_or(0);
    (in_flight[3], others_max)
}

/// After a slow burst the estimate jumps at once, then decays back toward the
/// fast samples that follow, by elapsed time.
#[test]
fn the_estimate_decays_back_after_a_slow_burst() {
    let load = PoolLoad::new(&["a"], config(100), 0);
    let endpoint = &load.endpoints()[0];
    let mut now = 0;
    for _ in 0..100 {
        now += 10 * MS;
        endpoint.record(Duration::from_millis(20), now);
    }
    assert!(endpoint.latency(now) < Duration::from_millis(21));
    now += 10 * MS;
    endpoint.record(Duration::from_millis(900), now);
    assert_eq!(endpoint.latency(now), Duration::from_millis(900));

    // Fast samples every 10 ms for three decay constants (30 s).
    let mut previous = endpoint.latency(now);
    for _ in 0..3_000 {
        now += 10 * MS;
        endpoint.record(Duration::from_millis(20), now);
        let current = endpoint.latency(now);
        assert!(current <= previous, "the estimate rose on a fast sample");
        previous = current;
    }
    // 20 + 880 × e^-3 ≈ 63.8 ms.
    let ms = endpoint.latency(now).as_secs_f64() * 1e3;
    assert!((ms - 63.8).abs() < 1.0, "{ms} ms");
}
