//! When the watch loop passes: the schedule of compiles and status-only passes.
//!
//! The third layer of the watch loop, as kube-runtime's `scheduler` is: given what is
//! pending, it says when the next pass is due.

use std::time::Duration;

use tokio::time::Instant;

use super::cache::Change;

/// When passes run: compiles at least `debounce` apart, and status-only passes (a
/// proxy acknowledged, a status was written back) at least `debounce` after any
/// pass. A status pass does not hold the next compile back, so an endpoint change
/// that follows acknowledgements is compiled at once.
pub(super) struct Pacer {
    debounce: Duration,
    last_compile: Option<Instant>,
    last_pass: Option<Instant>,
}

impl Pacer {
    /// A pacer that keeps passes `debounce` apart.
    pub(super) fn new(debounce: Duration) -> Self {
        Self {
            debounce,
            last_compile: None,
            last_pass: None,
        }
    }

    /// The deadline of the next pass, given the one already set and what is pending.
    pub(super) fn schedule(&self, deadline: Option<Instant>, pending: Change) -> Option<Instant> {
        let since = match pending {
            Change::None => return deadline,
            Change::Status => self.last_pass,
            Change::Content => self.last_compile,
        };
        let now = Instant::now();
        let due = since.map_or(now, |t| t + self.debounce).max(now);
        Some(deadline.map_or(due, |d| d.min(due)))
    }

    /// A pass ran now, with a compile or not.
    pub(super) fn passed(&mut self, compiled: bool) {
        let now = Instant::now();
        self.last_pass = Some(now);
        if compiled {
            self.last_compile = Some(now);
        }
    }
}
