//! What the controller tells users about their objects: status conditions computed from
//! a compile run.
//!
//! [`status_for_pool`] and [`status_for_policy`] are pure: the object, the diagnostics
//! and the table of one compile run, and the time to stamp on a condition that changes,
//! give the status. Writing it is [`crate::status_writer`]'s job.
//!
//! | condition | `True` when | `False` reasons |
//! |---|---|---|
//! | `Accepted` | the object compiled with no error (warnings are listed in the message) | [`REASON_INVALID`], [`REASON_INVALID_SPEC`] |
//! | `ResolvedRefs` | every Service, fallback pool, consumer and target it names resolved | [`REASON_REFS_NOT_RESOLVED`] |
//! | `Ready` (pools) | the pool is in the table with at least one ready endpoint | [`REASON_NOT_ACCEPTED`], [`REASON_NO_READY_ENDPOINTS`] |
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, so a
//! status that only differs in that field is not written again. Only the condition
//! types above are Sluice's ([`CONDITIONS`]): the conditions lists are list maps keyed
//! on `type`, other controllers may add theirs, and [`same_status`] ignores them.
//!
//! An AgentPool that was valid and becomes invalid is dropped from the next table (it
//! does not keep its last good form): its routes stop matching, and `Accepted=False`
//! says why. The other objects are not affected.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use sluice_api::table::Pool;
use sluice_api::{
    AgentPool, AgentPoolStatus, Diagnostic, Diagnostics, ObjectRef, RatePolicy, RatePolicyStatus,
    RouteTable, Severity,
};

/// The object compiled and is part of the table.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Everything the object refers to exists.
pub const CONDITION_RESOLVED_REFS: &str = "ResolvedRefs";
/// The object takes traffic.
pub const CONDITION_READY: &str = "Ready";

/// `Accepted=True`.
pub const REASON_ACCEPTED: &str = "Accepted";
/// `Accepted=False`: the compile step reported an error; the object is not in the table.
pub const REASON_INVALID: &str = "Invalid";
/// `ResolvedRefs=True`.
pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
/// `ResolvedRefs=False`: a Service, pool, consumer or target it names does not resolve.
pub const REASON_REFS_NOT_RESOLVED: &str = "RefsNotResolved";
/// `Accepted=False`: the object does not decode as this controller's version of its
/// kind (a number beyond its type, stored before the CRD bounded it; a value of a newer
/// CRD); the message names the field. The object is not in the table.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// `Ready=True`.
pub const REASON_READY: &str = "Ready";
/// `Ready=False`: the object is not accepted, so it takes no traffic.
pub const REASON_NOT_ACCEPTED: &str = "NotAccepted";
/// `Ready=False`: the pool is in the table but none of its endpoints is ready.
pub const REASON_NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";

/// The condition types the controller writes; any other type in a status belongs to
/// another field manager.
pub const CONDITIONS: [&str; 3] = [CONDITION_ACCEPTED, CONDITION_RESOLVED_REFS, CONDITION_READY];

/// Longest condition message written; longer ones are cut (the API allows 32 KiB, a
/// `kubectl describe` reader much less).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Whether a diagnostic's field is a reference to another object (a Service, a
/// fallback pool, a consumer, a policy target): such warnings make `ResolvedRefs=False`.
pub fn is_reference_field(field: &str) -> bool {
    field.contains(".service")
        || field.starts_with("spec.fallback")
        || field.starts_with("spec.access.consumers")
        || field.starts_with("spec.targetRefs")
}

/// The status of `pool` after a compile run that produced `diags` and `table`.
/// `now` stamps conditions whose status changed.
pub fn status_for_pool(
    pool: &AgentPool,
    diags: &Diagnostics,
    table: &RouteTable,
    now: &Time,
) -> AgentPoolStatus {
    let object = object_ref("AgentPool", pool);
    let key = format!("{}/{}", object.namespace, object.name);
    let compiled = table.pool(&key);
    let mine: Vec<&Diagnostic> = diags.for_object(&object).collect();
    let generation = pool.metadata.generation;
    let previous = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    let ready_endpoints = compiled.map_or(0, ready_endpoints);
    let mut conditions = common_conditions(&mine, compiled.is_some());
    conditions.push(match (compiled, ready_endpoints) {
        (None, _) => draft(
            CONDITION_READY,
            false,
            REASON_NOT_ACCEPTED,
            "the pool is not in the route table".to_owned(),
        ),
        (Some(_), 0) => draft(
            CONDITION_READY,
            false,
            REASON_NO_READY_ENDPOINTS,
            "no endpoint of the pool is ready".to_owned(),
        ),
        (Some(_), n) => draft(
            CONDITION_READY,
            true,
            REASON_READY,
            format!("{n} ready endpoints"),
        ),
    });
    AgentPoolStatus {
        conditions: stamp(conditions, previous, generation, now),
        ready_endpoints: Some(i32::try_from(ready_endpoints).unwrap_or(i32::MAX)),
        // Counted by the caller, which knows the proxies.
        proxies: None,
        updated_proxies: None,
        observed_generation: generation,
    }
}

/// The status of `policy` after a compile run that produced `diags` and `table`.
/// A RatePolicy carries `Accepted` and `ResolvedRefs`, as its CRD documents.
pub fn status_for_policy(
    policy: &RatePolicy,
    diags: &Diagnostics,
    table: &RouteTable,
    now: &Time,
) -> RatePolicyStatus {
    let object = object_ref("RatePolicy", policy);
    let key = format!("{}/{}", object.namespace, object.name);
    let in_table = table.policies.iter().any(|p| p.key == key);
    let mine: Vec<&Diagnostic> = diags.for_object(&object).collect();
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    RatePolicyStatus {
        conditions: stamp(
            common_conditions(&mine, in_table),
            previous,
            generation,
            now,
        ),
        observed_generation: generation,
    }
}

