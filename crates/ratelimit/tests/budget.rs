//! Token budgets: reservations stop concurrent overspending; settlement refunds
//! never let usage exceed the budget's rate.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use proptest::prelude::*;
use sluice_ratelimit::{BudgetQuota, KeyHash, KeyedStore, Reserve, StoreConfig, TokenBudget};

const SEC: u64 = 1_000_000_000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// 10 000 tokens per minute.
fn budget() -> BudgetQuota {
    BudgetQuota::per_period(nz(10_000), Duration::from_secs(60)).unwrap()
}

/// 8 threads × 200 requests reserve 100..=600 tokens and use part of them, all
/// at one clock reading (nothing refills): the tokens actually used never exceed
/// the budget, and refunds let later requests in.
#[test]
fn concurrent_requests_cannot_overspend() {
    let quota = budget();
    let budget = TokenBudget::new();
    let used = AtomicU64::new(0);
    let admitted = AtomicU64::new(0);
    let now = 10 * SEC;
    thread::scope(|scope| {
        for thread in 0..8_u32 {
            let (budget, used, admitted) = (&budget, &used, &admitted);
            scope.spawn(move || {
                for i in 0..200_u32 {
                    let reserve = 100 + (thread * 37 + i * 11) % 501;
                    let actual = u64::from(reserve * ((i % 4) + 1) / 4);
                    if let Reserve::Granted { reservation, .. } =
                        budget.reserve(&quota, nz(reserve), now).unwrap()
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        used.fetch_add(actual, Ordering::Relaxed);
                        budget.settle(&quota, reservation, actual, now);
                    }
                }
            });
        }
    });
    let used = used.load(Ordering::Relaxed);
    println!(
        "{} requests admitted using {used} of 10000 tokens",
        admitted.load(Ordering::Relaxed)
    );
    assert!(used <= 10_000, "overspent: {used}");
    assert!(used >= 9_000, "refunds were returned: {used}");
}

#[test]
fn keyed_budgets_reserve_and_settle_per_consumer() {
    let quota = budget().with_settle_within(Duration::from_secs(120));
    let store =
        KeyedStore::<TokenBudget>::new(quota, StoreConfig::new(NonZeroUsize::new(100).unwrap()));
    let alice = KeyHash(1);
    let bob = KeyHash(2);
    let Reserve::Granted {
        reservation,
        decision,
    } = store.reserve(alice, nz(8_000), 0).unwrap()
    else {
        panic!("a fresh budget has 10000");
    };
    assert_eq!(decision.remaining(), 2_000);
    assert_eq!(reservation.tokens(), 8_000);
    // Bob has his own budget; Alice cannot reserve 3000 more until she settles.
    assert!(matches!(
        store.reserve(bob, nz(10_000), 0).unwrap(),
        Reserve::Granted { .. }
    ));
    let Reserve::Refused(refused) = store.reserve(alice, nz(3_000), 0).unwrap() else {
        panic!("8000 + 3000 exceed 10000");
    };
    // 1000 tokens come back in 6 s.
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(6)));
    let settled = store.settle(reservation, 1_500, SEC);
    assert_eq!(settled.refunded, 6_500);
    assert!(matches!(
        store.reserve(alice, nz(3_000), SEC).unwrap(),
        Reserve::Granted { .. }
    ));
    // Over budget: the next request waits for the true time.
    let Reserve::Granted { reservation, .. } = store.reserve(alice, nz(100), SEC).unwrap() else {
        panic!("100 fit");
    };
    assert_eq!(store.settle(reservation, 9_000, SEC).charged, 8_900);
    let Reserve::Refused(refused) = store.reserve(alice, nz(1), SEC).unwrap() else {
        panic!("spent");
    };
    assert!(refused.retry_after().unwrap() <= Duration::from_secs(60));
    // Budgets stay tracked for settle_within after draining, then are evictable.
    assert_eq!(store.sweep(SEC + 61 * SEC), 0);
    assert_eq!(store.sweep(SEC + 181 * SEC), 2);
}

proptest! {
    /// Sequential reserve/settle with time moving and actual usage at most the
    /// reservation: tokens used by admitted requests over any run never exceed
    /// one burst plus what the elapsed time refills.
    #[test]
    fn usage_never_exceeds_the_budget_rate(
        steps in prop::collection::vec((0_u64..2_000, 1_u32..=3_000, 0_u32..=100, 0_usize..4), 1..200),
    ) {
        let quota = budget();
        let budget = TokenBudget::new();
        let interval = 60 * SEC / 10_000;
        let mut now = 0;
        let mut open = Vec::new();
        let mut used = 0_u128;
        for (gap_ms, tokens, percent, settle_index) in steps {
            now += gap_ms * 1_000_000;
            if let Reserve::Granted { reservation, .. } = budget.reserve(&quota, nz(tokens), now).unwrap() {
                let actual = u64::from(tokens) * u64::from(percent) / 100;
                used += u128::from(actual);
                open.push((reservation, actual));
            }
            if settle_index < open.len() {
                let (reservation, actual) = open.swap_remove(settle_index);
                budget.settle(&quota, reservation, actual, now);
            }
        }
        prop_assert!(
            used * u128::from(interval) <= u128::from(now) + 10_000 * u128::from(interval),
            "{used} tokens used in {now} ns"
        );
    }
}
