//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every controller replica watches, compiles and serves the push stream; only the
//! holder of the Lease writes status and events. [`LeaderElector`] takes part in the
//! election, [`Leadership`] tells the rest of the controller whether this replica leads.
//!
//! No maintained crate fits: `kube-leader-election` and `kubert` are built on older kube
//! releases, and `kube-lease-manager` (kube 5) reads expiry from `SystemTime`, so its
//! take-over cannot be tested with paused time. The algorithm is client-go's
//! (`tools/leaderelection`):
//!
//! * **Expiry is local.** A replica remembers the Lease record as it last read it and
//!   the instant, on its own monotonic clock, at which it saw that record change. A
//!   claim has expired once the record has not changed for `leaseDurationSeconds` since
//!   then. The timestamps in the Lease are never compared with this replica's clock, so
//!   a replica whose wall clock is ahead (or behind) neither takes over from a holder
//!   that still renews nor waits for an expiry that already passed. The price, as in
//!   client-go: a replica that starts (or first sees a claim) waits a whole duration
//!   before it takes over a Lease whose holder is gone.
//! * A replica **acquires** the Lease when it does not exist (create), has no holder, or
//!   has expired. It writes itself as `holderIdentity`, `acquireTime` and `renewTime`
//!   (stamped from its wall clock, [`Clock`], just before the write, not before the
//!   read), and adds one to `leaseTransitions` whenever the previous holder was not
//!   itself (another replica, or none after a release); the Lease it creates starts at 0.
//! * The holder **renews** (`renewTime` stamped just before the write) every
//!   `duration / 3`, counted from the start of one renewal to the start of the next,
//!   keeping `acquireTime` and `leaseTransitions`.
//! * Every write is a `PUT` that carries the `resourceVersion` just read (or a `POST`
//!   when the Lease does not exist): when two replicas race, the API server takes one
//!   write and answers `409 Conflict` to the other, which stays standby.
//! * **Rounds are bounded.** A standby's round (read, then maybe write) gives up after
//!   `duration / 3`; the holder's gives up at its renew deadline. The holder counts that
//!   deadline from the *start* of its last successful round, so a write that took long
//!   to answer does not stretch its leadership past what the others observed.
//! * The holder **steps down** when it could not renew for `2/3 × duration` (the renew
//!   deadline): it stops writing status before a standby may think the Lease expired.
//! * A standby reads the Lease every `duration / 3`, and at the instant its observed
//!   claim expires when that comes first, so it takes over at most `duration` after it
//!   last saw the record change: at most `4/3 × duration` after the holder's last
//!   renewal.
//! * On shutdown the holder **releases** the Lease (clears `holderIdentity`), and a
//!   standby takes over at its next read instead of waiting for the expiry.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use prometheus::{IntGauge, Registry};
use tokio::sync::watch;
use tokio::time::Instant;

/// The API calls this module makes, as RBAC rules `(group, resource, verbs)`: in the
/// Lease's namespace only (the chart grants them with a Role).
pub const RBAC: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "sluice-controller";

/// Default lease duration: a standby takes over once it has seen the Lease unchanged
/// this long.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Shortest lease duration: `leaseDurationSeconds` is whole seconds, and the holder
/// renews every third of it.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

/// Shortest wait between two reads of the Lease.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// A standby wakes this long after the observed claim's expiry, so that it has expired
/// when it reads the Lease again.
const EXPIRY_MARGIN: Duration = Duration::from_millis(1);

