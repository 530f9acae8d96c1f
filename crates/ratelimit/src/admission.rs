//! Admission against several limits at once: a request is admitted only if every
//! limit admits it, and a refused request charges none of them.
//!
//! A request commonly meets a burst limit and a per-minute limit, or a consumer's
//! limit and a pool-wide ceiling. [`check_all`] first evaluates every limit without
//! charging; if any would refuse, it refuses with the longest wait and nothing is
//! charged, so a consumer over its own limit never eats into a shared ceiling.
//! Otherwise it charges the limits in order, and if one of them refuses after all
//! (another thread took the last unit in between) it takes back the charges
//! already made, at the same clock reading, which returns exactly what they took.
//! Each limit is exact on its own (a compare-and-exchange per charge), so across
//! threads the tightest limit admits exactly its capacity and the others are
//! charged only for admitted requests.
//!
//! Two more entry points serve callers that combine these limits with others (a
//! global limit in Redis, an LLM token budget) and must keep the same promise:
//! [`peek_all`] evaluates without charging, so a refusal here is found before the
//! others spend anything; [`check_all_charged`] also returns the [`Charges`] it
//! made, which [`Charges::refund`] gives back when something later refuses the
//! request after all (or it moves elsewhere).

use std::num::NonZeroU32;

use crate::algorithm::Algorithm;
use crate::algorithm::sealed::{Step, Undo};
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::gcra::Gcra;
use crate::key::KeyHash;
use crate::quota::Quota;
use crate::sliding_window::{SlidingWindow, WindowQuota};
use crate::soft::SoftLimit;
use crate::store::{KeyedStore, KeyedUndo};

/// One limit a request must pass: a limiter state with its quota, or a key in a
/// [`KeyedStore`], optionally with a soft threshold.
#[derive(Clone, Copy)]
pub struct Limit<'a> {
    target: Target<'a>,
    soft: Option<SoftLimit>,
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Gcra(&'a Gcra, &'a Quota),
    Window(&'a SlidingWindow, &'a WindowQuota),
    Keyed(&'a dyn KeyedTarget, KeyHash),
}

impl std::fmt::Debug for Limit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("info", &self.info())
            .field("soft", &self.soft)
            .finish_non_exhaustive()
    }
}

impl<'a> Limit<'a> {
    /// A single GCRA state checked against `quota` (a pool-wide ceiling, say).
    #[must_use]
    pub fn gcra(state: &'a Gcra, quota: &'a Quota) -> Self {
        Self {
            target: Target::Gcra(state, quota),
            soft: None,
        }
    }

    /// A single sliding-window state checked against `quota`.
    #[must_use]
    pub fn window(state: &'a SlidingWindow, quota: &'a WindowQuota) -> Self {
        Self {
            target: Target::Window(state, quota),
            soft: None,
        }
    }

    /// `key` in `store`, checked against the store's quota.
    #[must_use]
    pub fn keyed<A: Algorithm>(store: &'a KeyedStore<A>, key: KeyHash) -> Self {
        Self {
            target: Target::Keyed(store, key),
            soft: None,
        }
    }

    /// Returns this limit with a soft threshold: an admitted request that leaves
    /// at least `soft` of it used is flagged in [`Admission::soft_warning`].
    #[must_use]
    pub fn with_soft(self, soft: SoftLimit) -> Self {
        Self {
            soft: Some(soft),
            ..self
        }
    }

    /// What the IETF `RateLimit-Policy` header advertises for this limit.
    #[must_use]
    pub fn info(&self) -> QuotaInfo {
        match self.target {
            Target::Gcra(_, quota) => <Gcra as Algorithm>::info(quota),
            Target::Window(_, quota) => <SlidingWindow as Algorithm>::info(quota),
            Target::Keyed(store, _) => store.info(),
        }
    }

    fn validate(&self, n: NonZeroU32) -> Result<(), InsufficientCapacity> {
        match self.target {
            Target::Gcra(_, quota) => <Gcra as Algorithm>::validate(quota, n),
            Target::Window(_, quota) => <SlidingWindow as Algorithm>::validate(quota, n),
            Target::Keyed(store, _) => store.validate(n),
        }
    }

    fn peek(&self, n: u32, now: u64) -> Decision {
        let step = match self.target {
            Target::Gcra(state, quota) => {
                <Gcra as Algorithm>::charge(u128::from(state.raw()), quota, n, now)
            }
            Target::Window(state, quota) => {
                <SlidingWindow as Algorithm>::charge(state.raw(), quota, n, now)
            }
            Target::Keyed(store, key) => return store.peek(key, n, now),
        };
        decision_of(step)
    }

