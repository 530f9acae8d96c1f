//! Checking a request against every limit of its pool at once, in an order that lets
//! a refusal charge nothing, and where it cannot, gives back what was charged:
//!
//! 1. local token budgets are reserved: a reservation is given back by dropping it;
//! 2. local request limits are evaluated without charging: a local refusal spends no
//!    global token;
//! 3. global request limits spend their tokens (through Redis leases); a refusal by
//!    one gives back those spent before it;
//! 4. global token budgets reserve in Redis; a refusal gives the global request
//!    tokens back;
//! 5. local request limits are charged together (admitted only if all admit); one
//!    that refuses after all (another request took the last unit since step 2)
//!    gives back the global tokens and every reservation.
//!
//! What an admitted request was charged travels with it ([`Charged`]), so that a
//! request that moves to another pool gives it back.

use std::num::NonZeroU32;
use std::sync::Arc;

use sluice_ratelimit::{
    BudgetDecision, GlobalDecision, GlobalKey, KeyHash, Limit, Reserve, check_all_charged, peek_all,
};

use super::refund::Charged;
use super::report::{Owner, Report, limited};
use super::tokens::{TokenCounters, TokenSettlement};
use super::{Counter, Needs, PolicyRt, Subject, TableLimits, TierRt, Verdict};
use crate::clock::SharedClock;

/// One policy of the pool as it applies to the request: its tier and key.
struct Keyed<'a> {
    policy: &'a PolicyRt,
    tier_name: &'a str,
    tier: &'a TierRt,
    key: KeyHash,
    key_bytes: Vec<u8>,
}

impl<'a> Keyed<'a> {
    fn owner(&self, q: u32, w_ms: u64) -> Owner<'a> {
        Owner {
            policy: self.policy,
            tier: self.tier_name,
            q,
            w_ms,
        }
    }

    /// The key of one of its limits in Redis: named by the limit, so that replicas
    /// on different configurations never share a state.
    fn global_key(&self, kind: &str, q: u32, w_ms: u64) -> GlobalKey {
        GlobalKey::new(
            &format!(
                "{}/{}/{kind}{q}per{w_ms}ms",
                self.policy.key, self.tier_name
            ),
            &[&self.key_bytes],
        )
    }
}

impl TableLimits {
    /// Whether `pool_index` has limits, and of what kind.
    pub fn needs(&self, pool_index: usize) -> Option<Needs> {
        let policies = self.by_pool.get(pool_index)?;
        if policies.is_empty() {
            return None;
        }
        let tokens = policies.iter().any(|&p| {
            self.policies[p]
                .tiers
                .values()
                .any(|t| !t.tokens.is_empty())
        });
        Some(Needs { tokens })
    }

    /// Checks a request against every limit of its pool (see the module docs for the
    /// order); `max_tokens` is what the request body asks for, when known. Dry-run
    /// policies are checked once the others admit the request, each on its own: one
    /// that would refuse is reported, and charges nothing.
    pub async fn check(&self, subject: &Subject<'_>, max_tokens: Option<u32>) -> Verdict {
        let policies = self
            .by_pool
            .get(subject.pool_index)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if policies.is_empty() {
            return Verdict::admitted();
        }
        let now = self.context.clock.now_nanos();
        let (enforced, dry_run): (Vec<Keyed<'_>>, Vec<Keyed<'_>>) = policies
            .iter()
            .map(|&p| self.keyed(&self.policies[p], subject))
            .partition(|k| !k.policy.dry_run);
        let mut admitted = match self.admit(&enforced, max_tokens, now, Mode::Enforce).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        for k in &dry_run {
            match self
                .admit(std::slice::from_ref(k), max_tokens, now, Mode::DryRun)
                .await
            {
                Ok(passed) => admitted.join(passed),
                Err(refusal) => admitted.report.dry_run(&refusal),
            }
        }
        let Admitted {
            mut tokens,
            charged,
            report,
        } = admitted;
        if let Some(soft) = report.soft_reached() {
            self.context
                .metrics
                .count_rate(&soft.policy.key, soft.tier, "soft_warning");
        }
        tokens.admit();
        Verdict::Admitted {
            headers: report.headers(),
            tokens,
            charged,
            dry_run: report.dry_run_refusal(),
            binding: report.binding(),
        }
    }