/// Why the election could not be configured, or one round of it failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease duration is not a whole number of seconds of at least
    /// [`MIN_LEASE_DURATION`]. At startup; not retryable.
    #[error(
        "lease duration {0:?} must be a whole number of seconds, at least {MIN_LEASE_DURATION:?}"
    )]
    Duration(Duration),
    /// The identity, the Lease name or its namespace is empty. At startup; not
    /// retryable.
    #[error("the lease {0} must not be empty")]
    Empty(&'static str),
    /// The API server refused a call or could not be reached. Retryable: the next round
    /// tries again (a holder steps down when that lasts past the renew deadline).
    #[error("{verb} Lease {lease}: {source}")]
    Api {
        /// `get`, `create` or `update`.
        verb: &'static str,
        /// `namespace/name` of the Lease.
        lease: String,
        /// What the client said.
        source: kube::Error,
    },
    /// The API server did not answer in time. Retryable, as [`LeaseError::Api`].
    #[error("{verb} Lease {lease}: no answer within {timeout:?}")]
    Timeout {
        /// `get`, `create`, `update` or `renew` (a whole round).
        verb: &'static str,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

/// Which Lease, who this replica is, and how long a holder's claim lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
}

impl LeaseConfig {
    /// The Lease `namespace/name`, claimed as `identity` (the pod's name) for `duration`.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Duration`] for a duration under [`MIN_LEASE_DURATION`] or with a
    /// fraction of a second, [`LeaseError::Empty`] for an empty name, namespace or
    /// identity.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Result<Self, LeaseError> {
        let (name, namespace, identity) = (name.into(), namespace.into(), identity.into());
        if duration < MIN_LEASE_DURATION || duration.subsec_nanos() != 0 {
            return Err(LeaseError::Duration(duration));
        }
        for (what, value) in [
            ("name", &name),
            ("namespace", &namespace),
            ("identity", &identity),
        ] {
            if value.is_empty() {
                return Err(LeaseError::Empty(what));
            }
        }
        Ok(Self {
            name,
            namespace,
            identity,
            duration,
        })
    }

    /// This replica's `holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long a claim lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How often the holder renews, and a standby reads the Lease at most.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// How long the holder keeps leading without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

impl std::fmt::Display for LeaseConfig {
    /// `namespace/name` of the Lease.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The wall clock that stamps `acquireTime` and `renewTime` (never compared with
/// them: expiry runs on the monotonic clock).
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Whether this replica holds the Lease: cheap to clone and to read. Once its
/// [`LeaderElector`] is gone (stopped, or its task died), it reads `false`.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Keeps the sender of a [`Leadership::fixed`] alive.
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Leadership that never changes: `true` where a single writer is certain (one
    /// replica, tests), `false` for a replica that must never write.
    pub fn fixed(leader: bool) -> Self {
        let (tx, rx) = watch::channel(leader);
        Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow() && self.rx.has_changed().is_ok()
    }

    /// Waits for the next change and returns the new state; never returns when the
    /// state cannot change any more.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a change that comes in meanwhile is seen by the next call.
    pub async fn changed(&mut self) -> bool {
        if self.rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        *self.rx.borrow_and_update()
    }
}

impl From<watch::Receiver<bool>> for Leadership {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Self { rx, _fixed: None }
    }
}

/// What one round of the election found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// This replica took the Lease: it did not exist, had no holder or had expired.
    Acquired,
    /// This replica held the Lease and renewed it.
    Renewed,
    /// Another replica holds the Lease until `expires` (unless it renews it).
    HeldBy {
        /// Its `holderIdentity`.
        holder: String,
        /// When the claim expires unless the record changes: the instant this replica
        /// saw it change, plus its `leaseDurationSeconds`, on this replica's monotonic
        /// clock.
        expires: Instant,
    },
    /// Another replica wrote the Lease between this replica's read and write
    /// (`409 Conflict`): this replica is not the leader.
    Conflict,
}

/// The Lease record as this replica last saw it, and when it saw it change.
#[derive(Debug)]
struct Observation {
    spec: LeaseSpec,
    at: Instant,
}

/// Takes part in the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    leader: watch::Sender<bool>,
    gauge: Option<IntGauge>,
    observed: Mutex<Option<Observation>>,
}

