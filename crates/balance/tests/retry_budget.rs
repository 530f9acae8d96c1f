//! Tests for the retry budget (`RetryBudget`), with injected time.

use std::time::Duration;

use proptest::prelude::*;
use sluice_balance::{RetryBudget, RetryBudgetConfig, RetryBudgetError};

const SECOND: u64 = 1_000_000_000;
/// An arbitrary start, so that no test relies on the clock starting at zero.
const T0: u64 = 12_345 * SECOND;

fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
    RetryBudget::new(&RetryBudgetConfig {
        ttl: Duration::from_secs(10),
        min_per_second,
        ratio,
    })
    .expect("valid budget")
}

/// Withdraws until refused (at most `limit` times) and returns how many passed.
fn drain(budget: &RetryBudget, now: u64, limit: usize) -> usize {
    (0..limit).take_while(|_| budget.withdraw(now)).count()
}

fn deposit_n(budget: &RetryBudget, n: usize, now: u64) {
    for _ in 0..n {
        budget.deposit(now);
    }
}

#[test]
fn a_fifth_of_the_requests_may_be_retried() {
    let budget = budget(0.2, 0);
    deposit_n(&budget, 100, T0);
    assert_eq!(budget.available(T0), 20);
    assert_eq!(drain(&budget, T0, 1_000), 20);
    assert!(!budget.withdraw(T0));
    assert_eq!(budget.available(T0), 0);
}

#[test]
fn the_minimum_rate_is_available_on_top() {
    let budget = budget(0.2, 1); // 1 per second over 10 s: 10 more.
    assert_eq!(budget.available(T0), 10);
    deposit_n(&budget, 100, T0);
    assert_eq!(drain(&budget, T0, 1_000), 30);
}

#[test]
fn with_no_traffic_only_the_reserve_is_available() {
    let budget = budget(0.2, 3);
    assert_eq!(drain(&budget, T0, 1_000), 30);
}

#[test]
fn a_zero_ratio_allows_only_the_reserve() {
    let budget = budget(0.0, 2);
    deposit_n(&budget, 1_000, T0);
    assert_eq!(drain(&budget, T0, 1_000), 20);
}

#[test]
fn a_ratio_above_one_allows_several_retries_per_request() {
    let budget = budget(2.5, 0);
    deposit_n(&budget, 10, T0);
    assert_eq!(drain(&budget, T0, 1_000), 25);
}

#[test]
fn deposits_expire_after_the_window() {
    let budget = budget(0.2, 1);
    deposit_n(&budget, 100, T0);
    assert_eq!(budget.available(T0 + 9 * SECOND), 30);
    // Ten seconds later the requests no longer count, only the reserve does.
    assert_eq!(budget.available(T0 + 10 * SECOND), 10);
    assert_eq!(drain(&budget, T0 + 10 * SECOND, 1_000), 10);
}

#[test]
fn withdrawals_expire_too() {
    let budget = budget(0.2, 1);
    assert_eq!(drain(&budget, T0, 1_000), 10);
    assert_eq!(budget.available(T0 + 9 * SECOND), 0);
    assert_eq!(budget.available(T0 + 10 * SECOND), 10);
}

#[test]
fn the_window_slides_slot_by_slot() {
    let budget = budget(0.5, 0);
    deposit_n(&budget, 20, T0); // 10 retries, until T0 + 10 s.
    deposit_n(&budget, 40, T0 + 5 * SECOND); // 20 retries, until T0 + 15 s.
    assert_eq!(budget.available(T0 + 5 * SECOND), 30);
    assert_eq!(budget.available(T0 + 10 * SECOND), 20);
    assert_eq!(drain(&budget, T0 + 12 * SECOND, 1_000), 20);
    assert_eq!(budget.available(T0 + 15 * SECOND), 0);
    // The retries taken at T0 + 12 s expire at T0 + 22 s; nothing is left either way.
    assert_eq!(budget.available(T0 + 22 * SECOND), 0);
}

#[test]
fn a_clock_stepping_back_never_allows_more_than_the_ratio() {
    let budget = budget(0.2, 0);
    deposit_n(&budget, 50, T0 + 20 * SECOND);
    // Two laps of the ring earlier: the same slot, which keeps the later period.
    deposit_n(&budget, 50, T0);
    assert_eq!(budget.available(T0), 0);
    assert_eq!(budget.available(T0 + 20 * SECOND), 20);
    assert_eq!(drain(&budget, T0 + 25 * SECOND, 1_000), 20);
}

#[test]
fn out_of_range_settings_are_refused() {
    let config = |ttl_ms: u64, min_per_second: u32, ratio: f64| {
        RetryBudget::new(&RetryBudgetConfig {
            ttl: Duration::from_millis(ttl_ms),
            min_per_second,
            ratio,
        })
        .err()
    };
    assert_eq!(
        config(999, 1, 0.2),
        Some(RetryBudgetError::Ttl {
            ttl: Duration::from_millis(999)
        })
    );
    assert!(matches!(
        config(60_001, 1, 0.2),
        Some(RetryBudgetError::Ttl { .. })
    ));
    assert!(matches!(
        config(10_000, 1, -0.1),
        Some(RetryBudgetError::Ratio { .. })
    ));
    assert!(matches!(
        config(10_000, 1, f64::NAN),
        Some(RetryBudgetError::Ratio { .. })
    ));
    assert!(matches!(
        config(10_000, 1, 1000.1),
        Some(RetryBudgetError::Ratio { .. })
    ));
    assert!(matches!(
        config(60_000, u32::MAX, 0.2),
        Some(RetryBudgetError::Reserve { .. })
    ));
    assert_eq!(config(1_000, 0, 0.0), None);
    assert_eq!(config(60_000, 1_000, 1000.0), None);
    assert!(RetryBudget::new(&RetryBudgetConfig::default()).is_ok());
}

proptest! {
    #[test]
    fn retries_never_exceed_ratio_times_requests_plus_reserve(
        ratio_milli in 0_u32..3_000,
        min_per_second in 0_u32..5,
        requests in 0_usize..500,
    ) {
        let ratio = f64::from(ratio_milli) / 1000.0;
        let budget = budget(ratio, min_per_second);
        deposit_n(&budget, requests, T0);
        let allowed = drain(&budget, T0, 100_000);
        // Exact in thousandths: floor((ratio_milli × requests + reserve) / 1000).
        let reserve = u64::from(min_per_second) * 10_000;
        let expected = (u64::from(ratio_milli) * requests as u64 + reserve) / 1000;
        prop_assert_eq!(allowed as u64, expected);
    }
}
