//! The admission wait queue: where a request waits when every endpoint of its pool is
//! at its `maxConcurrency`, until a slot frees or its deadline passes.
//!
//! The queue does not hand out slots, it hands out *turns*: [`WaitQueue::notify_one`]
//! (called by the proxy each time an in-flight request of the pool ends) wakes the
//! waiter whose turn it is, which then tries to pick an endpoint again. Concurrency
//! limits stay where they are, in the endpoints' in-flight counters.
//!
//! # Order
//!
//! Higher `priority` numbers go first (a premium tier might wait with priority 10, a
//! batch job with 0); waiters of equal priority go in the order they joined. A waiter
//! keeps its place for as long as its [`Waiter`] lives: one that is woken but loses
//! the race for the freed slot (to a request that was not queued, say) waits again
//! from the same place, ahead of everyone who joined after it.
//!
//! # No lost wake-ups, no stored permits
//!
//! A notification is for the waiters queued when it is sent: `notify_one` with nobody
//! queued does nothing, and does not wake someone who joins later. (A stored permit
//! would let that later request skip the queue only to find the slot already taken.)
//! The race this leaves, "the slot frees between my failed pick and my joining the
//! queue", is closed by the caller: join first, then try to pick once more, then wait:
//!
//! ```
//! # async fn admit(pool: &sluice_balance::WaitQueue, try_pick: impl Fn() -> Option<usize>)
//! # -> Result<usize, sluice_balance::QueueError> {
//! # let (priority, deadline) = (0, tokio::time::Instant::now());
//! if let Some(endpoint) = try_pick() {
//!     return Ok(endpoint);
//! }
//! let mut waiter = pool.register(priority)?; // Err(Full): 503 at once
//! loop {
//!     // A slot freed before `register` is seen here, and one freed from now on
//!     // wakes `waiter`.
//!     if let Some(endpoint) = try_pick() {
//!         return Ok(endpoint); // dropping `waiter` leaves the queue
//!     }
//!     waiter.wait(deadline).await?; // Err(TimedOut): 503
//! }
//! # }
//! ```
//!
//! A woken waiter is queued again at once, at its place, so a slot freed while it is
//! busy picking wakes it again instead of being missed. A waiter dropped while it
//! holds a wake-up it has not consumed passes it to the next waiter, so cancelling a
//! request never swallows a freed slot.
//!
//! # Cost
//!
//! The queue is for the slow path (a pool that is full), so it uses one [`Mutex`];
//! each critical section is a few `BTreeMap` operations, and wakers are woken after
//! the lock is released.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// Why a request left the queue without its turn.
///
/// Both cases are retryable: the pool is saturated right now. The proxy answers
/// `503 Service Unavailable` with a `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum QueueError {
    /// The queue already holds `max_depth` waiters; the request was not queued.
    /// Retryable: fail fast so that the client (or another replica) tries later.
    #[error("the wait queue is full")]
    Full,
    /// The deadline passed before the waiter's turn came. Retryable, though the
    /// request's own time budget is spent.
    #[error("timed out waiting in the queue")]
    TimedOut,
}

/// A waiter's place in the queue: higher priority first, then older first.
type Key = (Reverse<u32>, u64);

#[derive(Debug, Default)]
struct Inner {
    /// Waiters waiting for a turn, in turn order, with the waker of the task waiting
    /// (if one has polled).
    queued: BTreeMap<Key, Option<Waker>>,
    /// Sequence numbers of the waiters woken whose wake-up is not consumed yet. Every
    /// live waiter is in exactly one of `queued` and `notified`.
    notified: BTreeSet<u64>,
    /// Live waiters.
    depth: usize,
    next_seq: u64,
}

impl Inner {
    /// Moves the first queued waiter to `notified`; returns its waker (`Some(None)`
    /// if it has not polled yet), or `None` if nobody is queued.
    fn notify_first(&mut self) -> Option<Option<Waker>> {
        let ((_, seq), waker) = self.queued.pop_first()?;
        self.notified.insert(seq);
        Some(waker)
    }
}

/// A bounded, prioritised wait queue for one pool.
#[derive(Debug)]
pub struct WaitQueue {
    max_depth: usize,
    inner: Mutex<Inner>,
}

impl WaitQueue {
    /// Creates a queue that holds at most `max_depth` waiters; with 0, every
    /// [`register`](Self::register) fails with [`QueueError::Full`].
    #[must_use]
    pub fn new(max_depth: usize) -> Self {
        Self {
            max_depth,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most waiters the queue holds.
    #[must_use]
    pub const fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// The number of waiters in the queue (live [`Waiter`]s), for a gauge.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.lock().depth
    }

    /// Joins the queue at `priority` (higher goes first), behind every waiter of the
    /// same or a higher priority already there.
    ///
    /// The waiter is queued from this moment: a [`notify_one`](Self::notify_one)
    /// that reaches it before it [`wait`](Waiter::wait)s is kept for it. It leaves
    /// the queue when dropped.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`] if the queue already holds `max_depth` waiters.
    pub fn register(&self, priority: u32) -> Result<Waiter<'_>, QueueError> {
        let mut inner = self.lock();
        if inner.depth >= self.max_depth {
            return Err(QueueError::Full);
        }
        let key = (Reverse(priority), inner.next_seq);
        inner.next_seq += 1;
        inner.depth += 1;
        inner.queued.insert(key, None);
        Ok(Waiter { queue: self, key })
    }

