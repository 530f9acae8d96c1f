//! Writes statuses to the Kubernetes API with server-side apply.
//!
//! Every write is a `PATCH .../status` of type `application/apply-patch+yaml` under
//! one field manager, [`FIELD_MANAGER`], forced, so the controller owns the status
//! fields it writes and nothing else. A status equal to the object's current one apart
//! from the conditions' `lastTransitionTime` is not written.
//!
//! With several replicas, only the holder of the Lease writes: a writer given a
//! [`Leadership`] ([`StatusWriter::with_leadership`]) writes nothing while it is standby
//! (and stops in the middle of a batch when it loses the Lease). The watch loop sends
//! the statuses that differ again when its replica becomes the leader.
//!
//! After a patch that flips `Accepted` or `Ready`, the writer publishes an Event about
//! the object ([`crate::events`], with [`StatusWriter::with_events`]).
//!
//! Writes are paced ([`StatusWriter::with_write_rate`], GCRA from `sluice-ratelimit`):
//! a proxy joining changes the `proxies` count of every AgentPool, and a thousand
//! pools must not become a thousand patches at once.
//!
//! An API server whose CRD is older than this controller prunes the status fields it
//! does not know (Helm installs CRDs but never upgrades them). The writer notices a
//! field missing from the patched object, logs once what to do, and stops comparing
//! that field, so that a status lacking it is not patched again at every pass.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::{AgentPool, AgentPoolStatus, RatePolicy, RatePolicyStatus};
use sluice_ratelimit::{Decision, Gcra, Quota};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::{EventPublisher, transitions};
use crate::lease::Leadership;
use crate::status::{WithConditions, same_apart_from_transition_time};

/// The API calls this module makes, as RBAC rules `(group, resource, verbs)`: in every
/// watched namespace.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("sluice.dev", "agentpools/status", &["patch"]),
    ("sluice.dev", "ratepolicies/status", &["patch"]),
];

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "sluice-controller";

/// Longest a status write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The API server refused the patch or could not be reached. Retryable: the next
    /// status pass writes again.
    #[error("patching the status of {kind} {namespace}/{name}: {source}")]
    Patch {
        /// The object's kind.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the client said.
        source: kube::Error,
    },
    /// The API server did not answer within the write deadline. Retryable.
    #[error("patching the status of {kind} {namespace}/{name}: no answer within {WRITE_TIMEOUT:?}")]
    Timeout {
        /// The object's kind.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// What [`StatusWriter`] did with one status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The status was patched.
    Patched,
    /// The object already had this status (apart from transition times).
    Unchanged,
    /// This replica does not hold the Lease: nothing was written.
    Standby,
}

/// The statuses one compile run wants, each with the object as last seen (whose status
/// is compared before writing).
#[derive(Clone, Debug, Default)]
pub struct StatusBatch {
    /// AgentPools and their wanted status.
    pub pools: Vec<(AgentPool, AgentPoolStatus)>,
    /// RatePolicies and their wanted status.
    pub policies: Vec<(RatePolicy, RatePolicyStatus)>,
}

/// Default most status patches per second (`sluice controller` allows twice as many
/// at once after a quiet spell).
pub const DEFAULT_WRITES_PER_SECOND: u32 = 50;

/// Paces the patches.
struct WriteRate {
    quota: Quota,
    gcra: Gcra,
    start: Instant,
}

impl WriteRate {
    /// Waits until one more patch is allowed, and charges it.
    async fn wait(&self) {
        loop {
            let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            match self.gcra.check(&self.quota, now) {
                Decision::Denied { retry_after, .. } => tokio::time::sleep(retry_after).await,
                _ => return,
            }
        }
    }
}

