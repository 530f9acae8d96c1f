//! LLM token budgets after admission: the reservations a request holds, and their
//! settlement with the usage the agent reports (in a JSON body or the last
//! server-sent event that carries one). A reservation in a global budget settles in
//! Redis, in a task of its own: off the response's path.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sluice_ratelimit::{
    GlobalBudget, GlobalKey, GlobalReservation, KeyedStore, Reservation, TokenBudget,
};

use super::MAX_BUFFERED_BODY;
use crate::body::{BodyEnd, BodyWatch};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// The token counters of one policy and tier.
#[derive(Debug, Clone)]
pub(super) struct TokenCounters {
    reserved: prometheus::IntCounter,
    refunded: prometheus::IntCounter,
    charged: prometheus::IntCounter,
}

impl TokenCounters {
    pub(super) fn new(metrics: &Metrics, policy: &str, tier: &str) -> Self {
        let c = |kind| metrics.rate_tokens.with_label_values(&[policy, tier, kind]);
        Self {
            reserved: c("reserved"),
            refunded: c("refunded"),
            charged: c("charged"),
        }
    }
}

/// Token reservations of one request, settled with the usage the agent reports.
/// Reservations neither settled nor kept (see [`UsageWatch`]) are given back when it is
/// dropped: a request refused or failed before an agent answered costs no tokens.
/// Counted in `sluice_ratelimit_tokens_total` once the request is admitted
/// ([`TokenSettlement::admit`]): a reservation given back because another limit
/// refused the request is not counted at all.
#[derive(Debug, Default)]
pub struct TokenSettlement {
    held: Vec<(Held, TokenCounters)>,
    /// The clock the reservations were made on: settling must read the same one.
    clock: Option<SharedClock>,
    /// The request was admitted: reservations and settlements are counted.
    admitted: bool,
}

impl TokenSettlement {
    /// No reservations yet; those added will settle on `clock`.
    pub(super) fn on(clock: SharedClock) -> Self {
        Self {
            held: Vec::new(),
            clock: Some(clock),
            admitted: false,
        }
    }

    /// Holds `reservation` of the local budget `store`.
    pub(super) fn hold(
        &mut self,
        store: Arc<KeyedStore<TokenBudget>>,
        reservation: Reservation,
        counters: TokenCounters,
    ) {
        self.held.push((Held::Local(store, reservation), counters));
    }

    /// Holds `reservation` of `key` in the global budget `budget`.
    pub(super) fn hold_global(
        &mut self,
        budget: Arc<GlobalBudget<SharedClock>>,
        key: GlobalKey,
        reservation: GlobalReservation,
        counters: TokenCounters,
    ) {
        self.held
            .push((Held::Global(budget, key, reservation), counters));
    }

    /// Adds the reservations of another check of the same request (a dry-run
    /// policy's).
    pub(super) fn join(&mut self, mut other: TokenSettlement) {
        self.held.append(&mut other.held);
        if self.clock.is_none() {
            self.clock = other.clock.take();
        }
    }

    /// Every other limit admitted the request: its reservations count from now.
    pub(super) fn admit(&mut self) {
        self.admitted = true;
        for (held, counters) in &self.held {
            counters.reserved.inc_by(u64::from(held.tokens()));
        }
    }

    /// Whether there is anything to settle.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The tokens reserved for the request: the largest of its reservations (each
    /// budget reserves its own estimate, capped by its size).
    pub fn reserved(&self) -> u64 {
        self.held
            .iter()
            .map(|(held, _)| u64::from(held.tokens()))
            .max()
            .unwrap_or(0)
    }

    /// Settles every reservation with `actual` tokens used.
    pub fn settle(&mut self, actual: u64) {
        self.settle_all(actual);
    }

