//! The custom resources as the controller reads them from the API server: each object
//! decoded on its own, so that one the controller cannot decode is reported on, not
//! fatal.
//!
//! kube decodes a list page as one `ObjectList<K>`: a single AgentPool that this
//! build cannot decode (a number beyond its type, stored before the CRD bounded it; an
//! enum value of a newer CRD) would fail every list, and the watcher would list again
//! forever, so that a fresh replica never syncs and a running one keeps a frozen view.
//! The watchers therefore read AgentPools and RatePolicies as [`DynamicObject`]s,
//! which always decode, and [`Parsed::parse`] decodes each one: a bad object becomes
//! [`Parsed::Invalid`] with the field and the reason (`spec.queue.defaultPriority:
//! invalid value: integer 5000000000, expected u32`), which its `Accepted=False`
//! condition carries (reason `InvalidSpec`), while the others compile.
//!
//! `metadata.managedFields` is dropped on the way in: the controller never reads it,
//! and it is often the larger part of an object.
//!
//! An object has `Accepted=False` with reason `InvalidSpec` when the API server stored
//! it before its CRD bounded the field (the API server keeps stored objects when a CRD
//! is tightened) or when the CRD in the cluster is newer than this controller.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::DynamicObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::{AgentPool, AgentPoolStatus, RatePolicy, RatePolicyStatus};

use crate::status::WithConditions;

/// A Sluice custom resource kind the controller watches and writes the status of.
pub trait Custom:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + PartialEq
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Its status.
    type Status: WithConditions
        + Debug
        + Default
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;

    /// The status, if any.
    fn status(&self) -> Option<&Self::Status>;

    /// Replaces the status.
    fn set_status(&mut self, status: Option<Self::Status>);

    /// Whether the spec is the same.
    fn same_spec(&self, other: &Self) -> bool;
}

impl Custom for AgentPool {
    type Status = AgentPoolStatus;

    fn status(&self) -> Option<&AgentPoolStatus> {
        self.status.as_ref()
    }

    fn set_status(&mut self, status: Option<AgentPoolStatus>) {
        self.status = status;
    }

    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Custom for RatePolicy {
    type Status = RatePolicyStatus;

    fn status(&self) -> Option<&RatePolicyStatus> {
        self.status.as_ref()
    }

    fn set_status(&mut self, status: Option<RatePolicyStatus>) {
        self.status = status;
    }

    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

/// `namespace/name` of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object with this metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An object whose spec this build cannot decode: its metadata, its status (when that
/// decodes), and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Undecodable<S> {
    /// The object's metadata.
    pub metadata: ObjectMeta,
    /// Its status, as last written.
    pub status: Option<S>,
    /// The field that did not decode and why.
    pub error: String,
}

/// One custom resource as the watch read it.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed<K: Custom> {
    /// It decoded.
    Valid(K),
    /// It did not.
    Invalid(Box<Undecodable<K::Status>>),
}

impl<K: Custom> Parsed<K> {
    /// Decodes `object`, without its `managedFields`.
    pub fn parse(mut object: DynamicObject) -> Self {
        object.metadata.managed_fields = None;
        let metadata = object.metadata.clone();
        let value = match serde_json::to_value(&object) {
            Ok(v) => v,
            Err(e) => {
                return Self::Invalid(Box::new(Undecodable {
                    metadata,
                    status: None,
                    error: e.to_string(),
                }));
            }
        };
        let status = value
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        match serde_path_to_error::deserialize::<_, K>(value) {
            Ok(k) => Self::Valid(k),
            Err(e) => {
                let path = e.path().to_string();
                let error = if path == "." {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                };
                Self::Invalid(Box::new(Undecodable {
                    metadata,
                    status,
                    error,
                }))
            }
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Valid(k) => k.meta(),
            Self::Invalid(u) => &u.metadata,
        }
    }

    /// Its status, if any.
    pub fn status(&self) -> Option<&K::Status> {
        match self {
            Self::Valid(k) => k.status(),
            Self::Invalid(u) => u.status.as_ref(),
        }
    }

    /// The decoded object.
    pub fn valid(&self) -> Option<&K> {
        match self {
            Self::Valid(k) => Some(k),
            Self::Invalid(_) => None,
        }
    }

    /// Its key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::of(self.metadata())
    }
}

/// The object an Event is about.
pub fn reference<K: Custom>(meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..ObjectReference::default()
    }
}

/// `object` as a [`DynamicObject`], as the API server would send it.
///
/// # Panics
///
/// Never for the Sluice kinds, which always serialise to an object.
pub fn erase<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> DynamicObject {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    value["apiVersion"] = K::api_version(&()).into_owned().into();
    value["kind"] = K::kind(&()).into_owned().into();
    serde_json::from_value(value).unwrap_or_else(|_| DynamicObject {
        types: None,
        metadata: object.meta().clone(),
        data: serde_json::Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_beyond_its_type_is_an_invalid_object_naming_the_field() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "big", "namespace": "agents", "managedFields": [{"manager": "x"}]},
            "spec": {
                "matches": [{"pathPrefix": "/"}],
                "backends": [{"endpoints": ["10.0.0.1:80"]}],
                "queue": {"defaultPriority": 5_000_000_000u64},
            },
            "status": {"readyEndpoints": 3},
        }))
        .expect("an object");
        let Parsed::<AgentPool>::Invalid(u) = Parsed::parse(object) else {
            panic!("decoded");
        };
        assert!(
            u.error
                .starts_with("spec.queue.defaultPriority: invalid value: integer `5000000000`"),
            "{}",
            u.error
        );
        assert_eq!(u.status.and_then(|s| s.ready_endpoints), Some(3));
        assert_eq!(u.metadata.managed_fields, None);
    }
}
