//! Writes statuses to the Kubernetes API with server-side apply.
//!
//! Every write is a `PATCH .../status` of type `application/apply-patch+yaml` under
//! one field manager, [`FIELD_MANAGER`], forced, so the controller owns the status
//! fields it writes and nothing else. A status equal to the object's current one apart
//! from the conditions' `lastTransitionTime` is not written.
//!
//! Leader election is not implemented yet: every replica writes. The writes of two
//! replicas are the same apply under the same manager, so they do not fight, but run
//! one replica until the Lease holder alone writes.

use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::{AgentPool, AgentPoolStatus, RatePolicy, RatePolicyStatus};
use tokio::sync::watch;

use crate::status::same_apart_from_transition_time;

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

/// Writes statuses through a kube [`Client`].
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer that talks through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
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
        self.apply(pool, pool.status.as_ref(), status).await
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
        self.apply(policy, policy.status.as_ref(), status).await
    }

    /// Writes every status of `batch`, logging failures; returns how many were patched.
    pub async fn apply_batch(&self, batch: &StatusBatch) -> usize {
        let mut patched = 0;
        for (o, s) in &batch.pools {
            match self.apply_pool(o, s).await {
                Ok(Written::Patched) => patched += 1,
                Ok(Written::Unchanged) => {}
                Err(e) => tracing::warn!(error = %e, "status not written"),
            }
        }
        for (o, s) in &batch.policies {
            match self.apply_policy(o, s).await {
                Ok(Written::Patched) => patched += 1,
                Ok(Written::Unchanged) => {}
                Err(e) => tracing::warn!(error = %e, "status not written"),
            }
        }
        patched
    }

    /// Writes each batch published on `batches`, the latest one when several came in
    /// while a batch was being written, until the sender is dropped.
    pub async fn run(self, mut batches: watch::Receiver<StatusBatch>) {
        while batches.changed().await.is_ok() {
            let batch = batches.borrow_and_update().clone();
            let patched = self.apply_batch(&batch).await;
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
    ) -> Result<Written, StatusError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        if same_apart_from_transition_time(current, Some(status)) {
            return Ok(Written::Unchanged);
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
            Ok(Ok(_)) => Ok(Written::Patched),
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

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "AgentPool" => "AgentPool",
        "RatePolicy" => "RatePolicy",
        _ => "object",
    }
}
