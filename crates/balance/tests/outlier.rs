//! Tests for passive outlier ejection (`OutlierDetector`), with injected time.

use std::num::NonZeroU32;
use std::thread;
use std::time::Duration;

use sluice_balance::{Ejection, EjectionReason, Outcome, OutlierConfig, OutlierDetector};

const SECOND: u64 = 1_000_000_000;
/// An arbitrary start, so that no test relies on the clock starting at zero.
const T0: u64 = 1_000 * SECOND;

fn config() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: NonZeroU32::new(5),
        consecutive_connect_failures: NonZeroU32::new(2),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(100),
        max_ejection_percent: 30,
        multiplier_decay: Duration::from_secs(60),
    }
}

/// Records `n` outcomes of one kind and returns the last answer.
fn record_n(
    detector: &OutlierDetector,
    endpoint: usize,
    outcome: Outcome,
    n: usize,
    now: u64,
) -> Option<Ejection> {
    let mut last = None;
    for _ in 0..n {
        last = detector.record(endpoint, outcome, now);
    }
    last
}

#[test]
fn ejects_on_the_nth_consecutive_5xx() {
    let detector = OutlierDetector::new(config(), 10);
    assert_eq!(record_n(&detector, 3, Outcome::Failure5xx, 4, T0), None);
    assert!(!detector.is_ejected(3, T0));
    assert_eq!(
        detector.record(3, Outcome::Failure5xx, T0),
        Some(Ejection::Ejected {
            endpoint: 3,
            reason: EjectionReason::ConsecutiveFailures,
            duration: Duration::from_secs(30),
            until: T0 + 30 * SECOND,
            multiplier: 1,
        })
    );
    assert!(detector.is_ejected(3, T0));
    assert_eq!(detector.ejected_count(T0), 1);
    assert!(
        (0..10)
            .filter(|&i| i != 3)
            .all(|i| !detector.is_ejected(i, T0))
    );
}

#[test]
fn comes_back_when_the_base_ejection_time_has_passed() {
    let detector = OutlierDetector::new(config(), 10);
    record_n(&detector, 0, Outcome::Failure5xx, 5, T0);
    assert!(detector.is_ejected(0, T0 + 30 * SECOND - 1));
    assert!(!detector.is_ejected(0, T0 + 30 * SECOND));
    assert_eq!(detector.ejected_count(T0 + 30 * SECOND), 0);
}

#[test]
fn a_success_resets_the_run() {
    let detector = OutlierDetector::new(config(), 10);
    for round in 0..10 {
        let now = T0 + round * SECOND;
        assert_eq!(record_n(&detector, 1, Outcome::Failure5xx, 4, now), None);
        assert_eq!(detector.record(1, Outcome::Success, now), None);
    }
    assert!(!detector.is_ejected(1, T0 + 10 * SECOND));
}

#[test]
fn connect_failures_have_their_own_lower_threshold() {
    let detector = OutlierDetector::new(config(), 10);
    assert_eq!(detector.record(2, Outcome::ConnectFailure, T0), None);
    let ejection = detector.record(2, Outcome::ConnectFailure, T0);
    assert_eq!(
        ejection.map(|e| (e.endpoint(), e.reason(), e.is_ejected())),
        Some((2, EjectionReason::ConsecutiveConnectFailures, true))
    );
}

#[test]
fn an_answer_breaks_a_connect_failure_run_but_not_a_failure_run() {
    let detector = OutlierDetector::new(config(), 10);
    // connect, 5xx, connect, 5xx: never two connect failures in a row...
    for outcome in [
        Outcome::ConnectFailure,
        Outcome::Failure5xx,
        Outcome::ConnectFailure,
        Outcome::Failure5xx,
    ] {
        assert_eq!(detector.record(4, outcome, T0), None);
    }
    // ...but five failures of either kind in a row.
    let ejection = detector.record(4, Outcome::ConnectFailure, T0);
    assert_eq!(
        ejection.map(|e| e.reason()),
        Some(EjectionReason::ConsecutiveFailures)
    );
}

#[test]
fn disabled_rules_never_eject() {
    let detector = OutlierDetector::new(
        OutlierConfig {
            consecutive_failures: None,
            consecutive_connect_failures: None,
            ..config()
        },
        10,
    );
    assert_eq!(
        record_n(&detector, 0, Outcome::ConnectFailure, 1_000, T0),
        None
    );
    assert_eq!(record_n(&detector, 0, Outcome::Failure5xx, 1_000, T0), None);
    assert!(!detector.is_ejected(0, T0));
}

#[test]
fn repeated_ejections_last_longer_up_to_the_cap() {
    let detector = OutlierDetector::new(config(), 10);
    let mut now = T0;
    let mut durations = Vec::new();
    for _ in 0..5 {
        match record_n(&detector, 0, Outcome::Failure5xx, 5, now) {
            Some(Ejection::Ejected {
                duration, until, ..
            }) => {
                durations.push(duration.as_secs());
                // Back, and failing again ten seconds later.
                now = until + 10 * SECOND;
            }
            other => panic!("expected an ejection, got {other:?}"),
        }
    }
    assert_eq!(durations, [30, 60, 90, 100, 100]);
    assert_eq!(detector.multiplier(0, now), 5);
}

