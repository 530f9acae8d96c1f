//! A bounded, sharded store of per-key limiter state: lock-free for keys it
//! already holds, with idle eviction, so memory stays fixed however many distinct
//! keys arrive.
//!
//! # Layout
//!
//! One allocation, made up front: `1.25 × max_keys` slots (rounded up to whole
//! sets) of 16 bytes, grouped in 8-way sets of 128 bytes, plus one lock byte per
//! set. A
//! slot is a single 128-bit atomic holding a 32-bit tag of the key's hash and the
//! algorithm's 96-bit state, so a charge is one compare-and-exchange that also
//! proves the slot still belongs to the key: a slot evicted and reused for another
//! key can never be charged by mistake. Nothing is allocated after construction,
//! so the store's memory is `memory_bytes()` whatever the traffic: about 20 bytes
//! per key of `max_keys`.
//!
//! # Finding a key
//!
//! A key may live in one of two sets chosen by its hash ("two-choice hashing",
//! which spreads keys evenly enough that a set rarely fills before the store
//! does: with the quarter of spare slots, offering `max_keys` distinct active
//! keys to an empty store, 99.97% of them find an empty slot, the first that
//! must take an active key's place coming after 87–95% of them).
//! Looking up a key that is present reads at most 16 slots and takes no
//! lock. Only a key that is absent takes the locks of its two sets (one byte
//! each, in index order) to insert itself, so two threads can never insert the
//! same key twice.
//!
//! # When the store is full
//!
//! A new key takes an empty slot while fewer than `max_keys` keys are tracked;
//! otherwise it takes the slot of the key of least debt among the 16 of its two
//! sets ([`Algorithm::debt`]: what forgetting the key would give back to it). An
//! idle key (one whose limiter is fully replenished) has none, so forgetting it
//! changes no decision. When every candidate is active, the one closest to
//! replenished goes: for GCRA the least recently admitted relative to its rate, so
//! a caller that has spent its burst keeps its place over one that made a single
//! request. A new key is therefore never refused because the store is full: an
//! attacker rotating through millions of keys costs a fixed amount of memory and
//! at worst makes the store forget some active keys early (each then starts from
//! a full burst again; counted in [`StoreStats::evicted_active`], the signal to
//! raise `max_keys`). Pool-wide limits are what bound a caller who rotates keys.
//! Only in the vanishingly rare case that both of a new key's sets are empty while
//! `max_keys` keys are tracked elsewhere is its request admitted untracked
//! ([`StoreStats::untracked`]).
//!
//! [`KeyedStore::sweep`] evicts every idle key; calling it from time to time is
//! optional (eviction happens on demand anyway) but keeps `len()` meaningful.

use std::fmt;
use std::hint;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as StdOrdering};
use std::thread;
use std::time::Duration;

use portable_atomic::{AtomicU128, Ordering};

use crate::algorithm::sealed::{Step, Undo};
use crate::algorithm::{Algorithm, STATE_MASK};
use crate::decision::{Decision, InsufficientCapacity, QuotaInfo};
use crate::key::KeyHash;

mod config;

pub use self::config::{StoreConfig, StoreStats};

/// Slots per set.
pub const WAYS: usize = 8;

const TAG_SHIFT: u32 = 96;

#[repr(align(128))]
struct Set {
    slots: [AtomicU128; WAYS],
}

/// Per-key limiter state for one quota, bounded in memory (see the module
/// documentation).
pub struct KeyedStore<A: Algorithm> {
    quota: A::Quota,
    sets: Box<[Set]>,
    locks: Box<[AtomicBool]>,
    len: AtomicUsize,
    max_keys: usize,
    inserted: AtomicU64,
    evicted: AtomicU64,
    evicted_active: AtomicU64,
    untracked: AtomicU64,
}

impl<A: Algorithm> fmt::Debug for KeyedStore<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStore")
            .field("quota", &self.quota)
            .field("capacity", &self.capacity())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The result of a closure applied to a key's state.
pub(crate) enum Update<R> {
    /// Store the new 96-bit state and return `R`.
    Write(u128, R),
    /// Leave the state alone and return `R`.
    Keep(R),
}

/// Where a key's update went.
pub(crate) enum Applied<R> {
    /// The closure ran on the key's state (or a fresh one for a new key).
    Done(R),
    /// The key is absent and was not to be inserted.
    Absent,
    /// The key is absent and could not be inserted: `max_keys` keys are
    /// tracked and both of its sets are empty.
    Full,
}

