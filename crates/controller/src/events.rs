//! Kubernetes Events on condition transitions.
//!
//! When a status write changes the status of `Accepted` or `Ready` (see
//! [`EVENT_CONDITIONS`]), including the first time the condition is set, one
//! `events.k8s.io/v1` Event is published about the object, so `kubectl describe
//! agentpool NAME` tells the story:
//!
//! | field | value |
//! |---|---|
//! | metadata.name | the object's name, cut to leave room, then `.` and a unique hex suffix: at most 253 characters, a DNS subdomain ([`event_name`]) |
//! | type | `Normal` when the condition became `True`, `Warning` when it became `False` |
//! | reason | the condition's reason ([`crate::status`] constants, e.g. `NoReadyEndpoints`) |
//! | note | `<type>=<status>: <the condition's message>`, at most 1 KiB |
//! | action | the condition type (`Accepted`, `Ready`) |
//! | reportingController | [`REPORTING_CONTROLLER`]; reportingInstance: the replica's identity (at most 128 characters) |
//!
//! Only the holder of the Lease writes statuses ([`crate::status_writer`]), so only it
//! publishes events. A repeat of an event (same object, type, action and reason within
//! [`SERIES_WINDOW`]) is folded into the first one's `series` (count, last observed
//! time) with a `PATCH`, hence the `patch` verb in [`RBAC`]; when that event is gone
//! (the API server keeps events an hour), a new one is created. The events are built
//! here rather than by kube's `Recorder`, whose names (`<object>.<hex>`) exceed the
//! 253 characters the API server allows for an object named near that limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;
use tokio::time::Instant;

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

/// Longest `reportingInstance` the Events API accepts.
pub const MAX_INSTANCE_LEN: usize = 128;

/// Longest object name the API server accepts (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// How long after an event a repeat is folded into its series (kube's and client-go's
/// six minutes).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

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

/// The name of an event about the object named `object`: the name, cut so that `.` and
/// `suffix` in hex follow within [`MAX_NAME_LEN`] characters, with no `-` or `.` left
/// at the cut (a DNS subdomain's parts end alphanumeric). An object without a usable
/// name gives `sluice.<suffix>`.
pub fn event_name(object: &str, suffix: u64) -> String {
    let suffix = format!(".{suffix:x}");
    let mut end = object.len().min(MAX_NAME_LEN - suffix.len());
    while !object.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = object[..end].trim_end_matches(['-', '.']);
    let prefix = if prefix.is_empty() { "sluice" } else { prefix };
    format!("{prefix}{suffix}")
}

/// What makes two events one series: the object (API version, kind, namespace, name,
/// uid), type, action and reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    regarding: [Option<String>; 5],
    type_: EventType,
    action: String,
    reason: String,
}

impl SeriesKey {
    fn new(regarding: &ObjectReference, transition: &Transition) -> Self {
        Self {
            regarding: [
                regarding.api_version.clone(),
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ],
            type_: transition.type_,
            action: transition.action.clone(),
            reason: transition.reason.clone(),
        }
    }
}

/// An event published, and when (for [`SERIES_WINDOW`]).
#[derive(Clone, Debug)]
struct Published {
    event: K8sEvent,
    at: Instant,
}

/// Publishes [`Transition`]s as events.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    instance: String,
    /// The last event of each series, within [`SERIES_WINDOW`].
    series: Arc<Mutex<HashMap<SeriesKey, Published>>>,
    /// The last name suffix given (nanoseconds since the epoch, or one more).
    last_suffix: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher talking through `client`, reporting as `instance` (the replica's
    /// identity, its pod name; cut to [`MAX_INSTANCE_LEN`]).
    pub fn new(client: Client, instance: impl Into<String>) -> Self {
        let mut instance = instance.into();
        if instance.len() > MAX_INSTANCE_LEN {
            let mut end = MAX_INSTANCE_LEN;
            while !instance.is_char_boundary(end) {
                end -= 1;
            }
            instance.truncate(end);
        }
        Self {
            client,
            instance,
            series: Arc::default(),
            last_suffix: Arc::default(),
        }
    }

    /// A name suffix no earlier event of this publisher had: the time in nanoseconds,
    /// or one more than the last one.
    fn suffix(&self, now: Timestamp) -> u64 {
        let nanos = u64::try_from(now.as_nanosecond()).unwrap_or_default();
        let mut last = self.last_suffix.load(Ordering::Relaxed);
        loop {
            let next = nanos.max(last.saturating_add(1));
            match self.last_suffix.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A new event (no series) about `regarding`.
    fn new_event(&self, regarding: &ObjectReference, transition: &Transition) -> K8sEvent {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or_default();
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_name(object, self.suffix(now))),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match transition.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            reason: Some(transition.reason.clone()),
            note: Some(transition.note.clone()),
            action: Some(transition.action.clone()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        }
    }

    /// Publishes `transition` about the object `regarding`: a new event, or the next of
    /// its series.
    ///
    /// # Errors
    ///
    /// [`EventError`] when the API server refuses or does not answer in time.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        transition: &Transition,
    ) -> Result<(), EventError> {
        let object = || {
            format!(
                "{} {}/{}",
                regarding.kind.as_deref().unwrap_or("object"),
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            )
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.send(regarding, transition)).await {
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

    async fn send(
        &self,
        regarding: &ObjectReference,
        transition: &Transition,
    ) -> Result<(), kube::Error> {
        let key = SeriesKey::new(regarding, transition);
        let now = Instant::now();
        let previous = {
            let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            series.retain(|_, p| now.duration_since(p.at) < SERIES_WINDOW);
            series.get(&key).map(|p| p.event.clone())
        };
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let event = match previous {
            Some(mut event) => {
                event.series = Some(EventSeries {
                    count: event
                        .series
                        .as_ref()
                        .map_or(2, |s| s.count.saturating_add(1)),
                    last_observed_time: MicroTime(Timestamp::now()),
                });
                let name = event.metadata.name.clone().unwrap_or_default();
                match events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&event))
                    .await
                {
                    Ok(_) => event,
                    // Gone (the API server keeps events an hour): a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        let event = self.new_event(regarding, transition);
                        events.create(&PostParams::default(), &event).await?;
                        event
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let event = self.new_event(regarding, transition);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Published { event, at: now });
        Ok(())
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
