//! Round robin: endpoints in turn, each one equally often.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::probe::{RANDOM_PROBES, Rng, scan};
use crate::{Pick, Selector};

/// Picks endpoints `0, 1, …, len - 1, 0, 1, …` in turn.
///
/// The position is one [`AtomicUsize`] advanced with a relaxed `fetch_add`, so
/// concurrent callers never wait for each other and, over any `k × len`
/// consecutive picks, every endpoint is chosen exactly `k` times. The counter wraps
/// at `usize::MAX`; when `len` does not divide `2^64` that wrap shifts the rotation
/// once, which is harmless.
///
/// When the caller rejects the endpoint whose turn it is, the turn goes to a
/// random accepted endpoint (a few random tries, then a scan from the rejected
/// one), so the rejected endpoint's share spreads over the others instead of
/// doubling its successor's.
#[derive(Debug, Default)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Creates a round robin over `len` endpoints, starting at endpoint `0`.
    ///
    /// With `len == 0`, [`pick`](Selector::pick) returns `None`.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self {
            len,
            next: AtomicUsize::new(0),
        }
    }

    /// Starts the rotation at `position` (taken modulo the number of endpoints)
    /// instead of `0`.
    ///
    /// Pass a random position when a selector is rebuilt, so that proxy replicas
    /// that swap in a new table at the same moment do not all send their next
    /// request to the first endpoint.
    #[must_use]
    pub fn starting_at(self, position: usize) -> Self {
        Self {
            next: AtomicUsize::new(position),
            ..self
        }
    }
}

impl Selector for RoundRobin {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.len;
        if request.accepts(turn) {
            return Some(turn);
        }
        let mut rng = Rng::new(request.random);
        (0..RANDOM_PROBES)
            .map(|_| rng.below(self.len))
            .find(|&i| request.accepts(i))
            .or_else(|| scan(self.len, turn + 1, request.accept))
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> Pick<'static> {
        Pick::default()
    }

    #[test]
    fn empty_set_picks_nothing() {
        let rr = RoundRobin::new(0);
        assert_eq!(rr.pick(&any()), None);
        assert!(rr.is_empty());
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        let rr = RoundRobin::new(1);
        assert!((0..10).all(|_| rr.pick(&any()) == Some(0)));
    }

    #[test]
    fn endpoints_are_picked_in_turn() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&any()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn starting_position_is_taken_modulo_len() {
        let rr = RoundRobin::new(3).starting_at(7);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&any()).unwrap()).collect();
        assert_eq!(picks, [1, 2, 0, 1]);
    }

    #[test]
    fn counter_wraps_without_panicking() {
        let rr = RoundRobin::new(4).starting_at(usize::MAX);
        assert_eq!(rr.pick(&any()), Some(usize::MAX % 4));
        assert_eq!(rr.pick(&any()), Some(0));
    }

    #[test]
    fn a_rejected_turn_goes_to_an_accepted_endpoint() {
        let rr = RoundRobin::new(4);
        let not_two = |i: usize| i != 2;
        for seed in 0..100 {
            let pick = rr.pick(&Pick::new(seed).accepting(&not_two));
            assert!(pick.is_some_and(|i| i < 4 && i != 2), "{pick:?}");
        }
        let none = |_: usize| false;
        assert_eq!(rr.pick(&any().accepting(&none)), None);
    }
}