    fn settle_all(&mut self, actual: u64) {
        let now = self.clock.as_ref().map_or(0, |c| c.now_nanos());
        let admitted = self.admitted;
        let count = move |counters: &TokenCounters, s: sluice_ratelimit::Settlement| {
            if admitted {
                counters.refunded.inc_by(s.refunded);
                counters.charged.inc_by(s.charged);
            }
        };
        for (held, counters) in self.held.drain(..) {
            match held {
                Held::Local(store, reservation) => {
                    count(&counters, store.settle(reservation, actual, now));
                }
                Held::Global(budget, key, reservation) => {
                    // Without a runtime (the proxy is shutting down) the settlement
                    // is lost: the reservation stays charged.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            count(&counters, budget.settle(&key, reservation, actual).await);
                        });
                    }
                }
            }
        }
    }
}

/// One reservation: in a local budget, or in a global one (in Redis).
#[derive(Debug)]
enum Held {
    Local(Arc<KeyedStore<TokenBudget>>, Reservation),
    Global(Arc<GlobalBudget<SharedClock>>, GlobalKey, GlobalReservation),
}

impl Held {
    fn tokens(&self) -> u32 {
        match self {
            Held::Local(_, r) => r.tokens(),
            Held::Global(_, _, r) => r.tokens(),
        }
    }
}

/// A request's LLM tokens as the access log and `sluice_llm_tokens_total` see them:
/// what its budgets reserved once an agent took it, and what the agent reported using.
#[derive(Debug, Default)]
pub struct TokenStats {
    counts: Mutex<TokenCounts>,
}

/// The tokens of one request; `None` where nothing is known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounts {
    /// Reserved at admission, for the request an agent took.
    pub reserved: Option<u64>,
    /// Used, as the agent reported.
    pub used: Option<u64>,
}

impl TokenStats {
    /// What is known so far.
    pub fn counts(&self) -> TokenCounts {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request an agent took holds `tokens` reserved.
    pub fn set_reserved(&self, tokens: u64) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserved = Some(tokens);
    }

    fn set_used(&self, tokens: u64) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .used = Some(tokens);
    }
}

/// Watches a response body for the `usage` an agent reports (in a JSON body, or in
/// the last server-sent event that carries one), settles the token reservations with
/// it and tells `stats`. Without a report, the reservation stands as charged.
#[derive(Debug)]
pub struct UsageWatch {
    tokens: TokenSettlement,
    stats: Arc<TokenStats>,
    buffer: Vec<u8>,
    overflowed: bool,
    usage: Option<u64>,
    sse: bool,
}

impl UsageWatch {
    /// Watches a response, a stream of server-sent events when `sse`, for the
    /// reservations `tokens`; what they reserved and the usage go to `stats`.
    pub fn new(tokens: TokenSettlement, sse: bool, stats: Arc<TokenStats>) -> Self {
        stats.set_reserved(tokens.reserved());
        Self {
            tokens,
            stats,
            buffer: Vec::new(),
            overflowed: false,
            usage: None,
            sse,
        }
    }

    fn scan_lines(&mut self) {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Some(data) = line.strip_prefix(b"data:")
                && let Some(total) = usage_total(data.trim_ascii())
            {
                // Known before the stream ends, which a client may not wait for.
                self.stats.set_used(total);
                self.usage = Some(total);
            }
        }
    }
}

impl Drop for TokenSettlement {
    /// Gives back what was neither settled nor kept.
    fn drop(&mut self) {
        self.settle_all(0);
    }
}

impl BodyWatch for UsageWatch {
    fn on_data(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        self.buffer.extend_from_slice(data);
        if self.sse {
            self.scan_lines();
        }
        if self.buffer.len() > MAX_BUFFERED_BODY {
            self.overflowed = true;
            self.buffer = Vec::new();
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        if !self.sse && !self.overflowed && end == BodyEnd::Complete {
            self.usage = usage_total(&self.buffer);
        }
        if let Some(total) = self.usage {
            self.stats.set_used(total);
            self.tokens.settle(total);
        }
        // No report: the reservation stays charged in full.
        self.tokens.held.clear();
    }
}

/// `usage.total_tokens` (or prompt + completion) of an OpenAI-style JSON document.
pub fn usage_total(json: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let usage = v.get("usage")?;
    usage
        .get("total_tokens")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| {
            let p = usage
                .get("prompt_tokens")
                .and_then(serde_json::Value::as_u64)?;
            let c = usage
                .get("completion_tokens")
                .and_then(serde_json::Value::as_u64)?;
            Some(p + c)
        })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::num::NonZeroUsize;