    fn charge(&self, n: u32, now: u64) -> (Decision, Token) {
        match self.target {
            Target::Gcra(state, quota) => {
                let step = state.charge_step(quota, n, now);
                (decision_of(step), Token::Gcra(undo_of(step)))
            }
            Target::Window(state, quota) => {
                let step = state.charge_step(quota, n, now);
                (decision_of(step), Token::Window(undo_of(step)))
            }
            Target::Keyed(store, key) => {
                let (decision, undo) = store.charge_keyed(key, n, now);
                (decision, Token::Keyed(undo))
            }
        }
    }

    fn undo(&self, token: Token, now: u64) {
        match (self.target, token) {
            (Target::Gcra(state, _), Token::Gcra(Some(undo))) => state.undo_step(undo, now),
            (Target::Window(state, quota), Token::Window(Some(undo))) => {
                state.undo_step(quota, undo, now);
            }
            (Target::Keyed(store, _), Token::Keyed(undo)) => store.undo_keyed(undo, now),
            _ => {}
        }
    }
}

/// How to take back one charge.
#[derive(Debug, Clone, Copy)]
enum Token {
    Gcra(Option<Undo>),
    Window(Option<Undo>),
    Keyed(KeyedUndo),
}

fn decision_of(step: Step) -> Decision {
    match step {
        Step::Admit { decision, .. } | Step::Deny(decision) => decision,
    }
}

fn undo_of(step: Step) -> Option<Undo> {
    match step {
        Step::Admit { undo, .. } => Some(undo),
        Step::Deny(_) => None,
    }
}

/// Object-safe view of a [`KeyedStore`] of any algorithm.
trait KeyedTarget: Sync {
    fn info(&self) -> QuotaInfo;
    fn validate(&self, n: NonZeroU32) -> Result<(), InsufficientCapacity>;
    fn peek(&self, key: KeyHash, n: u32, now: u64) -> Decision;
    fn charge_keyed(&self, key: KeyHash, n: u32, now: u64) -> (Decision, KeyedUndo);
    fn undo_keyed(&self, undo: KeyedUndo, now: u64);
}

impl<A: Algorithm> KeyedTarget for KeyedStore<A> {
    fn info(&self) -> QuotaInfo {
        KeyedStore::info(self)
    }

    fn validate(&self, n: NonZeroU32) -> Result<(), InsufficientCapacity> {
        A::validate(self.quota(), n)
    }

    fn peek(&self, key: KeyHash, n: u32, now: u64) -> Decision {
        self.peek_step(key, n, now)
    }

    fn charge_keyed(&self, key: KeyHash, n: u32, now: u64) -> (Decision, KeyedUndo) {
        let (step, undo) = self.charge(key, n, now);
        (decision_of(step), undo)
    }

    fn undo_keyed(&self, undo: KeyedUndo, now: u64) {
        self.undo_charge(undo, now);
    }
}

/// The answer of [`check_all`]: the decision, and which limit the `RateLimit`
/// headers should describe.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Admitted: the binding limit's decision (its `remaining` is the smallest).
    /// Refused: the refusing limit's decision (the longest wait among them).
    pub decision: Decision,
    /// Index, in the slice given to [`check_all`], of the limit `decision` and
    /// `info` describe.
    pub binding: usize,
    /// What `RateLimit-Policy` advertises for the binding limit.
    pub info: QuotaInfo,
    /// Admitted requests only: the index of the first limit whose soft threshold
    /// this request reached, for a warning header and metric.
    pub soft_warning: Option<usize>,
}

impl Admission {
    /// Returns `true` if the request was admitted by every limit.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.decision.is_allowed()
    }
}

