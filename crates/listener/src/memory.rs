//! Giving the memory connections free back to the system.
//!
//! glibc's allocator keeps what a program frees in its arenas for reuse and returns
//! pages to the system only from the top of a heap. After a burst (thousands of
//! requests in flight at once, their connections then parked or closed) the buffers
//! they freed lie between allocations that live on, and the proxy would stay resident
//! at its peak for as long as it runs. Connections count here when they give their
//! buffers up, parked or closed; [`trim_released`] asks the allocator to return its
//! free pages once enough have since it last did, at most once a period, so a steady
//! load of kept-alive connections (which release nothing) never pays for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often [`trim_released`] looks at [`RELEASED`] in the proxy.
pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// How many connections must have been counted since the last trim for the next. The
/// count is a rough measure, not an exact one: a connection counts when it is parked
/// and again when it ends, whether or not it ever held buffers (one that sent nothing,
/// one already parked). A connection with hyper's buffers frees some 16 KB, so 64
/// usually mean a megabyte or more to return, and a trickle of closing connections adds
/// up rather than triggering a trim each.
pub const TRIM_AFTER: usize = 64;

/// Connections that gave their buffers up since the allocator was last trimmed.
#[derive(Debug, Default)]
pub struct Released(AtomicUsize);

impl Released {
    /// None yet.
    #[must_use]
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// `connections` gave their buffers up.
    pub fn add(&self, connections: usize) {
        self.0.fetch_add(connections, Ordering::Relaxed);
    }

    /// How many did since the last trim.
    pub fn pending(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether at least `n` did since the last time this said so.
    fn take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count >= n).then_some(0)
            })
            .is_ok()
    }
}

/// The process's count: the listener's client connections and the proxy's agent
/// connections add to it.
pub static RELEASED: Released = Released::new();

/// Every `period`, calls `trim` if at least `after` connections were counted in
/// `released` since it last did. Runs until dropped.
pub async fn trim_released(
    released: &Released,
    period: Duration,
    after: usize,
    mut trim: impl FnMut(),
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if released.take(after) {
            trim();
        }
    }
}

/// [`trim_released`] for the process: [`RELEASED`] looked at every [`TRIM_PERIOD`],
/// the allocator trimmed after [`TRIM_AFTER`] connections.
pub async fn trim_when_released() {
    trim_released(&RELEASED, TRIM_PERIOD, TRIM_AFTER, || {
        let started = std::time::Instant::now();
        let returned = trim_allocator();
        tracing::debug!(returned, took = ?started.elapsed(), "allocator trimmed");
    })
    .await;
}

/// Asks the allocator to return the free pages of all its arenas to the system
/// (glibc's `malloc_trim(0)`); whether it returned any. Elsewhere (musl, other
/// systems) it does nothing and returns `false`: those allocators return large free
/// blocks themselves or have no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[must_use]
pub fn trim_allocator() -> bool {
    #[expect(unsafe_code, reason = "the one call into glibc's allocator")]
    // SAFETY: `malloc_trim` takes no pointers and touches only the allocator's own
    // free lists, under the locks every other allocator call takes too.
    let returned = unsafe { libc::malloc_trim(0) };
    returned == 1
}

/// Asks the allocator to return its free pages: nothing to ask off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[must_use]
pub fn trim_allocator() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_once_enough_connections_released() {
        let released = Released::new();
        released.add(3);
        assert!(!released.take(4));
        released.add(1);
        assert!(released.take(4));
        // Counted afresh after a trim.
        assert!(!released.take(1));
        released.add(1);
        assert!(released.take(1));
    }

    #[tokio::test(start_paused = true)]
    async fn trims_at_most_once_a_period_and_only_after_releases() {
        let released = Released::new();
        let trims = std::cell::Cell::new(0);
        let period = Duration::from_secs(1);
        let task = trim_released(&released, period, 2, || trims.set(trims.get() + 1));
        tokio::pin!(task);
        // Nothing released: no trim, however long.
        let _ = tokio::time::timeout(period * 5, task.as_mut()).await;
        assert_eq!(trims.get(), 0);
        // Fewer than `after`: none.
        released.add(1);
        let _ = tokio::time::timeout(period * 2, task.as_mut()).await;
        assert_eq!(trims.get(), 0);
        // Enough, in several steps within a period: one trim at the next tick.
        released.add(2);
        released.add(1);
        let _ = tokio::time::timeout(period, task.as_mut()).await;
        assert_eq!(trims.get(), 1);
        let _ = tokio::time::timeout(period * 3, task.as_mut()).await;
        assert_eq!(trims.get(), 1);
    }

    #[test]
    fn trimming_the_allocator_after_freeing_returns_memory_on_glibc() {
        // A burst of 8 KB buffers, then all freed but one at the top: glibc keeps them.
        let mut buffers: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 8192]).collect();
        let last = buffers.pop();
        drop(buffers);
        let returned = trim_allocator();
        drop(last);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                returned,
                "32 MiB freed below a live block and nothing returned"
            );
        } else {
            assert!(!returned);
        }
    }
}