    /// Joins the queue at `priority` and waits for a turn until `deadline`; the
    /// waiter leaves the queue when this returns.
    ///
    /// A convenience for callers that wait once. A caller that may have to wait
    /// again after losing a race, or that must not miss a slot freed just before it
    /// joins, should use [`register`](Self::register) as the module documentation
    /// shows.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`] if the queue is full, [`QueueError::TimedOut`] if
    /// `deadline` passes first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the queue, and a wake-up it had
    /// received but not returned is passed to the next waiter.
    pub async fn wait(&self, priority: u32, deadline: Instant) -> Result<(), QueueError> {
        self.register(priority)?.wait(deadline).await
    }

    /// Wakes the first waiter (highest priority, then oldest) that is waiting for a
    /// turn; call it each time a slot of the pool frees.
    ///
    /// Returns `false`, and does nothing, if no waiter is waiting: the notification
    /// is not stored for a waiter that joins later.
    pub fn notify_one(&self) -> bool {
        let waker = self.lock().notify_first();
        match waker {
            Some(waker) => {
                if let Some(waker) = waker {
                    waker.wake();
                }
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter that is waiting for a turn, for example when the pool gains
    /// endpoints or is replaced by a new route table; returns how many were woken.
    pub fn notify_all(&self) -> usize {
        let wakers: Vec<Option<Waker>> = {
            let mut inner = self.lock();
            std::iter::from_fn(|| inner.notify_first()).collect()
        };
        let woken = wakers.len();
        wakers.into_iter().flatten().for_each(Waker::wake);
        woken
    }
}

/// A request's place in a [`WaitQueue`]; it leaves the queue when dropped.
///
/// While it lives it is queued and takes turns, so drop it as soon as the request
/// has an endpoint (or gives up): a turn it is given and never uses only passes on
/// when it is dropped.
#[derive(Debug)]
#[must_use = "a waiter leaves the queue when dropped"]
pub struct Waiter<'a> {
    queue: &'a WaitQueue,
    key: Key,
}

impl Waiter<'_> {
    /// The priority this waiter joined with.
    #[must_use]
    pub const fn priority(&self) -> u32 {
        self.key.0.0
    }

    /// Waits until it is this waiter's turn or `deadline` passes.
    ///
    /// `Ok` consumes one wake-up: the caller should try to pick an endpoint now.
    /// Whatever the result, the waiter stays in the queue at its place until it is
    /// dropped, and waits again from there if called again.
    ///
    /// # Errors
    ///
    /// [`QueueError::TimedOut`] once `deadline` has passed, even if a wake-up arrived
    /// at the same moment: that wake-up goes to the next waiter.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing. The waiter keeps its place,
    /// and a wake-up that arrives meanwhile is kept for its next `wait`, or passed
    /// to the next waiter when it is dropped.
    pub async fn wait(&mut self, deadline: Instant) -> Result<(), QueueError> {
        let mut sleep = pin!(tokio::time::sleep_until(deadline));
        poll_fn(|cx| self.poll_turn(cx, sleep.as_mut())).await
    }

    fn poll_turn(
        &self,
        cx: &mut Context<'_>,
        sleep: Pin<&mut Sleep>,
    ) -> Poll<Result<(), QueueError>> {
        let timed_out = sleep.poll(cx).is_ready();
        let (_, seq) = self.key;
        let mut inner = self.queue.lock();
        let woken = inner.notified.remove(&seq);
        if timed_out {
            // Pass an unconsumed wake-up on before queueing again, or it could come
            // straight back to this waiter.
            let forward = if woken { inner.notify_first() } else { None };
            if woken {
                inner.queued.insert(self.key, None);
            }
            drop(inner);
            if let Some(Some(waker)) = forward {
                waker.wake();
            }
            return Poll::Ready(Err(QueueError::TimedOut));
        }
        if woken {
            // Queued again at once, at the same place, so that a slot freed while
            // the caller picks is not missed.
            inner.queued.insert(self.key, None);
            return Poll::Ready(Ok(()));
        }
        if let Some(slot) = inner.queued.get_mut(&self.key) {
            match slot {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut inner = self.queue.lock();
        inner.depth = inner.depth.saturating_sub(1);
        let forward =
            if inner.queued.remove(&self.key).is_none() && inner.notified.remove(&self.key.1) {
                inner.notify_first()
            } else {
                None
            };
        drop(inner);
        if let Some(Some(waker)) = forward {
            waker.wake();
        }
    }
}
