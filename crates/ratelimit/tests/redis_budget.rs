//! Global LLM token budgets against a real `redis-server`: replicas share one budget,
//! a settlement gives back what was not used (or charges what was used beyond the
//! reservation), and Redis being away follows the failure mode.
//!
//! `--nocapture` prints the measurements quoted in `BENCHMARKS.md`.

mod support;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use sluice_ratelimit::{
    BudgetDecision, BudgetQuota, FailureMode, GlobalBudget, GlobalKey, GlobalReservation,
    ManualClock,
};
use support::{RedisServer, backend, nz};

type Budget = GlobalBudget<Arc<ManualClock>>;

fn budget(url: &str, tokens: u32, period: Duration, mode: FailureMode) -> Budget {
    GlobalBudget::new(
        backend(url, Duration::from_secs(2)),
        BudgetQuota::per_period(nz(tokens), period).expect("quota"),
        mode,
        NonZeroUsize::new(1_000).expect("nonzero"),
        Arc::new(ManualClock::new(0)),
    )
}

async fn reserve(budget: &Budget, key: &GlobalKey, tokens: u32) -> Option<GlobalReservation> {
    match budget.reserve(key, nz(tokens)).await.expect("fits") {
        BudgetDecision::Granted { reservation, .. } => Some(reservation),
        BudgetDecision::Refused(decision) => {
            assert!(decision.retry_after().is_some());
            None
        }
        BudgetDecision::Unavailable { error, .. } => panic!("Redis failed: {error}"),
    }
}

/// Three replicas, 3 × 100 concurrent requests of 400 tokens against 10 000 tokens
/// an hour; every admitted request then reports 10 tokens used, and the budget it
/// gave back admits more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_budget_and_settle_in_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let hour = Duration::from_secs(3_600);
    let replicas: Vec<Arc<Budget>> = (0..3)
        .map(|_| Arc::new(budget(&server.url(), 10_000, hour, FailureMode::Closed)))
        .collect();
    let key = GlobalKey::new("budget-test", &[b"org-1"]);
    let admitted = Arc::new(AtomicU32::new(0));
    let returned = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..100 {
            let (replica, key) = (Arc::clone(replica), key.clone());
            let (admitted, returned) = (Arc::clone(&admitted), Arc::clone(&returned));
            tasks.push(tokio::spawn(async move {
                if let Some(reservation) = reserve(&replica, &key, 400).await {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    let settled = replica.settle(&key, reservation, 10).await;
                    returned.fetch_add(settled.refunded, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    let admitted = admitted.load(Ordering::Relaxed);
    let returned = returned.load(Ordering::Relaxed);
    let ops: u64 = replicas
        .iter()
        .map(|r| r.backend().stats().snapshot().redis_ops)
        .sum();
    // Each admitted request used 10 tokens: the budget bounds the tokens in use at
    // once (25 reservations of 400), and what came back admitted more.
    let used = u64::from(admitted) * 10;
    println!(
        "token budget: 300 requests of 400 tokens on 3 replicas, budget 10 000: admitted \
         {admitted}, tokens returned {returned}, used {used}, Redis calls {ops} ({:.2} per \
         request, {:.2} per admitted one)",
        ops as f64 / 300.0,
        ops as f64 / f64::from(admitted),
    );
    assert!(admitted >= 25, "the whole budget is usable: {admitted}");
    assert_eq!(returned, u64::from(admitted) * 390, "every refund is whole");
    assert_eq!(
        ops,
        300 + u64::from(admitted),
        "one call to reserve, one to settle"
    );

    // No reservation outlives its settlement: what is left is the budget less what
    // was used. Reserving it all, across the replicas, admits exactly that.
    let left = 10_000 - used;
    let mut reserved = 0;
    for (i, replica) in replicas.iter().cycle().enumerate().take(200) {
        let tokens = if i % 2 == 0 { 500 } else { 100 };
        if reserve(replica, &key, tokens).await.is_some() {
            reserved += u64::from(tokens);
        }
    }
    println!("over-admission: reserved {reserved} of the {left} tokens left");
    assert!(
        reserved <= left,
        "never more than the budget: {reserved} > {left}"
    );
    assert!(
        reserved + 100 > left,
        "all but a sliver is usable: {reserved} of {left}"
    );
}

#[tokio::test]
async fn a_settlement_refunds_the_unused_part_and_charges_an_overspend() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let budget = budget(
        &server.url(),
        1_000,
        Duration::from_secs(3_600),
        FailureMode::Closed,
    );
    let key = GlobalKey::new("settle-test", &[b"org"]);
    let first = reserve(&budget, &key, 400).await.expect("400 of 1000");
    assert!(
        reserve(&budget, &key, 700).await.is_none(),
        "700 more do not fit"
    );
    assert_eq!(budget.settle(&key, first, 9).await.refunded, 391);
    let second = reserve(&budget, &key, 900).await.expect("991 are free");
    // Used 5 000: the 4 100 beyond the reservation are charged, capped at a budget.
    let settled = budget.settle(&key, second, 5_000).await;
    assert_eq!((settled.refunded, settled.charged), (0, 4_100));
    assert!(
        reserve(&budget, &key, 1).await.is_none(),
        "the budget is spent"
    );
    let ops = budget.backend().stats().snapshot().redis_ops;
    assert_eq!(ops, 6, "four reservations and two settlements");
}

#[tokio::test]
async fn without_redis_the_failure_mode_decides() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.stop();
    let key = GlobalKey::new("down", &[b"org"]);
    let open = budget(&url, 1_000, Duration::from_secs(3_600), FailureMode::Open);
    let held = reserve(&open, &key, 800)
        .await
        .expect("the local fallback reserves");
    assert!(reserve(&open, &key, 800).await.is_none(), "and counts");
    assert_eq!(open.settle(&key, held, 100).await.refunded, 700);
    assert!(reserve(&open, &key, 800).await.is_some());

    let closed = budget(&url, 1_000, Duration::from_secs(3_600), FailureMode::Closed);
    assert!(matches!(
        closed.reserve(&key, NonZeroU32::MIN).await.expect("fits"),
        BudgetDecision::Unavailable { .. }
    ));
}