    /// Checks `keyed` in the order of the module docs: what they charged, or the
    /// refusal (having charged nothing).
    async fn admit<'a>(
        &self,
        keyed: &[Keyed<'a>],
        max_tokens: Option<u32>,
        now: u64,
        mode: Mode,
    ) -> Result<Admitted<'a>, Verdict> {
        // A global limit that fails closed on a proxy without Redis refuses before
        // anything is charged.
        for k in keyed {
            let no_store = |c: &Counter| matches!(c, Counter::NoStore);
            if k.tier.requests.iter().any(|l| no_store(&l.counter))
                || k.tier.tokens.iter().any(|l| no_store(&l.counter))
            {
                return Err(self.unavailable(k, std::time::Duration::from_secs(1), mode));
            }
        }
        let mut report = Report::default();

        // 1. Local token budgets.
        let mut tokens = TokenSettlement::on(self.context.clock.clone());
        for k in keyed {
            for budget in &k.tier.tokens {
                let Counter::Tokens(store) = &budget.counter else {
                    continue;
                };
                let want = want(k, budget.tokens, max_tokens);
                let owner = k.owner(budget.tokens, budget.window_ms);
                match store.reserve(k.key, want, now) {
                    Ok(Reserve::Granted {
                        reservation,
                        decision,
                    }) => {
                        tokens.hold(store.clone(), reservation, self.counters(k));
                        report.tokens(owner, decision);
                    }
                    Ok(Reserve::Refused(decision)) => {
                        return Err(self.refuse(k, owner, decision, mode));
                    }
                    Err(_) => {}
                }
            }
        }

        // 2. Local request limits, evaluated without charging.
        let mut limits = Vec::new();
        let mut owners = Vec::new();
        for k in keyed {
            for limit in &k.tier.requests {
                let l = match &limit.counter {
                    Counter::Gcra(store) => Limit::keyed(store.as_ref(), k.key),
                    Counter::Window(store) => Limit::keyed(store.as_ref(), k.key),
                    _ => continue,
                };
                limits.push(match k.policy.soft {
                    Some(s) => l.with_soft(s),
                    None => l,
                });
                owners.push((k, k.owner(limit.requests, limit.window_ms)));
            }
        }
        // One request never exceeds a burst (at least 1): `Err` cannot happen.
        if let Ok(Some(refusal)) = peek_all(&limits, NonZeroU32::MIN, now) {
            let (k, owner) = owners[refusal.binding];
            return Err(self.refuse(k, owner, refusal.decision, mode));
        }

        // 3. Global request limits.
        let mut charged = Charged::on(self.context.clock.clone());
        for k in keyed {
            for limit in &k.tier.requests {
                let Counter::Global(global) = &limit.counter else {
                    continue;
                };
                let owner = k.owner(limit.requests, limit.window_ms);
                let gkey = k.global_key("", limit.requests, limit.window_ms);
                match global.check(&gkey, NonZeroU32::MIN).await {
                    Ok(GlobalDecision::Decided {
                        decision, charge, ..
                    }) => {
                        if !decision.is_allowed() {
                            charged.refund();
                            return Err(self.refuse(k, owner, decision, mode));
                        }
                        charged.global(Arc::clone(global), gkey, charge);
                        report.request(owner, decision);
                    }
                    Ok(GlobalDecision::Unavailable { retry_after, .. }) => {
                        charged.refund();
                        return Err(self.unavailable(k, retry_after, mode));
                    }
                    Err(_) => {}
                }
            }
        }

        // 4. Global token budgets.
        for k in keyed {
            for budget in &k.tier.tokens {
                let Counter::GlobalTokens(global) = &budget.counter else {
                    continue;
                };
                let want = want(k, budget.tokens, max_tokens);
                let owner = k.owner(budget.tokens, budget.window_ms);
                let gkey = k.global_key("t", budget.tokens, budget.window_ms);
                match global.reserve(&gkey, want).await {
                    Ok(BudgetDecision::Granted {
                        reservation,
                        decision,
                    }) => {
                        let counters = self.counters(k);
                        tokens.hold_global(Arc::clone(global), gkey, reservation, counters);
                        report.tokens(owner, decision);
                    }
                    Ok(BudgetDecision::Refused(decision)) => {
                        charged.refund();
                        return Err(self.refuse(k, owner, decision, mode));
                    }
                    Ok(BudgetDecision::Unavailable { retry_after, .. }) => {
                        charged.refund();
                        return Err(self.unavailable(k, retry_after, mode));
                    }
                    Err(_) => {}
                }
            }
        }

        // 5. Local request limits, charged.
        if !limits.is_empty()
            && let Ok((admission, charges)) = check_all_charged(&limits, NonZeroU32::MIN, now)
        {
            let (k, owner) = owners[admission.binding];
            if !admission.is_allowed() {
                charged.refund();
                return Err(self.refuse(k, owner, admission.decision, mode));
            }
            charged.local(local_counters(keyed), charges);
            if let Some(i) = admission.soft_warning {
                report.soft(owners[i].1);
            }
            report.request(owner, admission.decision);
        }

