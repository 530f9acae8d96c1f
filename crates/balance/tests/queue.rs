//! Tests for the admission wait queue (`WaitQueue`), on tokio's paused clock.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use sluice_balance::{QueueError, WaitQueue, Waiter};
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);

/// Lets every runnable task run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Polls `waiter.wait(deadline)` once: `Some(result)` if it completed at once.
fn try_wait(waiter: &mut Waiter<'_>, deadline: Instant) -> Option<Result<(), QueueError>> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(waiter.wait(deadline)).poll(&mut cx) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// Spawns a task per priority, in order, each waiting once and recording its label
/// when woken; returns the shared record.
async fn spawn_waiters(
    queue: &Arc<WaitQueue>,
    waiters: &[(u32, &'static str)],
) -> Arc<Mutex<Vec<&'static str>>> {
    let woken = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + HOUR;
    for (i, &(priority, label)) in waiters.iter().enumerate() {
        let (task_queue, woken) = (Arc::clone(queue), Arc::clone(&woken));
        tokio::spawn(async move {
            task_queue.wait(priority, deadline).await.expect("woken");
            woken.lock().expect("lock").push(label);
        });
        settle().await;
        assert_eq!(queue.depth(), i + 1, "{label} joined");
    }
    woken
}

async fn wake_each(queue: &WaitQueue, n: usize) {
    for _ in 0..n {
        assert!(queue.notify_one());
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priorities_are_woken_first() {
    let queue = Arc::new(WaitQueue::new(10));
    let woken = spawn_waiters(&queue, &[(1, "p1"), (5, "p5"), (3, "p3")]).await;
    wake_each(&queue, 3).await;
    assert_eq!(*woken.lock().expect("lock"), ["p5", "p3", "p1"]);
    assert_eq!(queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn equal_priorities_are_woken_in_arrival_order() {
    let queue = Arc::new(WaitQueue::new(10));
    let woken = spawn_waiters(&queue, &[(2, "a"), (7, "x"), (2, "b"), (2, "c"), (7, "y")]).await;
    wake_each(&queue, 5).await;
    assert_eq!(*woken.lock().expect("lock"), ["x", "y", "a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let queue = WaitQueue::new(2);
    let _a = queue.register(0).expect("room");
    let _b = queue.register(9).expect("room");
    assert_eq!(queue.depth(), 2);
    let start = Instant::now();
    assert_eq!(queue.wait(5, start + HOUR).await, Err(QueueError::Full));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(queue.depth(), 2);

    let disabled = WaitQueue::new(0);
    assert_eq!(disabled.register(0).err(), Some(QueueError::Full));
    assert_eq!(disabled.max_depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_at_its_deadline_and_leaves() {
    let queue = WaitQueue::new(4);
    let start = Instant::now();
    let deadline = start + Duration::from_millis(250);
    assert_eq!(queue.wait(0, deadline).await, Err(QueueError::TimedOut));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_leaves_the_queue() {
    let queue = Arc::new(WaitQueue::new(4));
    let task = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move { queue.wait(0, Instant::now() + HOUR).await })
    };
    settle().await;
    assert_eq!(queue.depth(), 1);
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    assert_eq!(queue.depth(), 0);
    // Nobody is left to wake.
    assert!(!queue.notify_one());

    // Same through a timeout around the wait.
    let outer = tokio::time::timeout(Duration::from_secs(1), queue.wait(0, Instant::now() + HOUR));
    assert!(outer.await.is_err());
    assert_eq!(queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_notification_with_nobody_waiting_is_not_stored() {
    let queue = WaitQueue::new(4);
    assert!(!queue.notify_one());
    assert_eq!(queue.notify_all(), 0);
    // A waiter that joins afterwards is not woken by it.
    let start = Instant::now();
    assert_eq!(
        queue.wait(0, start + Duration::from_secs(2)).await,
        Err(QueueError::TimedOut)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_notification_between_register_and_wait_is_kept() {
    let queue = WaitQueue::new(4);
    let mut waiter = queue.register(0).expect("room");
    assert!(queue.notify_one());
    let start = Instant::now();
    assert_eq!(waiter.wait(start + HOUR).await, Ok(()));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_waits_again_keeps_its_place() {
    let queue = WaitQueue::new(4);
    let deadline = Instant::now() + HOUR;
    let mut first = queue.register(1).expect("room");
    let mut second = queue.register(1).expect("room");
    assert!(queue.notify_one());
    assert_eq!(try_wait(&mut first, deadline), Some(Ok(())));
    // `first` lost the race for that slot: the next turn is still its own.
    assert!(queue.notify_one());
    assert_eq!(try_wait(&mut second, deadline), None);
    assert_eq!(try_wait(&mut first, deadline), Some(Ok(())));
    assert_eq!(queue.depth(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_leaves_unserved_passes_its_turn_on() {
    let queue = WaitQueue::new(4);
    let deadline = Instant::now() + HOUR;
    let first = queue.register(3).expect("room");
    let mut second = queue.register(1).expect("room");
    assert!(queue.notify_one()); // `first`'s turn...
    assert_eq!(try_wait(&mut second, deadline), None);
    drop(first); // ...which it never took: `second` gets it.
    assert_eq!(try_wait(&mut second, deadline), Some(Ok(())));
    assert_eq!(queue.depth(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_turn_arriving_with_the_deadline_goes_to_the_next_waiter() {
    let queue = WaitQueue::new(4);
    let now = Instant::now();
    let mut late = queue.register(5).expect("room");
    let mut next = queue.register(0).expect("room");
    assert!(queue.notify_one());
    // `late` only looks once its deadline has passed.
    assert_eq!(try_wait(&mut late, now), Some(Err(QueueError::TimedOut)));
    assert_eq!(try_wait(&mut next, now + HOUR), Some(Ok(())));
}

#[tokio::test(start_paused = true)]
async fn notify_all_wakes_every_waiter() {
    let queue = Arc::new(WaitQueue::new(10));
    let woken = spawn_waiters(&queue, &[(1, "a"), (2, "b"), (3, "c")]).await;
    assert_eq!(queue.notify_all(), 3);
    settle().await;
    assert_eq!(woken.lock().expect("lock").len(), 3);
    assert_eq!(queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_woken_in_turn_are_served_before_the_deadline() {
    // A pool with one slot: each waiter holds it for 100 ms, then frees it.
    let queue = Arc::new(WaitQueue::new(8));
    let deadline = Instant::now() + Duration::from_millis(450);
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..6_u32 {
        let (queue, served) = (Arc::clone(&queue), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let result = queue.wait(0, deadline).await;
            if result.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                served.lock().expect("lock").push(id);
                queue.notify_one();
            }
            result
        }));
        settle().await;
    }
    queue.notify_one();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    // Served at 100, 200, 300 and 400 ms; the fifth would finish at 500 ms and is
    // woken at 400 ms, in time; the sixth times out at 450 ms.
    assert_eq!(*served.lock().expect("lock"), [0, 1, 2, 3, 4]);
    assert_eq!(results[5], Err(QueueError::TimedOut));
    assert_eq!(queue.depth(), 0);
}