    use http::HeaderMap;

    use super::*;
    use crate::limits::{LimitsContext, Subject, Verdict, requested_tokens};

    #[tokio::test]
    async fn a_settled_reservation_refunds_what_was_not_used() {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: p, namespace: d}\n\
            spec:\n  matches: [{pathPrefix: /}]\n  backends: [{endpoints: [\"127.0.0.1:9\"]}]\n---\n\
            apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\nmetadata: {name: t, namespace: d}\n\
            spec:\n  targetRefs: [{kind: AgentPool, name: p}]\n  key: {type: Pool}\n\
            \x20 tiers: [{name: all, tokenLimits: [{tokens: 100, period: 1h}]}]\n";
        let mut objects = sluice_api::Objects::default();
        sluice_api::manifest::parse_into(yaml, "t.yaml", &mut objects).expect("parses");
        let (table, diags) = sluice_api::compile(&objects);
        assert!(!diags.has_errors(), "{diags}");
        let context = Arc::new(LimitsContext::new(
            None,
            NonZeroUsize::MIN.saturating_add(99),
            Metrics::new(),
            crate::clock::TokioClock::shared(),
        ));
        let limits = context
            .build(&table.policies, &["d/p".to_owned()])
            .expect("limits build");
        let headers = HeaderMap::new();
        let subject = Subject {
            pool: "d/p",
            pool_index: 0,
            consumer: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            headers: &headers,
        };
        let Verdict::Admitted { mut tokens, .. } = limits.check(&subject, Some(100)).await else {
            panic!("the whole budget can be reserved once");
        };
        assert!(matches!(
            limits.check(&subject, Some(50)).await,
            Verdict::Limited { .. }
        ));
        tokens.settle(10);
        // 90 of the 100 reserved tokens came back.
        let Verdict::Admitted { tokens, .. } = limits.check(&subject, Some(80)).await else {
            panic!("90 tokens are free");
        };
        // A reservation dropped unsettled (the request failed before an agent
        // answered) is given back whole.
        drop(tokens);
        let Verdict::Admitted { tokens, .. } = limits.check(&subject, Some(90)).await else {
            panic!("the dropped reservation came back");
        };
        // One kept by a response without a usage report stays charged.
        let stats = Arc::new(TokenStats::default());
        let mut watch = UsageWatch::new(tokens, false, stats.clone());
        watch.on_end(BodyEnd::Dropped);
        drop(watch);
        assert_eq!(
            stats.counts(),
            TokenCounts {
                reserved: Some(90),
                used: None
            }
        );
        assert!(matches!(
            limits.check(&subject, Some(1)).await,
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn usage_is_read_from_json_and_the_last_sse_event() {
        assert_eq!(
            usage_total(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#),
            Some(7)
        );
        assert_eq!(
            usage_total(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
            Some(7)
        );
        assert_eq!(usage_total(br#"{"choices":[]}"#), None);
        let stats = Arc::new(TokenStats::default());
        let mut w = UsageWatch::new(TokenSettlement::default(), true, stats.clone());
        w.on_data(&Bytes::from_static(
            b"data: {\"usage\":null}\n\ndata: {\"usage\":{\"total_to",
        ));
        w.on_data(&Bytes::from_static(b"kens\":12}}\n\ndata: [DONE]\n\n"));
        assert_eq!(w.usage, Some(12));
        // Known to the access log before the stream ends.
        assert_eq!(stats.counts().used, Some(12));
        assert_eq!(requested_tokens(br#"{"max_tokens": 64}"#), Some(64));
        assert_eq!(
            requested_tokens(br#"{"max_completion_tokens": 9}"#),
            Some(9)
        );
        assert_eq!(requested_tokens(b"not json"), None);
    }
}