#[test]
fn the_multiplier_decays_after_sustained_health() {
    let detector = OutlierDetector::new(config(), 10);
    let mut now = T0;
    for _ in 0..3 {
        let Some(Ejection::Ejected { until, .. }) =
            record_n(&detector, 0, Outcome::Failure5xx, 5, now)
        else {
            panic!("expected an ejection");
        };
        now = until;
    }
    // Back at `now` after a third ejection; one step of decay every 60 s.
    assert_eq!(detector.multiplier(0, now), 3);
    assert_eq!(detector.multiplier(0, now + 60 * SECOND - 1), 3);
    assert_eq!(detector.multiplier(0, now + 60 * SECOND), 2);
    assert_eq!(detector.multiplier(0, now + 150 * SECOND), 1);
    assert_eq!(detector.multiplier(0, now + 180 * SECOND), 0);
    let again = record_n(&detector, 0, Outcome::Failure5xx, 5, now + 130 * SECOND);
    assert!(matches!(
        again,
        Some(Ejection::Ejected { multiplier: 2, duration, .. }) if duration == Duration::from_secs(60)
    ));
}

#[test]
fn zero_decay_means_ejections_never_grow() {
    let detector = OutlierDetector::new(
        OutlierConfig {
            multiplier_decay: Duration::ZERO,
            ..config()
        },
        10,
    );
    let mut now = T0;
    for _ in 0..3 {
        let Some(Ejection::Ejected {
            until, multiplier, ..
        }) = record_n(&detector, 0, Outcome::Failure5xx, 5, now)
        else {
            panic!("expected an ejection");
        };
        assert_eq!(multiplier, 1);
        now = until;
    }
}

#[test]
fn no_more_than_the_percent_cap_is_ejected_at_once() {
    let detector = OutlierDetector::new(config(), 10); // 30 %: 3 of 10.
    for endpoint in 0..3 {
        let ejection = record_n(&detector, endpoint, Outcome::Failure5xx, 5, T0);
        assert!(ejection.is_some_and(|e| e.is_ejected()));
    }
    assert_eq!(
        record_n(&detector, 3, Outcome::Failure5xx, 5, T0),
        Some(Ejection::Skipped {
            endpoint: 3,
            reason: EjectionReason::ConsecutiveFailures,
        })
    );
    assert!(!detector.is_ejected(3, T0));
    assert_eq!(detector.ejected_count(T0), 3);

    // A skipped attempt restarts the run: one more failure does not try again.
    assert_eq!(detector.record(3, Outcome::Failure5xx, T0 + SECOND), None);

    // Once the first three are back, there is room again.
    let later = T0 + 30 * SECOND;
    assert_eq!(detector.ejected_count(later), 0);
    let ejection = record_n(&detector, 3, Outcome::Failure5xx, 4, later);
    assert!(ejection.is_some_and(|e| e.is_ejected()));
}

#[test]
fn a_small_pool_can_always_eject_one_endpoint_unless_disabled() {
    let single = OutlierDetector::new(config(), 1);
    assert!(record_n(&single, 0, Outcome::Failure5xx, 5, T0).is_some_and(|e| e.is_ejected()));

    let disabled = OutlierDetector::new(
        OutlierConfig {
            max_ejection_percent: 0,
            ..config()
        },
        10,
    );
    assert!(record_n(&disabled, 0, Outcome::Failure5xx, 5, T0).is_some_and(|e| !e.is_ejected()));
    assert!(!disabled.is_ejected(0, T0));
}

#[test]
fn results_for_an_ejected_endpoint_do_not_extend_its_ejection() {
    let detector = OutlierDetector::new(config(), 10);
    record_n(&detector, 0, Outcome::Failure5xx, 5, T0);
    // Requests sent before the ejection still fail while it is out.
    assert_eq!(
        record_n(&detector, 0, Outcome::Failure5xx, 20, T0 + SECOND),
        None
    );
    assert!(!detector.is_ejected(0, T0 + 30 * SECOND));
}

#[test]
fn a_rebuilt_pool_keeps_the_state_of_the_endpoints_that_stay() {
    let old = OutlierDetector::new(config(), 3);
    record_n(&old, 1, Outcome::Failure5xx, 5, T0);
    record_n(&old, 2, Outcome::Failure5xx, 4, T0);
    // New pool: old endpoint 2, a new one, old endpoint 1.
    let new = old.carry_over(config(), [Some(2), None, Some(1)]);
    assert_eq!(new.len(), 3);
    assert!(new.is_ejected(2, T0));
    assert!(!new.is_ejected(1, T0));
    // Old endpoint 2 kept its run of four: one more failure ejects it.
    assert!(new.record(0, Outcome::Failure5xx, T0).is_some());
    assert_eq!(new.multiplier(2, T0), 1);
}

#[test]
fn out_of_range_indices_are_ignored() {
    let detector = OutlierDetector::new(config(), 2);
    assert_eq!(record_n(&detector, 2, Outcome::Failure5xx, 10, T0), None);
    assert!(!detector.is_ejected(2, T0));
    assert!(OutlierDetector::new(config(), 0).is_empty());
}

#[test]
fn the_cap_holds_under_concurrent_failures() {
    const ENDPOINTS: usize = 10;
    let detector = OutlierDetector::new(config(), ENDPOINTS);
    let ejected: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let detector = &detector;
                scope.spawn(move || {
                    let mut ejected = 0;
                    for round in 0..1_000 {
                        let endpoint = (worker * 7 + round) % ENDPOINTS;
                        let ejection = detector.record(endpoint, Outcome::Failure5xx, T0);
                        ejected += usize::from(ejection.is_some_and(|e| e.is_ejected()));
                        assert!(detector.ejected_count(T0) <= 3);
                    }
                    ejected
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    assert_eq!(ejected, 3);
    assert_eq!(detector.ejected_count(T0), 3);
}