/// One admitted charge on a keyed store, for [`KeyedStore::undo_charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyedUndo {
    pub(crate) key: KeyHash,
    /// `None` when the request was admitted untracked.
    pub(crate) undo: Option<Undo>,
}

struct SetGuard<'a>(&'a AtomicBool);

impl Drop for SetGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, StdOrdering::Release);
    }
}

fn lock(flag: &AtomicBool) -> SetGuard<'_> {
    let mut spins = 0_u32;
    loop {
        if !flag.swap(true, StdOrdering::Acquire) {
            return SetGuard(flag);
        }
        while flag.load(StdOrdering::Relaxed) {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                thread::yield_now();
            } else {
                hint::spin_loop();
            }
        }
    }
}

fn tag_of(slot: u128) -> u32 {
    // Shifted down from the top 32 bits, so the conversion cannot fail.
    u32::try_from(slot >> TAG_SHIFT).unwrap_or(0)
}

fn tagged(tag: u32, state: u128) -> u128 {
    u128::from(tag) << TAG_SHIFT | (state & STATE_MASK)
}

impl<A: Algorithm> KeyedStore<A> {
    /// Creates an empty store for `quota` that tracks at most
    /// `config.max_keys` keys, allocating all its memory now.
    #[must_use]
    pub fn new(quota: A::Quota, config: StoreConfig) -> Self {
        let max_keys = config.max_keys.get();
        // A quarter more slots than keys, so that a new key almost never finds
        // both of its sets full while the store as a whole still has room.
        let slots = max_keys.saturating_add(max_keys / 4);
        let set_count = slots.div_ceil(WAYS).max(1);
        Self {
            quota,
            sets: (0..set_count)
                .map(|_| Set {
                    slots: std::array::from_fn(|_| AtomicU128::new(0)),
                })
                .collect(),
            locks: (0..set_count).map(|_| AtomicBool::new(false)).collect(),
            len: AtomicUsize::new(0),
            max_keys,
            inserted: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicted_active: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    /// Returns the quota every key is checked against.
    #[must_use]
    pub fn quota(&self) -> &A::Quota {
        &self.quota
    }

    /// What the IETF `RateLimit-Policy` header advertises for this store's quota.
    #[must_use]
    pub fn info(&self) -> QuotaInfo {
        A::info(&self.quota)
    }

    /// Charges one request for `key` at `now`.
    pub fn check(&self, key: KeyHash, now: u64) -> Decision {
        match self.charge(key, 1, now).0 {
            Step::Admit { decision, .. } | Step::Deny(decision) => decision,
        }
    }

    /// Charges `n` requests at once for `key` at `now`; a refusal charges none.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] if `n` exceeds the quota's burst or limit.
    pub fn check_n(
        &self,
        key: KeyHash,
        n: NonZeroU32,
        now: u64,
    ) -> Result<Decision, InsufficientCapacity> {
        A::validate(&self.quota, n)?;
        Ok(match self.charge(key, n.get(), now).0 {
            Step::Admit { decision, .. } | Step::Deny(decision) => decision,
        })
    }

    /// Returns `true` if `key` is tracked.
    #[must_use]
    pub fn contains(&self, key: KeyHash) -> bool {
        let (a, b, tag) = self.locate(key);
        self.find(a, b, tag).is_some()
    }

    /// Returns the number of keys tracked now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(StdOrdering::Relaxed)
    }

    /// Returns `true` if no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the most keys tracked at once, as configured.
    #[must_use]
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Returns the number of slots (a quarter more than `max_keys`, rounded up
    /// to whole sets); at most `max_keys` of them are ever in use.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Returns the bytes this store occupies: fixed at construction.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val::<[Set]>(&self.sets)
            + std::mem::size_of_val::<[AtomicBool]>(&self.locks)
    }

    /// Returns the store's counters.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.len(),
            inserted: self.inserted.load(StdOrdering::Relaxed),
            evicted: self.evicted.load(StdOrdering::Relaxed),
            evicted_active: self.evicted_active.load(StdOrdering::Relaxed),
            untracked: self.untracked.load(StdOrdering::Relaxed),
        }
    }

    /// Evicts every key that is idle at `now`; returns how many. Walks the whole
    /// store (taking each set's lock in turn), so call it from a background task,
    /// never per request.
    pub fn sweep(&self, now: u64) -> usize {
        let mut evicted = 0;
        for (set, flag) in self.sets.iter().zip(self.locks.iter()) {
            let _guard = lock(flag);
            for slot in &set.slots {
                let value = slot.load(Ordering::Acquire);
                if tag_of(value) != 0
                    && A::is_idle(value & STATE_MASK, &self.quota, now)
                    && slot
                        .compare_exchange(value, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    evicted += 1;
                }
            }
        }
        self.len.fetch_sub(evicted, StdOrdering::Relaxed);
        self.evicted.fetch_add(
            u64::try_from(evicted).unwrap_or(u64::MAX),
            StdOrdering::Relaxed,
        );
        evicted
    }

    /// Charges `n` (already validated) for `key`, inserting it if needed (a key
    /// that cannot be tracked is admitted untracked). The second value is
    /// what [`undo_charge`](Self::undo_charge) needs.
    pub(crate) fn charge(&self, key: KeyHash, n: u32, now: u64) -> (Step, KeyedUndo) {
        let applied = self.update(key, now, true, |state| {
            let step = A::charge(state, &self.quota, n, now);
            match step {
                Step::Admit { state, .. } => Update::Write(state, step),
                Step::Deny(_) => Update::Keep(step),
            }
        });
        match applied {
            Applied::Done(step) => {
                let undo = match step {
                    Step::Admit { undo, .. } => Some(undo),
                    Step::Deny(_) => None,
                };
                (step, KeyedUndo { key, undo })
            }
            Applied::Absent | Applied::Full => (self.untracked(n), KeyedUndo { key, undo: None }),
        }
    }

    /// What charging `n` for `key` would decide at `now`, without charging.
    pub(crate) fn peek_step(&self, key: KeyHash, n: u32, now: u64) -> Decision {
        let applied = self.update(key, now, false, |state| {
            Update::Keep(A::charge(state, &self.quota, n, now))
        });
        match applied {
            Applied::Done(Step::Admit { decision, .. } | Step::Deny(decision)) => decision,
            Applied::Absent | Applied::Full => match A::charge(0, &self.quota, n, now) {
                Step::Admit { decision, .. } | Step::Deny(decision) => decision,
            },
        }
    }

    /// Takes back a charge made by [`charge`](Self::charge), if the key is still
    /// tracked.
    pub(crate) fn undo_charge(&self, undo: KeyedUndo, now: u64) {
        let Some(record) = undo.undo else {
            return;
        };
        let _ = self.update(undo.key, now, false, |state| {
            Update::Write(A::undo(state, &self.quota, record, now), ())
        });
    }

    fn untracked(&self, n: u32) -> Step {
        self.untracked.fetch_add(1, StdOrdering::Relaxed);
        let info = A::info(&self.quota);
        Step::Admit {
            state: 0,
            decision: Decision::Allowed {
                remaining: info.limit.saturating_sub(n),
                reset_after: Duration::ZERO,
            },
            undo: Undo::default(),
        }
    }

    /// Applies `f` to `key`'s 96-bit state atomically (a fresh key starts from
    /// zero). `f` may run several times if other threads race on the key.
    pub(crate) fn update<R>(
        &self,
        key: KeyHash,
        now: u64,
        insert: bool,
        mut f: impl FnMut(u128) -> Update<R>,
    ) -> Applied<R> {
        let (a, b, tag) = self.locate(key);
        'lookup: loop {
            let Some((set, way, mut value)) = self.find(a, b, tag) else {
                if !insert {
                    return Applied::Absent;
                }
                return self.insert(a, b, tag, now, &mut f);
            };
            let slot = &self.sets[set].slots[way];
            loop {
                match f(value & STATE_MASK) {
                    Update::Keep(result) => return Applied::Done(result),
                    Update::Write(state, result) => match slot.compare_exchange_weak(
                        value,
                        tagged(tag, state),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Applied::Done(result),
                        Err(actual) if tag_of(actual) == tag => value = actual,
                        // Evicted and reused meanwhile: look the key up again.
                        Err(_) => continue 'lookup,
                    },
                }
            }
        }
    }

    /// The slow path for an absent key, under both of its sets' locks.
    fn insert<R>(
        &self,
        a: usize,
        b: usize,
        tag: u32,
        now: u64,
        f: &mut impl FnMut(u128) -> Update<R>,
    ) -> Applied<R> {
        let (first, second) = (a.min(b), a.max(b));
        let _first = lock(&self.locks[first]);
        let _second = (second != first).then(|| lock(&self.locks[second]));
        loop {
            // Another thread may have inserted the key before we got the locks;
            // lock-free charges may still race on it, so go through the CAS.
            if let Some((set, way, value)) = self.find(a, b, tag) {
                let slot = &self.sets[set].slots[way];
                match f(value & STATE_MASK) {
                    Update::Keep(result) => return Applied::Done(result),
                    Update::Write(state, result) => {
                        if slot
                            .compare_exchange(
                                value,
                                tagged(tag, state),
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            return Applied::Done(result);
                        }
                        continue;
                    }
                }
            }
            let Some((set, way, old)) = self.vacancy(a, b, now) else {
                return Applied::Full;
            };
            let (state, result) = match f(0) {
                Update::Keep(result) => return Applied::Done(result),
                Update::Write(state, result) => (state, result),
            };
            if old == 0 && !self.reserve_key() {
                // Only reachable when a concurrent insert elsewhere took the last
                // key: look again for an idle slot instead.
                continue;
            }
            let slot = &self.sets[set].slots[way];
            if slot
                .compare_exchange(old, tagged(tag, state), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.inserted.fetch_add(1, StdOrdering::Relaxed);
                if old != 0 {
                    if A::is_idle(old & STATE_MASK, &self.quota, now) {
                        &self.evicted
                    } else {
                        &self.evicted_active
                    }
                    .fetch_add(1, StdOrdering::Relaxed);
                }
                return Applied::Done(result);
            }
            // The key to evict was charged just before we could evict it: look
            // again (its debt has changed).
            if old == 0 {
                self.len.fetch_sub(1, StdOrdering::Relaxed);
            }
        }
    }

    /// Reserves room for one more key, failing at `max_keys`.
    fn reserve_key(&self) -> bool {
        self.len
            .fetch_update(StdOrdering::Relaxed, StdOrdering::Relaxed, |len| {
                (len < self.max_keys).then_some(len + 1)
            })
            .is_ok()
    }

    /// A slot for a new key in sets `a` or `b`: an empty one while fewer than
    /// `max_keys` keys are tracked, else the one of the key of least debt.
    /// Called under both locks.
    fn vacancy(&self, a: usize, b: usize, now: u64) -> Option<(usize, usize, u128)> {
        let sets = if a == b { [a, a] } else { [a, b] };
        if self.len() < self.max_keys {
            // Two-choice hashing: the emptier of the two sets.
            let free = |set: usize| {
                let slots = &self.sets[set].slots;
                let first = slots
                    .iter()
                    .position(|slot| slot.load(Ordering::Acquire) == 0);
                let count = slots
                    .iter()
                    .filter(|slot| slot.load(Ordering::Acquire) == 0)
                    .count();
                first.map(|way| (count, set, way))
            };
            let best = match (free(sets[0]), free(sets[1])) {
                (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
                (x, y) => x.or(y),
            };
            if let Some((_, set, way)) = best {
                return Some((set, way, 0));
            }
        }
        sets.iter()
            .flat_map(|&set| {
                self.sets[set]
                    .slots
                    .iter()
                    .enumerate()
                    .map(move |(way, slot)| (set, way, slot.load(Ordering::Acquire)))
            })
            .filter(|&(_, _, value)| value != 0)
            .min_by_key(|&(_, _, value)| A::debt(value & STATE_MASK, &self.quota, now))
    }

    fn find(&self, a: usize, b: usize, tag: u32) -> Option<(usize, usize, u128)> {
        let scan = |set: usize| {
            self.sets[set]
                .slots
                .iter()
                .enumerate()
                .find_map(|(way, slot)| {
                    let value = slot.load(Ordering::Acquire);
                    (tag_of(value) == tag).then_some((set, way, value))
                })
        };
        scan(a).or_else(|| if b == a { None } else { scan(b) })
    }

    /// The key's two candidate sets and its non-zero tag.
    fn locate(&self, key: KeyHash) -> (usize, usize, u32) {
        // Remix first, so keys that are not uniformly random (small integers,
        // a weak hash upstream) still spread over every set.
        let hash = mix(key.0);
        let sets = self.sets.len() as u64;
        // Multiply-shift maps 32 random bits onto `0..sets` without a division.
        let a = ((hash & 0xffff_ffff) * sets) >> 32;
        let b = ((hash >> 32) * sets) >> 32;
        // The tag comes from a second, independent remix of all 64 bits.
        let tag = u32::try_from(mix(key.0 ^ 0x9e37_79b9_7f4a_7c15) >> 32)
            .unwrap_or(1)
            .max(1);
        // Both are below `sets`, a `usize`, so the conversions cannot fail.
        (
            usize::try_from(a).unwrap_or(0),
            usize::try_from(b).unwrap_or(0),
            tag,
        )
    }
}

/// The SplitMix64 finalizer: a bijection that spreads every input bit over the
/// whole word.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