impl Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for `config`'s Lease, talking through `client`, with the system clock.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            clock: Arc::new(SystemClock),
            leader: watch::channel(false).0,
            gauge: None,
            observed: Mutex::new(None),
        }
    }

    /// Registers the gauge `sluice_controller_leader` (1 while this replica holds the
    /// Lease, else 0) in `registry`.
    ///
    /// # Errors
    ///
    /// When a metric of the same name is already registered.
    pub fn with_metrics(mut self, registry: &Registry) -> prometheus::Result<Self> {
        let gauge = leader_gauge()?;
        registry.register(Box::new(gauge.clone()))?;
        gauge.set(i64::from(*self.leader.borrow()));
        self.gauge = Some(gauge);
        Ok(self)
    }

    /// The metric [`LeaderElector::with_metrics`] registers (for `sluice metrics`).
    ///
    /// # Errors
    ///
    /// Never in practice: the definition is fixed.
    pub fn metric_descs() -> prometheus::Result<Vec<prometheus::core::Desc>> {
        Ok(prometheus::core::Collector::desc(&leader_gauge()?)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Uses `clock` instead of the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A handle that tells whether this replica leads; it starts as `false`.
    pub fn leadership(&self) -> Leadership {
        Leadership::from(self.leader.subscribe())
    }

    /// Runs the election until `shutdown` completes, then releases the Lease if this
    /// replica holds it. Errors are logged and retried; see the module docs for the
    /// timing.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let retry = self.config.renew_interval() / 2;
        // The start of the last successful acquire or renewal, while leading.
        let mut renewed: Option<Instant> = None;
        loop {
            let deadline = renewed.map(|at| at + self.config.renew_deadline());
            let started = Instant::now();
            // A holder's round ends at its renew deadline, a standby's a third of the
            // duration after it began.
            let (limit, verb) = match deadline {
                Some(d) => (d, "renew"),
                None => (started + self.config.renew_interval(), "acquire"),
            };
            let round = async {
                tokio::time::timeout_at(limit, self.try_acquire_or_renew())
                    .await
                    .unwrap_or_else(|_| Err(self.timeout(verb, limit - started)))
            };
            let result = tokio::select! {
                result = round => result,
                () = &mut shutdown => break,
            };
            let wait = match result {
                Ok(Observed::Acquired | Observed::Renewed) => {
                    renewed = Some(started);
                    self.set_leader(true);
                    // Renewals start a third of the duration apart, however long each
                    // took to answer.
                    (started + self.config.renew_interval())
                        .saturating_duration_since(Instant::now())
                        .max(MIN_WAIT)
                }
                Ok(Observed::HeldBy { holder, expires }) => {
                    renewed = None;
                    if self.set_leader(false) {
                        tracing::warn!(%holder, "another replica took the Lease");
                    }
                    let until = expires.saturating_duration_since(Instant::now()) + EXPIRY_MARGIN;
                    until.clamp(MIN_WAIT, self.config.renew_interval())
                }
                Ok(Observed::Conflict) => {
                    renewed = None;
                    self.set_leader(false);
                    retry
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        renewed = None;
                        self.set_leader(false);
                    }
                    retry
                }
            };
            // A holder that has not renewed by its deadline steps down then, not at the
            // end of its wait.
            let step_down = async {
                match renewed {
                    Some(at) => tokio::time::sleep_until(at + self.config.renew_deadline()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = step_down => {
                    renewed = None;
                    self.set_leader(false);
                }
                () = &mut shutdown => break,
            }
        }
        if self.set_leader(false) {
            match tokio::time::timeout(self.config.renew_interval(), self.release()).await {
                Ok(Ok(())) => tracing::info!("Lease released"),
                Ok(Err(e)) => tracing::warn!(error = %e, "Lease not released"),
                Err(_) => tracing::warn!("Lease not released: no answer in time"),
            }
        }
    }

    /// One round: reads the Lease, then creates, takes over or renews it when this
    /// replica may. Does not change [`Self::leadership`]; [`Self::run`] does.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Api`] or [`LeaseError::Timeout`] when a call fails.
    pub async fn try_acquire_or_renew(&self) -> Result<Observed, LeaseError> {
        let Some(mut lease) = self
            .call("get", self.api.get_opt(&self.config.name))
            .await?
        else {
            let spec = self.claim(LeaseSpec::default(), false);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            let won = self
                .write("create", self.api.create(&PostParams::default(), &lease))
                .await?;
            if !won {
                return Ok(Observed::Conflict);
            }
            self.observe(spec, true);
            return Ok(Observed::Acquired);
        };
        let spec = lease.spec.take().unwrap_or_default();
        let seen_at = self.observe(spec.clone(), false);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let (spec, observed) = if holder == self.config.identity {
            let renewed = LeaseSpec {
                // Stamped now, after the read: as close to the write as can be.
                renew_time: Some(MicroTime(self.clock.now())),
                lease_duration_seconds: Some(self.config.seconds()),
                ..spec
            };
            (renewed, Observed::Renewed)
        } else {
            let expires = seen_at + claimed_duration(&spec, self.config.duration);
            if !holder.is_empty() && Instant::now() < expires {
                return Ok(Observed::HeldBy { holder, expires });
            }
            (self.claim(spec, true), Observed::Acquired)
        };
        lease.spec = Some(spec.clone());
        let won = self
            .write(
                "update",
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease),
            )
            .await?;
        if !won {
            return Ok(Observed::Conflict);
        }
        self.observe(spec, true);
        Ok(observed)
    }

    /// Records `spec` as the Lease last seen; returns when this replica saw it change
    /// (now, when it differs from the one seen before or when `written` by this
    /// replica).
    fn observe(&self, spec: LeaseSpec, written: bool) -> Instant {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.as_ref() {
            Some(o) if o.spec == spec && !written => o.at,
            _ => {
                let at = Instant::now();
                *observed = Some(Observation { spec, at });
                at
            }
        }
    }

    /// Clears `holderIdentity` if this replica holds the Lease, so that a standby takes
    /// it at its next read.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Api`] or [`LeaseError::Timeout`] when a call fails.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .call("get", self.api.get_opt(&self.config.name))
            .await?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(self.clock.now()));
        self.write(
            "update",
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await
        .map(|_| ())
    }

    /// The spec of a Lease this replica takes over from `previous` (`taken_over`: from
    /// a Lease that existed), stamped now.
    fn claim(&self, previous: LeaseSpec, taken_over: bool) -> LeaseSpec {
        let now = MicroTime(self.clock.now());
        let transitions = previous.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: Some(self.config.seconds()),
            lease_transitions: Some(if taken_over {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..previous
        }
    }

    /// Sets the leadership; returns whether it changed.
    fn set_leader(&self, leader: bool) -> bool {
        let changed = self.leader.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::from(leader));
        }
        if changed && leader {
            tracing::info!(identity = %self.config.identity, lease = %self.config, "became the leader");
        } else if changed {
            tracing::info!(identity = %self.config.identity, lease = %self.config, "no longer the leader");
        }
        changed
    }

    /// Runs one API call under the call deadline.
    async fn call<T>(
        &self,
        verb: &'static str,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, LeaseError> {
        let timeout = self.config.renew_interval();
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LeaseError::Api {
                verb,
                lease: self.config.to_string(),
                source,
            }),
            Err(_) => Err(self.timeout(verb, timeout)),
        }
    }

    /// A write: `Ok(true)` when it went through, `Ok(false)` on a `409 Conflict` (or
    /// `AlreadyExists`): another replica wrote first.
    async fn write(
        &self,
        verb: &'static str,
        call: impl Future<Output = kube::Result<Lease>>,
    ) -> Result<bool, LeaseError> {
        match self.call(verb, call).await {
            Ok(lease) => {
                tracing::trace!(version = ?lease.resource_version(), verb, "Lease written");
                Ok(true)
            }
            Err(LeaseError::Api {
                source: kube::Error::Api(status),
                ..
            }) if status.is_conflict() || status.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn timeout(&self, verb: &'static str, timeout: Duration) -> LeaseError {
        LeaseError::Timeout {
            verb,
            lease: self.config.to_string(),
            timeout,
        }
    }
}

/// How long the claim in `spec` lasts unchanged: its `leaseDurationSeconds`, else
/// `fallback`.
fn claimed_duration(spec: &LeaseSpec, fallback: Duration) -> Duration {
    spec.lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .map_or(fallback, Duration::from_secs)
}

/// The gauge `sluice_controller_leader`.
fn leader_gauge() -> prometheus::Result<IntGauge> {
    IntGauge::new(
        "sluice_controller_leader",
        "1 while this controller replica holds the Lease (writes status and events)",
    )
}