/// The status of an AgentPool that does not decode ([`REASON_INVALID_SPEC`]), whose
/// metadata is `meta`, status as last written `previous`, and decoding error `error`.
pub fn status_for_undecodable_pool(
    meta: &ObjectMeta,
    previous: Option<&AgentPoolStatus>,
    error: &str,
    now: &Time,
) -> AgentPoolStatus {
    let previous = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let drafts = vec![
        undecodable(error),
        draft(
            CONDITION_READY,
            false,
            REASON_NOT_ACCEPTED,
            "the pool is not in the route table".to_owned(),
        ),
    ];
    AgentPoolStatus {
        conditions: stamp(drafts, previous, meta.generation, now),
        ready_endpoints: Some(0),
        proxies: None,
        updated_proxies: None,
        observed_generation: meta.generation,
    }
}

/// The status of a RatePolicy that does not decode; see
/// [`status_for_undecodable_pool`].
pub fn status_for_undecodable_policy(
    meta: &ObjectMeta,
    previous: Option<&RatePolicyStatus>,
    error: &str,
    now: &Time,
) -> RatePolicyStatus {
    let previous = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    RatePolicyStatus {
        conditions: stamp(vec![undecodable(error)], previous, meta.generation, now),
        observed_generation: meta.generation,
    }
}

fn undecodable(error: &str) -> Draft {
    draft(
        CONDITION_ACCEPTED,
        false,
        REASON_INVALID_SPEC,
        cut(
            MAX_MESSAGE_LEN,
            format!("the object does not decode, and is left out of the route table: {error}"),
        ),
    )
}

/// A status made of conditions and other fields: AgentPool's and RatePolicy's.
pub trait WithConditions: Clone + PartialEq {
    /// The conditions.
    fn conditions(&self) -> &[Condition];
    /// The conditions, to change.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl WithConditions for AgentPoolStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl WithConditions for RatePolicyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Whether two statuses are equal as far as Sluice writes them: apart from the
/// conditions' `lastTransitionTime` and order, and from conditions of types not in
/// [`CONDITIONS`] (another manager's). (Compared as values: a status pass compares one
/// per object, a thousand at a time.)
pub fn same_status<S: WithConditions>(a: Option<&S>, b: Option<&S>) -> bool {
    fn normal<S: WithConditions>(s: &S) -> S {
        let mut s = s.clone();
        let conditions = s.conditions_mut();
        conditions.retain(|c| CONDITIONS.contains(&c.type_.as_str()));
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        for c in conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    }
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || normal(a) == normal(b),
        _ => false,
    }
}

fn object_ref<K: ResourceExt>(kind: &str, obj: &K) -> ObjectRef {
    ObjectRef::new(
        kind,
        obj.namespace().as_deref().unwrap_or("default"),
        &obj.name_any(),
    )
}

fn ready_endpoints(pool: &Pool) -> usize {
    pool.endpoints().filter(|e| !e.terminating).count()
}

/// A condition before it is stamped with a generation and a time.
struct Draft {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

fn draft(type_: &'static str, status: bool, reason: &'static str, message: String) -> Draft {
    Draft {
        type_,
        status,
        reason,
        message,
    }
}

/// `Accepted` and `ResolvedRefs` from the object's diagnostics.
fn common_conditions(mine: &[&Diagnostic], in_table: bool) -> Vec<Draft> {
    let errors: Vec<&Diagnostic> = mine
        .iter()
        .copied()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let (refs, other): (Vec<&Diagnostic>, Vec<&Diagnostic>) = mine
        .iter()
        .copied()
        .filter(|d| d.severity == Severity::Warning)
        .partition(|d| is_reference_field(&d.field));
    let accepted = if !errors.is_empty() || !in_table {
        let message = if errors.is_empty() {
            "left out of the route table".to_owned()
        } else {
            describe(&errors)
        };
        draft(CONDITION_ACCEPTED, false, REASON_INVALID, message)
    } else if other.is_empty() {
        draft(
            CONDITION_ACCEPTED,
            true,
            REASON_ACCEPTED,
            "accepted".to_owned(),
        )
    } else {
        draft(
            CONDITION_ACCEPTED,
            true,
            REASON_ACCEPTED,
            format!("accepted with warnings: {}", describe(&other)),
        )
    };
    let resolved = if refs.is_empty() {
        draft(
            CONDITION_RESOLVED_REFS,
            true,
            REASON_RESOLVED_REFS,
            "all references resolved".to_owned(),
        )
    } else {
        draft(
            CONDITION_RESOLVED_REFS,
            false,
            REASON_REFS_NOT_RESOLVED,
            describe(&refs),
        )
    };
    vec![accepted, resolved]
}

/// `field: problem; field: problem`, cut to [`MAX_MESSAGE_LEN`].
fn describe(diags: &[&Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&d.field);
        out.push_str(": ");
        out.push_str(&d.message);
    }
    cut(MAX_MESSAGE_LEN, out)
}

/// Cuts `text` to at most `max` bytes (at least 4), on a character boundary, ending
/// it with `...` when something was cut.
pub(crate) fn cut(max: usize, mut text: String) -> String {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Turns drafts into conditions: a condition whose status did not change keeps the
/// previous `lastTransitionTime`, the others get `now`.
fn stamp(
    drafts: Vec<Draft>,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    drafts
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.to_owned(),
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}
