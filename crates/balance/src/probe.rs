//! How selectors look for an acceptable endpoint with bounded work.
//!
//! Every selector first makes its own choice. When the caller rejects it (the
//! endpoint is full, ejected, unhealthy or terminating), the selector probes a few
//! random positions drawn from the caller's [`Pick::random`](crate::Pick::random),
//! then falls back to one scan over the endpoints. A pick therefore calls `accept`
//! at most a small constant plus the number of endpoints times, allocates nothing,
//! and, for a given `random`, always makes the same choice.

/// Random positions tried after a selector's own choice was rejected, before the
/// bounded scan.
pub(crate) const RANDOM_PROBES: usize = 4;

use crate::weights::WeightTable;

/// SplitMix64 (Steele, Lea and Flood), seeded with the caller's random value.
///
/// It stretches one `u64` from the caller into as many well-mixed values as a pick
/// needs, so tests that fix the seed get the same choices every time.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (Lemire's multiply-shift; the bias is below `n / 2^64`).
    /// Returns `0` when `n == 0`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let wide = u128::from(self.next_u64()) * n as u128;
        // The high half of a u64 × usize product is below `n`, so it fits.
        usize::try_from(wide >> 64).unwrap_or(0)
    }

    /// A value in `0..n` for a 64-bit `n`; `0` when `n == 0`.
    pub(crate) fn below_u64(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }

    /// A fair coin.
    pub(crate) fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// Visits `start, start + 1, …` modulo `n` (each index once) and returns the first
/// accepted one.
pub(crate) fn scan(n: usize, start: usize, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| accept(i))
}

/// Up to two distinct accepted endpoints out of `0..n`, drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidates {
    /// No endpoint is accepted.
    None,
    /// Exactly one accepted endpoint was found (the only one, or the only one the
    /// bounded search reached).
    One(usize),
    /// Two distinct accepted endpoints.
    Two(usize, usize),
}

/// Draws two distinct endpoints for a power-of-two-choices comparison, skipping
/// those the caller does not accept.
///
/// [`RANDOM_PROBES`] random draws (each distinct from the first candidate found)
/// come first; if they do not yield two accepted endpoints, one scan from a random
/// offset completes the pair. `accept` is called at most `RANDOM_PROBES + n` times.
pub(crate) fn two_candidates(
    n: usize,
    rng: &mut Rng,
    accept: &dyn Fn(usize) -> bool,
) -> Candidates {
    match n {
        0 => return Candidates::None,
        1 => {
            return if accept(0) {
                Candidates::One(0)
            } else {
                Candidates::None
            };
        }
        _ => {}
    }
    let mut first: Option<usize> = None;
    for _ in 0..RANDOM_PROBES {
        let index = match first {
            None => rng.below(n),
            Some(taken) => {
                // Uniform over the other n - 1 endpoints.
                let other = rng.below(n - 1);
                if other >= taken { other + 1 } else { other }
            }
        };
        if accept(index) {
            match first {
                None => first = Some(index),
                Some(taken) => return Candidates::Two(taken, index),
            }
        }
    }
    scan_for_pair(n, rng, accept, first)
}

/// Two accepted endpoints drawn in proportion to their weights in `table`, for a
/// weighted power-of-two-choices comparison.
///
/// The draws are independent, so both may be the same endpoint (`Two(a, a)`): with
/// a coin settling ties, idle endpoints are then chosen exactly in proportion to
/// their weights (`p² + p(1 − p) = p`). Up to twice [`RANDOM_PROBES`] draws come
/// first, then one scan from a random offset completes the pair, so `accept` is
/// called at most `2 × RANDOM_PROBES + n` times.
pub(crate) fn two_weighted(
    table: &WeightTable,
    rng: &mut Rng,
    accept: &dyn Fn(usize) -> bool,
) -> Candidates {
    let n = table.len();
    if n < 2 {
        return two_candidates(n, rng, accept);
    }
    let mut first: Option<usize> = None;
    for _ in 0..2 * RANDOM_PROBES {
        let index = table.draw(rng);
        if !accept(index) {
            continue;
        }
        match first {
            None => first = Some(index),
            Some(taken) => return Candidates::Two(taken, index),
        }
    }
    scan_for_pair(n, rng, accept, first)
}

/// Completes a pair with one scan over the `n` endpoints from a random offset, after
/// random draws found `first` or nothing: each endpoint is offered to `accept` once.
fn scan_for_pair(
    n: usize,
    rng: &mut Rng,
    accept: &dyn Fn(usize) -> bool,
    mut first: Option<usize>,
) -> Candidates {
    let start = rng.below(n);
    for index in (0..n).map(|k| (start + k) % n) {
        if Some(index) == first || !accept(index) {
            continue;
        }
        match first {
            None => first = Some(index),
            Some(taken) => return Candidates::Two(taken, index),
        }
    }
    first.map_or(Candidates::None, Candidates::One)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(7);
        assert_eq!(rng.below(0), 0);
        for n in 1..50 {
            assert!((0..100).all(|_| rng.below(n) < n));
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        assert!((0..10).all(|_| a.next_u64() == b.next_u64()));
    }

    #[test]
    fn scan_finds_the_first_accepted_after_start() {
        assert_eq!(scan(5, 3, &|i| i == 1), Some(1));
        assert_eq!(scan(5, 3, &|i| i >= 3), Some(3));
        assert_eq!(scan(5, 0, &|_| false), None);
        assert_eq!(scan(0, 0, &|_| true), None);
    }

    #[test]
    fn candidates_are_distinct_and_accepted() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            match two_candidates(6, &mut rng, &|i| i % 2 == 0) {
                Candidates::Two(a, b) => {
                    assert_ne!(a, b);
                    assert!(a % 2 == 0 && b % 2 == 0);
                }
                other => panic!("expected two candidates, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_lone_accepted_endpoint_is_found_by_the_scan() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            assert_eq!(
                two_candidates(1000, &mut rng, &|i| i == 777),
                Candidates::One(777)
            );
        }
    }

    #[test]
    fn accept_is_called_a_bounded_number_of_times() {
        let calls = Cell::new(0_usize);
        let accept = |_: usize| {
            calls.set(calls.get() + 1);
            false
        };
        let mut rng = Rng::new(1);
        assert_eq!(two_candidates(100, &mut rng, &accept), Candidates::None);
        assert!(calls.get() <= RANDOM_PROBES + 100);
    }

    #[test]
    fn single_endpoint_is_a_candidate_only_if_accepted() {
        let mut rng = Rng::new(0);
        assert_eq!(two_candidates(1, &mut rng, &|_| true), Candidates::One(0));
        assert_eq!(two_candidates(1, &mut rng, &|_| false), Candidates::None);
        assert_eq!(two_candidates(0, &mut rng, &|_| true), Candidates::None);
    }
}