        for k in keyed {
            self.count(k, "allowed");
        }
        Ok(Admitted {
            tokens,
            charged,
            report,
        })
    }

    /// The tier and key of `policy` for `subject`.
    fn keyed<'a>(&self, policy: &'a PolicyRt, subject: &Subject<'_>) -> Keyed<'a> {
        let (tier_name, tier) = policy.tier_for(subject.consumer.map(|(_, t)| t));
        let key_bytes = policy.key_bytes(subject);
        let key =
            self.context
                .hasher
                .hash(&[policy.key.as_bytes(), tier_name.as_bytes(), &key_bytes]);
        Keyed {
            policy,
            tier_name,
            tier,
            key,
            key_bytes,
        }
    }

    fn count(&self, k: &Keyed<'_>, result: &'static str) {
        self.context
            .metrics
            .count_rate(&k.policy.key, k.tier_name, result);
    }

    fn counters(&self, k: &Keyed<'_>) -> TokenCounters {
        TokenCounters::new(&self.context.metrics, &k.policy.key, k.tier_name)
    }

    /// A 429 from `owner`'s limit of policy `k` (counted as the refusal of a dry
    /// run in that mode).
    fn refuse(
        &self,
        k: &Keyed<'_>,
        owner: Owner<'_>,
        decision: sluice_ratelimit::Decision,
        mode: Mode,
    ) -> Verdict {
        self.count(k, mode.result("denied", "dry_run_denied"));
        limited(owner, decision)
    }

    /// A 503: the global store of policy `k` could not decide and it fails closed.
    fn unavailable(&self, k: &Keyed<'_>, retry_after: std::time::Duration, mode: Mode) -> Verdict {
        self.count(k, mode.result("unavailable", "dry_run_unavailable"));
        Verdict::Unavailable {
            policy: k.policy.key.clone(),
            retry_after: sluice_ratelimit::retry_after_secs(retry_after).max(1),
        }
    }
}

/// Whether a check refuses or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enforce,
    DryRun,
}

impl Mode {
    fn result(self, enforced: &'static str, dry_run: &'static str) -> &'static str {
        match self {
            Mode::Enforce => enforced,
            Mode::DryRun => dry_run,
        }
    }
}

/// What the limits of some policies gave an admitted request.
struct Admitted<'a> {
    tokens: TokenSettlement,
    charged: Charged,
    report: Report<'a>,
}

impl<'a> Admitted<'a> {
    /// Adds what a dry-run policy charged: its reservations settle and its charges
    /// go back with the rest. It adds to the headers only its soft-limit warning (a
    /// refusal it would have made is reported apart), never its `RateLimit` values.
    fn join(&mut self, other: Admitted<'a>) {
        self.tokens.join(other.tokens);
        self.charged.join(other.charged);
        if let Some(soft) = other.report.soft_reached() {
            self.report.soft(soft);
        }
    }
}

/// The tokens a request reserves of a budget of `tokens`: its `max_tokens`, or the
/// policy's estimate, never more than the whole budget.
fn want(k: &Keyed<'_>, tokens: u32, max_tokens: Option<u32>) -> NonZeroU32 {
    let want = max_tokens
        .unwrap_or(k.policy.token_estimate)
        .clamp(1, tokens);
    NonZeroU32::new(want).unwrap_or(NonZeroU32::MIN)
}

/// The local request limits' counters and keys, in the order the limits were
/// checked in (to give their charges back).
fn local_counters(keyed: &[Keyed<'_>]) -> Vec<(Counter, KeyHash)> {
    keyed
        .iter()
        .flat_map(|k| {
            k.tier
                .requests
                .iter()
                .filter(|l| matches!(l.counter, Counter::Gcra(_) | Counter::Window(_)))
                .map(|l| (l.counter.clone(), k.key))
        })
        .collect()
}

impl Verdict {
    fn admitted() -> Self {
        Verdict::Admitted {
            headers: Vec::new(),
            tokens: TokenSettlement::default(),
            charged: Charged::default(),
            dry_run: None,
            binding: None,
        }
    }
}

impl Charged {
    fn on(clock: SharedClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }

    fn global(
        &mut self,
        limiter: Arc<sluice_ratelimit::GlobalLimiter<SharedClock>>,
        key: GlobalKey,
        charge: sluice_ratelimit::GlobalCharge,
    ) {
        if !charge.is_none() {
            self.global.push((limiter, key, charge));
        }
    }
}