/// Writes statuses through a kube [`Client`].
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
    leadership: Option<Leadership>,
    events: Option<EventPublisher>,
    rate: Option<Arc<WriteRate>>,
    /// Top-level status fields the API server dropped (an older CRD).
    pruned: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer that talks through `client`. It writes whenever asked and publishes no
    /// events; see [`Self::with_leadership`] and [`Self::with_events`].
    pub fn new(client: Client) -> Self {
        Self {
            client,
            leadership: None,
            events: None,
            rate: None,
            pruned: Arc::default(),
        }
    }

    /// Patches at most `per_second` statuses a second, `burst` at once after a quiet
    /// spell.
    #[must_use]
    pub fn with_write_rate(mut self, per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        self.rate = Quota::per_period(per_second, Duration::from_secs(1))
            .map(|quota| {
                Arc::new(WriteRate {
                    quota: quota.with_burst(burst),
                    gcra: Gcra::new(),
                    start: Instant::now(),
                })
            })
            .map_err(
                |e| tracing::warn!(error = %e, "status write rate refused; writes are not paced"),
            )
            .ok();
        self
    }

    /// Writes only while `leadership` says this replica holds the Lease.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Publishes an event through `events` for each `Accepted` or `Ready` flip written.
    #[must_use]
    pub fn with_events(mut self, events: EventPublisher) -> Self {
        self.events = Some(events);
        self
    }

    /// Whether this replica may write now.
    pub fn may_write(&self) -> bool {
        self.leadership.as_ref().is_none_or(Leadership::is_leader)
    }

    /// Applies `status` to `pool` unless it already has it.
    ///
    /// # Errors
    ///
    /// [`StatusError`] when the API server refuses or does not answer in time.
    pub async fn apply_pool(
        &self,
        pool: &AgentPool,
        status: &AgentPoolStatus,
    ) -> Result<Written, StatusError> {
        let current = pool.status.as_ref().map(|s| s.conditions.as_slice());
        self.apply(
            pool,
            pool.status.as_ref(),
            status,
            current,
            &status.conditions,
        )
        .await
    }

    /// Applies `status` to `policy` unless it already has it.
    ///
    /// # Errors
    ///
    /// [`StatusError`] when the API server refuses or does not answer in time.
    pub async fn apply_policy(
        &self,
        policy: &RatePolicy,
        status: &RatePolicyStatus,
    ) -> Result<Written, StatusError> {
        let current = policy.status.as_ref().map(|s| s.conditions.as_slice());
        self.apply(
            policy,
            policy.status.as_ref(),
            status,
            current,
            &status.conditions,
        )
        .await
    }

    /// Writes every status of `batch`, logging failures; returns how many were patched.
    /// Stops when this replica loses the Lease.
    pub async fn apply_batch(&self, batch: &StatusBatch) -> usize {
        self.apply_batch_until(batch, || false).await
    }

    /// Like [`Self::apply_batch`], but stops early once `superseded` says a newer batch
    /// came: that one holds every status still to write (a batch is computed from the
    /// objects as last seen, which the statuses written so far have already updated).
    async fn apply_batch_until(&self, batch: &StatusBatch, superseded: impl Fn() -> bool) -> usize {
        let mut patched = 0;
        let mut go_on = |written: Result<Written, StatusError>| {
            let keep = match written {
                Ok(Written::Patched) => {
                    patched += 1;
                    true
                }
                Ok(Written::Unchanged) => true,
                Ok(Written::Standby) => {
                    tracing::debug!("not the leader: the rest of the status batch is dropped");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status not written");
                    true
                }
            };
            keep && !superseded()
        };
        for (o, s) in &batch.pools {
            if !go_on(self.apply_pool(o, s).await) {
                return patched;
            }
        }
        for (o, s) in &batch.policies {
            if !go_on(self.apply_policy(o, s).await) {
                return patched;
            }
        }
        patched
    }

    /// Writes each batch published on `batches` until the sender is dropped. A newer
    /// batch replaces the one being written (which it supersedes) at the next status;
    /// a batch that comes while this replica is standby is dropped.
    pub async fn run(self, mut batches: watch::Receiver<StatusBatch>) {
        while batches.changed().await.is_ok() {
            if !self.may_write() {
                batches.borrow_and_update();
                tracing::debug!("not the leader: status batch dropped");
                continue;
            }
            let batch = batches.borrow_and_update().clone();
            let patched = self
                .apply_batch_until(&batch, || batches.has_changed().unwrap_or(false))
                .await;
            if patched > 0 {
                tracing::debug!(patched, "statuses written");
            }
        }
    }

    async fn apply<K, S>(
        &self,
        obj: &K,
        current: Option<&S>,
        status: &S,
        current_conditions: Option<&[Condition]>,
        conditions: &[Condition],
    ) -> Result<Written, StatusError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize + DeserializeOwned + WithConditions,
    {
        let comparable = self.without_pruned(status);
        if same_apart_from_transition_time(current, Some(comparable.as_ref().unwrap_or(status))) {
            return Ok(Written::Unchanged);
        }
        if !self.may_write() {
            return Ok(Written::Standby);
        }
        if let Some(rate) = &self.rate {
            rate.wait().await;
            // The Lease may have been lost while waiting.
            if !self.may_write() {
                return Ok(Written::Standby);
            }
        }
        let kind = kind_of::<K>();
        let namespace = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match tokio::time::timeout(
            WRITE_TIMEOUT,
            api.patch_status(&name, &params, &Patch::Apply(&patch)),
        )
        .await
        {
            Ok(Ok(written)) => {
                self.note_pruned(kind, &patch["status"], &written);
                if let Some(events) = &self.events {
                    let flips = transitions(current_conditions.unwrap_or_default(), conditions);
                    events.publish_all(&obj.object_ref(&()), &flips).await;
                }
                Ok(Written::Patched)
            }
            Ok(Err(source)) => Err(StatusError::Patch {
                kind,
                namespace,
                name,
                source,
            }),
            Err(_) => Err(StatusError::Timeout {
                kind,
                namespace,
                name,
            }),
        }
    }
}

impl StatusWriter {
    /// `status` without the fields the API server is known to drop, if there are any.
    fn without_pruned<S: Serialize + DeserializeOwned>(&self, status: &S) -> Option<S> {
        let pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
        if pruned.is_empty() {
            return None;
        }
        let mut v = serde_json::to_value(status).ok()?;
        let fields = v.as_object_mut()?;
        for field in pruned.iter() {
            fields.remove(field);
        }
        serde_json::from_value(v).ok()
    }

    /// Records the status fields `written` lacks although they were sent non-empty.
    fn note_pruned<K: Serialize>(&self, kind: &str, sent: &serde_json::Value, written: &K) {
        let Some(sent) = sent.as_object() else { return };
        let back = serde_json::to_value(written).unwrap_or_default();
        let back = back.get("status");
        let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
        for (field, value) in sent {
            let dropped = !value.is_null() && back.is_none_or(|b| b.get(field).is_none());
            if dropped && pruned.insert(field.clone()) {
                tracing::error!(
                    kind,
                    field = %format!("status.{field}"),
                    "the API server dropped a status field: the {kind} CRD in the cluster is \
                     older than this controller (Helm does not upgrade CRDs); apply this \
                     release's: kubectl apply --server-side -f crds/"
                );
            }
        }
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "AgentPool" => "AgentPool",
        "RatePolicy" => "RatePolicy",
        _ => "object",
    }
}
