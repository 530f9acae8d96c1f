//! Tests for the active health-check state machine (`HealthState`).

use std::num::NonZeroU32;
use std::thread;

use proptest::prelude::*;
use sluice_balance::{CheckResult, Health, HealthConfig, HealthState, StartAs};

use CheckResult::{Failure, Success};

fn config(healthy: u32, unhealthy: u32) -> HealthConfig {
    HealthConfig {
        healthy_threshold: NonZeroU32::new(healthy).expect("non-zero"),
        unhealthy_threshold: NonZeroU32::new(unhealthy).expect("non-zero"),
    }
}

/// Records `results` in order and returns the transitions reported.
fn feed(state: &HealthState, config: &HealthConfig, results: &[CheckResult]) -> Vec<Health> {
    results
        .iter()
        .filter_map(|&r| state.record(config, r))
        .collect()
}

#[test]
fn a_new_endpoint_is_healthy_by_default() {
    let state = HealthState::default();
    assert!(state.is_healthy());
    assert_eq!(state.health(), Health::Healthy);
    assert_eq!(
        HealthState::new(StartAs::default()).health(),
        Health::Healthy
    );
}

#[test]
fn goes_unhealthy_exactly_on_the_nth_failure_in_a_row() {
    let config = config(2, 3);
    let state = HealthState::new(StartAs::Healthy);
    assert_eq!(state.record(&config, Failure), None);
    assert_eq!(state.record(&config, Failure), None);
    assert!(state.is_healthy());
    assert_eq!(state.run_length(), 2);
    assert_eq!(state.record(&config, Failure), Some(Health::Unhealthy));
    assert!(!state.is_healthy());
    assert_eq!(state.run_length(), 0);
    // More failures change nothing.
    assert_eq!(feed(&state, &config, &[Failure; 5]), []);
    assert_eq!(state.health(), Health::Unhealthy);
}

#[test]
fn comes_back_exactly_on_the_nth_success_in_a_row() {
    let config = config(2, 1);
    let state = HealthState::new(StartAs::Healthy);
    assert_eq!(state.record(&config, Failure), Some(Health::Unhealthy));
    assert_eq!(state.record(&config, Success), None);
    assert!(!state.is_healthy());
    assert_eq!(state.record(&config, Success), Some(Health::Healthy));
    assert!(state.is_healthy());
}

#[test]
fn flapping_results_never_flip_the_verdict() {
    let config = config(3, 3);
    let healthy = HealthState::new(StartAs::Healthy);
    // Two failures, one success, forever: never three failures in a row.
    let flapping: Vec<_> = [Failure, Failure, Success].repeat(50);
    assert_eq!(feed(&healthy, &config, &flapping), []);
    assert!(healthy.is_healthy());

    let unhealthy = HealthState::new(StartAs::Healthy);
    feed(&unhealthy, &config, &[Failure; 3]);
    let flapping: Vec<_> = [Success, Success, Failure].repeat(50);
    assert_eq!(feed(&unhealthy, &config, &flapping), []);
    assert!(!unhealthy.is_healthy());
}

#[test]
fn a_threshold_of_one_follows_every_result() {
    let config = config(1, 1);
    let state = HealthState::default();
    assert_eq!(
        feed(&state, &config, &[Failure, Success, Success, Failure]),
        [Health::Unhealthy, Health::Healthy, Health::Unhealthy]
    );
}

#[test]
fn a_pending_endpoint_takes_no_traffic_and_its_first_success_decides() {
    let config = config(5, 5);
    let state = HealthState::new(StartAs::Pending);
    assert!(!state.is_healthy());
    assert_eq!(state.health(), Health::Pending);
    assert_eq!(state.record(&config, Success), Some(Health::Healthy));
    assert!(state.is_healthy());
}

#[test]
fn a_pending_endpoint_that_fails_first_needs_the_full_healthy_run() {
    let config = config(3, 5);
    let state = HealthState::new(StartAs::Pending);
    assert_eq!(state.record(&config, Failure), Some(Health::Unhealthy));
    assert_eq!(feed(&state, &config, &[Success, Success]), []);
    assert_eq!(state.record(&config, Success), Some(Health::Healthy));
}

#[test]
fn new_thresholds_apply_from_the_next_result() {
    let state = HealthState::default();
    feed(&state, &config(1, 10), &[Failure; 4]);
    assert!(state.is_healthy());
    // The run of four already counts towards the new, lower threshold.
    assert_eq!(
        state.record(&config(1, 5), Failure),
        Some(Health::Unhealthy)
    );
}

#[test]
fn concurrent_checkers_report_one_transition() {
    const THREADS: usize = 4;
    let config = config(2, 3);
    let state = HealthState::default();
    let transitions: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| scope.spawn(|| feed(&state, &config, &[Failure; 1_000]).len()))
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    assert_eq!(transitions, 1);
    assert_eq!(state.health(), Health::Unhealthy);
}

/// The obvious model: count the run of results that disagree with the verdict.
fn model(start: StartAs, config: &HealthConfig, results: &[CheckResult]) -> Vec<Health> {
    let mut health = match start {
        StartAs::Healthy => Health::Healthy,
        StartAs::Pending => Health::Pending,
    };
    let mut run = 0;
    let mut seen = Vec::new();
    for &result in results {
        health = match (health, result) {
            (Health::Pending, Success) => Health::Healthy,
            (Health::Pending, Failure) => Health::Unhealthy,
            (Health::Healthy, Success) | (Health::Unhealthy, Failure) => {
                run = 0;
                health
            }
            (Health::Healthy, Failure) | (Health::Unhealthy, Success) => {
                run += 1;
                let threshold = if health == Health::Healthy {
                    config.unhealthy_threshold
                } else {
                    config.healthy_threshold
                };
                if run == threshold.get() {
                    run = 0;
                    if health == Health::Healthy {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    }
                } else {
                    health
                }
            }
        };
        seen.push(health);
    }
    seen
}

proptest! {
    #[test]
    fn matches_the_model(
        healthy in 1_u32..6,
        unhealthy in 1_u32..6,
        pending in any::<bool>(),
        results in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let config = config(healthy, unhealthy);
        let start = if pending { StartAs::Pending } else { StartAs::Healthy };
        let results: Vec<_> = results
            .into_iter()
            .map(|ok| if ok { Success } else { Failure })
            .collect();
        let state = HealthState::new(start);
        let mut previous = state.health();
        for (&result, expected) in results.iter().zip(model(start, &config, &results)) {
            let changed = state.record(&config, result);
            prop_assert_eq!(state.health(), expected);
            prop_assert_eq!(state.is_healthy(), expected == Health::Healthy);
            prop_assert_eq!(changed, (expected != previous).then_some(expected));
            previous = expected;
        }
    }
}