/// Checks a charge of `n` against every limit in `limits` at `now`: admitted only
/// if all admit; a refusal charges none (see the module documentation).
///
/// An empty slice admits everything (with `remaining` at `u32::MAX`).
///
/// # Errors
///
/// [`InsufficientCapacity`] if `n` exceeds some limit's burst: no wait helps.
pub fn check_all(
    limits: &[Limit<'_>],
    n: NonZeroU32,
    now: u64,
) -> Result<Admission, InsufficientCapacity> {
    check_all_charged(limits, n, now).map(|(admission, _)| admission)
}

/// [`check_all`], returning also what an admitted request was charged, for
/// [`Charges::refund`]. A refused request was charged nothing: its charges are
/// empty.
///
/// # Errors
///
/// [`InsufficientCapacity`] if `n` exceeds some limit's burst: no wait helps.
pub fn check_all_charged(
    limits: &[Limit<'_>],
    n: NonZeroU32,
    now: u64,
) -> Result<(Admission, Charges), InsufficientCapacity> {
    if let Some(refusal) = peek_all(limits, n, now)? {
        return Ok((refusal, Charges::default()));
    }
    Ok(charge_all(limits, n.get(), now))
}

/// Evaluates a charge of `n` against every limit without charging any: `None`
/// when all would admit it now, else the refusal [`check_all`] would give (the
/// longest wait). Another thread may still take the last unit before a charge.
///
/// # Errors
///
/// [`InsufficientCapacity`] if `n` exceeds some limit's burst: no wait helps.
pub fn peek_all(
    limits: &[Limit<'_>],
    n: NonZeroU32,
    now: u64,
) -> Result<Option<Admission>, InsufficientCapacity> {
    for limit in limits {
        limit.validate(n)?;
    }
    let n = n.get();
    let mut refusal: Option<(usize, Decision)> = None;
    for (index, limit) in limits.iter().enumerate() {
        let decision = limit.peek(n, now);
        if let Some(wait) = decision.retry_after() {
            let longer = refusal
                .and_then(|(_, current)| current.retry_after())
                .is_none_or(|current| wait > current);
            if longer {
                refusal = Some((index, decision));
            }
        }
    }
    Ok(refusal.map(|(index, decision)| refused(limits, index, decision)))
}

/// What [`check_all_charged`] charged an admitted request: one record per limit,
/// held inline for up to eight limits (no allocation), to give back with
/// [`Charges::refund`]. Dropping it keeps the charges.
#[must_use = "dropping the charges keeps them; give them back with `refund`"]
#[derive(Debug, Clone, Default)]
pub struct Charges {
    inline: [Option<Token>; 8],
    spilled: Vec<Token>,
    len: usize,
}

impl Charges {
    fn push(&mut self, token: Token) {
        match self.inline.get_mut(self.len) {
            Some(place) => *place = Some(token),
            None => self.spilled.push(token),
        }
        self.len += 1;
    }

    fn get(&self, index: usize) -> Option<Token> {
        match self.inline.get(index) {
            Some(token) => *token,
            None => self.spilled.get(index - self.inline.len()).copied(),
        }
    }

    /// The number of limits charged (0 for a refused request).
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was charged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives every charge back to `limits`, which must be the limits (the same
    /// states or keys, in the same order) the charges were made on. At the clock
    /// reading of the charge this returns exactly what was taken; later, only what
    /// has not drained meanwhile, so a refund never leaves a limit more generous
    /// than if the request had never come. A key evicted meanwhile has nothing to
    /// give back. Extra or missing limits are ignored.
    pub fn refund(self, limits: &[Limit<'_>], now: u64) {
        for (index, limit) in limits.iter().enumerate().take(self.len) {
            if let Some(token) = self.get(index) {
                limit.undo(token, now);
            }
        }
    }
}

/// Phase 2 of [`check_all`]: charges in order, taking the charges back if one
/// refuses after all.
fn charge_all(limits: &[Limit<'_>], n: u32, now: u64) -> (Admission, Charges) {
    let mut charges = Charges::default();
    let mut best: Option<(usize, Decision)> = None;
    let mut soft_warning = None;
    for (index, limit) in limits.iter().enumerate() {
        let (decision, token) = limit.charge(n, now);
        if !decision.is_allowed() {
            charges.refund(&limits[..index], now);
            return (refused(limits, index, decision), Charges::default());
        }
        charges.push(token);
        if soft_warning.is_none()
            && limit
                .soft
                .is_some_and(|soft| soft.is_reached(limit.info().limit, decision.remaining()))
        {
            soft_warning = Some(index);
        }
        let tighter = best.is_none_or(|(_, current)| decision.remaining() < current.remaining());
        if tighter {
            best = Some((index, decision));
        }
    }
    let admission = match best {
        Some((index, decision)) => Admission {
            decision,
            binding: index,
            info: limits[index].info(),
            soft_warning,
        },
        None => Admission {
            decision: Decision::Allowed {
                remaining: u32::MAX,
                reset_after: std::time::Duration::ZERO,
            },
            binding: 0,
            info: QuotaInfo {
                limit: u32::MAX,
                window: std::time::Duration::ZERO,
            },
            soft_warning: None,
        },
    };
    (admission, charges)
}

fn refused(limits: &[Limit<'_>], index: usize, decision: Decision) -> Admission {
    Admission {
        decision,
        binding: index,
        info: limits[index].info(),
        soft_warning: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn per_hour(n: u32) -> Quota {
        Quota::per_period(NonZeroU32::new(n).unwrap(), Duration::from_secs(3_600)).unwrap()
    }

    /// Without the evaluation phase every refusal by the second limit must take
    /// back the first limit's charge: under contention the loose limit still
    /// ends up charged for exactly the admitted requests.
    #[test]
    fn rollbacks_under_contention_are_exact() {
        let (loose_quota, tight_quota) = (per_hour(1_000), per_hour(100));
        let (loose, tight) = (Gcra::new(), Gcra::new());
        let window_quota =
            WindowQuota::new(NonZeroU32::new(500).unwrap(), Duration::from_secs(60)).unwrap();
        let window = SlidingWindow::new();
        let store = KeyedStore::<Gcra>::new(
            per_hour(700),
            crate::StoreConfig::new(std::num::NonZeroUsize::new(16).unwrap()),
        );
        let admitted = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        let limits = [
                            Limit::gcra(&loose, &loose_quota),
                            Limit::window(&window, &window_quota),
                            Limit::keyed(&store, KeyHash(9)),
                            Limit::gcra(&tight, &tight_quota),
                        ];
                        if charge_all(&limits, 1, 0).0.is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        assert_eq!(loose.check(&loose_quota, 0).remaining(), 899);
        assert_eq!(window.check(&window_quota, 0).remaining(), 399);
        assert_eq!(store.check(KeyHash(9), 0).remaining(), 599);
    }

    #[test]
    fn charges_given_back_leave_every_limit_as_it_was() {
        let quota = per_hour(10);
        let gcra = Gcra::new();
        let store = KeyedStore::<Gcra>::new(
            per_hour(10),
            crate::StoreConfig::new(std::num::NonZeroUsize::new(16).unwrap()),
        );
        // Nine limits: the ninth's charge is held outside the inline records.
        let states: Vec<Gcra> = (0..7).map(|_| Gcra::new()).collect();
        let mut limits = vec![Limit::gcra(&gcra, &quota), Limit::keyed(&store, KeyHash(3))];
        limits.extend(states.iter().map(|s| Limit::gcra(s, &quota)));
        let (admission, charges) = check_all_charged(&limits, NonZeroU32::MIN, 0).unwrap();
        assert!(admission.is_allowed());
        assert_eq!(charges.len(), 9);
        assert_ne!(gcra.raw(), 0);
        assert_eq!(store.peek_step(KeyHash(3), 1, 0).remaining(), 8);
        charges.refund(&limits, 0);
        assert_eq!(gcra.raw(), 0);
        assert!(states.iter().all(|s| s.raw() == 0));
        assert_eq!(store.peek_step(KeyHash(3), 1, 0).remaining(), 9);

        // A refusal charges nothing and has nothing to give back.
        let spent = Gcra::new();
        let one = per_hour(1);
        assert!(spent.check(&one, 0).is_allowed());
        let limits = [Limit::gcra(&gcra, &quota), Limit::gcra(&spent, &one)];
        assert!(peek_all(&limits, NonZeroU32::MIN, 0).unwrap().is_some());
        let (admission, charges) = check_all_charged(&limits, NonZeroU32::MIN, 0).unwrap();
        assert!(!admission.is_allowed());
        assert!(charges.is_empty());
        assert_eq!(gcra.raw(), 0);
    }

    #[test]
    fn a_late_rollback_returns_only_what_has_not_drained() {
        // 10 per second (T = 100 ms), burst 10.
        let quota =
            Quota::per_period(NonZeroU32::new(10).unwrap(), Duration::from_secs(1)).unwrap();
        let gcra = Gcra::new();
        let limit = Limit::gcra(&gcra, &quota);
        let (_, token) = limit.charge(5, 0);
        // 300 ms later, 3 of the 5 have drained: undoing returns the other 2.
        limit.undo(token, 300_000_000);
        assert_eq!(gcra.raw(), 300_000_000);
    }
}
