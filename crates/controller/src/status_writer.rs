//! Writes statuses to the Kubernetes API with server-side apply.
//!
//! Every write is a `PATCH .../status` of type `application/apply-patch+yaml` under
//! one field manager, [`FIELD_MANAGER`], forced, so the controller owns the status
//! fields it writes and nothing else; the conditions are a list map keyed on `type`,
//! so the conditions of other managers stay. A status equal to the object's current one
//! apart from the conditions' `lastTransitionTime` and other managers' conditions is
//! not written. "Current" is what this writer last wrote while the watch does not show
//! that write yet ([`LastWritten`]): a lagging watch makes no second write and no
//! repeated Event. Objects are patched untyped, so that one whose spec this build
//! cannot decode ([`crate::object`]) gets its `Accepted=False` too.
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

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::{AgentPool, AgentPoolStatus, RatePolicy, RatePolicyStatus};
use sluice_ratelimit::{Decision, Gcra, Quota};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::{EventPublisher, transitions};
use crate::lease::Leadership;
use crate::object::{Custom, ObjectKey, Parsed, reference};
use crate::status::{WithConditions, same_status};

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
    pub pools: Vec<(Parsed<AgentPool>, AgentPoolStatus)>,
    /// RatePolicies and their wanted status.
    pub policies: Vec<(Parsed<RatePolicy>, RatePolicyStatus)>,
}

/// One status this replica wrote, as the API server answered it.
#[derive(Clone, Debug)]
struct Record {
    uid: Option<String>,
    resource_version: Option<String>,
    status: serde_json::Value,
}

/// What this replica last wrote, object by object, until its watch shows the write.
///
/// Under load the API server's watch events lag its writes by a second or more; a
/// status pass that compared with the watch cache alone would see its last write
/// missing, send it again with a new `lastTransitionTime`, and publish its transitions
/// twice. Statuses are computed and compared against what was written instead, as long
/// as that write is newer than the object in the cache: its `resourceVersion` is
/// greater (etcd revisions, compared as numbers; a version that is not a number counts
/// as not newer), and it is the same object (`uid`). Once the watch catches up, the
/// cache is the truth again, so a later write by someone else shows.
#[derive(Clone, Debug, Default)]
pub struct LastWritten {
    records: Arc<Mutex<HashMap<(&'static str, ObjectKey), Record>>>,
}

impl LastWritten {
    /// The status of the object of kind `K` with metadata `meta` (as the watch shows
    /// it, with status `seen`): the one last written when the watch does not show that
    /// write yet, else `seen`.
    pub fn current<K: Custom>(
        &self,
        meta: &ObjectMeta,
        seen: Option<&K::Status>,
    ) -> Option<K::Status> {
        let key = (kind_of::<K>(), ObjectKey::of(meta));
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let written = records.get(&key).and_then(|r| {
            let ahead = r.uid == meta.uid
                && newer(
                    r.resource_version.as_deref(),
                    meta.resource_version.as_deref(),
                );
            ahead.then(|| serde_json::from_value(r.status.clone()).ok())?
        });
        if written.is_none() {
            // The watch caught up, or the object was replaced.
            records.remove(&key);
        }
        written.or_else(|| seen.cloned())
    }

    fn record<K: Custom>(&self, meta: &ObjectMeta, status: serde_json::Value) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (kind_of::<K>(), ObjectKey::of(meta)),
                Record {
                    uid: meta.uid.clone(),
                    resource_version: meta.resource_version.clone(),
                    status,
                },
            );
    }

    /// Forgets the objects of kind `K` for which `keep` is false (deleted ones).
    pub fn retain<K: Custom>(&self, keep: impl Fn(&ObjectKey) -> bool) {
        let kind = kind_of::<K>();
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(k, key), _| *k != kind || keep(key));
    }
}

/// Whether resource version `a` is newer than `b`.
fn newer(a: Option<&str>, b: Option<&str>) -> bool {
    let parse = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a > b,
        // The cache's object has no version (a file, a test): what was written is newer.
        (Some(_), None) => b.is_none(),
        _ => false,
    }
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
    written: LastWritten,
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
            written: LastWritten::default(),
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
        self.apply(&Parsed::Valid(pool.clone()), status).await
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
        self.apply(&Parsed::Valid(policy.clone()), status).await
    }

    /// What this writer last wrote, for the watch loop to compute statuses against
    /// ([`crate::watch::Watch::with_last_written`]).
    pub fn last_written(&self) -> LastWritten {
        self.written.clone()
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
            if !go_on(self.apply(o, s).await) {
                return patched;
            }
        }
        for (o, s) in &batch.policies {
            if !go_on(self.apply(o, s).await) {
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

    /// Applies `status` to `object` unless it already has it: compared with what this
    /// writer last wrote when the watch has not yet shown that write.
    ///
    /// # Errors
    ///
    /// [`StatusError`] when the API server refuses or does not answer in time.
    pub async fn apply<K: Custom>(
        &self,
        object: &Parsed<K>,
        status: &K::Status,
    ) -> Result<Written, StatusError> {
        let meta = object.metadata();
        let current = self.written.current::<K>(meta, object.status());
        let comparable = self.without_pruned(status);
        if same_status(
            current.as_ref(),
            Some(comparable.as_ref().unwrap_or(status)),
        ) {
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
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        // Untyped, so that an object whose spec does not decode gets its status too.
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &namespace,
            &ApiResource::erase::<K>(&()),
        );
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
                let back = written.data.get("status");
                self.note_pruned(kind, &patch["status"], back);
                let stored = back.cloned().unwrap_or_else(|| patch["status"].clone());
                self.written.record::<K>(&written.metadata, stored);
                if let Some(events) = &self.events {
                    let flips = transitions(
                        current.as_ref().map(|c| c.conditions()).unwrap_or_default(),
                        status.conditions(),
                    );
                    events.publish_all(&reference::<K>(meta), &flips).await;
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

    /// Records the status fields `back` (the status written) lacks although they were
    /// sent non-empty.
    fn note_pruned(&self, kind: &str, sent: &serde_json::Value, back: Option<&serde_json::Value>) {
        let Some(sent) = sent.as_object() else { return };
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
