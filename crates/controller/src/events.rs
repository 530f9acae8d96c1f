//! Kubernetes Events on condition transitions.
//!
//! When a status write changes the status of `Accepted` or `Ready` (see
//! [`EVENT_CONDITIONS`]), including the first time the condition is set, one
//! `events.k8s.io/v1` Event is published about the object through kube's [`Recorder`],
//! so `kubectl describe agentpool NAME` tells the story:
//!
//! | field | value |
//! |---|---|
//! | type | `Normal` when the condition became `True`, `Warning` when it became `False` |
//! | reason | the condition's reason ([`crate::status`] constants, e.g. `NoReadyEndpoints`) |
//! | note | `<type>=<status>: <the condition's message>`, at most 1 KiB |
//! | action | the condition type (`Accepted`, `Ready`) |
//! | reportingController | [`REPORTING_CONTROLLER`]; reportingInstance: the replica's identity |
//!
//! Only the holder of the Lease writes statuses ([`crate::status_writer`]), so only it
//! publishes events. The recorder folds a repeat of an event (same object, action and
//! reason within six minutes) into the first one's `series` with a `PATCH`, hence the
//! `patch` verb in [`RBAC`].

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::status::{CONDITION_ACCEPTED, CONDITION_READY};

/// The API calls this module makes, as RBAC rules `(group, resource, verbs)`: in the
/// namespaces of the objects the events are about.
pub const RBAC: &[(&str, &str, &[&str])] = &[("events.k8s.io", "events", &["create", "patch"])];

/// The conditions whose transitions are published as events.
pub const EVENT_CONDITIONS: [&str; 2] = [CONDITION_ACCEPTED, CONDITION_READY];

/// `reportingController` of every event.
pub const REPORTING_CONTROLLER: &str = "sluice.dev/controller";

/// Longest note the Events API accepts, in bytes.
pub const MAX_NOTE_LEN: usize = 1024;

/// Longest a publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an event could not be published. Retryable in principle, but an event is not
/// retried: the status it describes is written anyway.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The API server refused the event or could not be reached.
    #[error("publishing event {reason} about {object}: {source}")]
    Publish {
        /// The event's reason.
        reason: String,
        /// `Kind namespace/name` of the object.
        object: String,
        /// What the client said.
        source: kube::Error,
    },
    /// The API server did not answer within the deadline.
    #[error("publishing event {reason} about {object}: no answer within {PUBLISH_TIMEOUT:?}")]
    Timeout {
        /// The event's reason.
        reason: String,
        /// `Kind namespace/name` of the object.
        object: String,
    },
}

/// One condition that changed status, as the event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `Normal` for a condition that became `True`, else `Warning`.
    pub type_: EventType,
    /// The condition's reason.
    pub reason: String,
    /// `<type>=<status>: <message>`.
    pub note: String,
    /// The condition type.
    pub action: String,
}

/// The conditions of [`EVENT_CONDITIONS`] whose status in `wanted` differs from the one
/// in `current` (a condition missing from `current` counts as changed), in the order of
/// `wanted`.
pub fn transitions(current: &[Condition], wanted: &[Condition]) -> Vec<Transition> {
    wanted
        .iter()
        .filter(|c| EVENT_CONDITIONS.contains(&c.type_.as_str()))
        .filter(|c| {
            !current
                .iter()
                .any(|old| old.type_ == c.type_ && old.status == c.status)
        })
        .map(|c| Transition {
            type_: if c.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: c.reason.clone(),
            note: crate::status::cut(
                MAX_NOTE_LEN,
                format!("{}={}: {}", c.type_, c.status, c.message),
            ),
            action: c.type_.clone(),
        })
        .collect()
}

/// Publishes [`Transition`]s as events.
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher talking through `client`, reporting as `instance` (the replica's
    /// identity, its pod name).
    pub fn new(client: Client, instance: impl Into<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes `transition` about the object `regarding`.
    ///
    /// # Errors
    ///
    /// [`EventError`] when the API server refuses or does not answer in time.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        transition: &Transition,
    ) -> Result<(), EventError> {
        let event = Event {
            type_: transition.type_,
            reason: transition.reason.clone(),
            note: Some(transition.note.clone()),
            action: transition.action.clone(),
            secondary: None,
        };
        let object = || {
            format!(
                "{} {}/{}",
                regarding.kind.as_deref().unwrap_or("object"),
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            )
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.recorder.publish(&event, regarding)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(EventError::Publish {
                reason: transition.reason.clone(),
                object: object(),
                source,
            }),
            Err(_) => Err(EventError::Timeout {
                reason: transition.reason.clone(),
                object: object(),
            }),
        }
    }

    /// Publishes every transition, logging failures.
    pub async fn publish_all(&self, regarding: &ObjectReference, transitions: &[Transition]) {
        for t in transitions {
            if let Err(e) = self.publish(regarding, t).await {
                tracing::warn!(error = %e, "event not published");
            }
        }
    }
}
