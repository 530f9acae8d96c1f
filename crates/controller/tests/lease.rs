//! Leader election through kube's real client against a stand-in API server that keeps
//! one Lease (GET, POST, PUT with `resourceVersion` conflicts), with paused time and
//! replicas whose wall clocks disagree, answers that come late and races; and the watch
//! loop sending statuses only while its replica leads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::watcher::Event;
use sluice_api::{Objects, manifest};
use sluice_controller::Publisher;
use sluice_controller::lease::{
    Clock, LeaderElector, Leadership, LeaseConfig, LeaseError, Observed,
};
use sluice_controller::status_writer::StatusBatch;
use sluice_controller::watch::{Sources, Watch, WatchMetrics, erased};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAMESPACE: &str = "sluice";
const NAME: &str = "sluice-controller";
const DURATION: Duration = Duration::from_secs(15);
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases";

/// A replica's wall clock, driven by tokio's paused time.
#[derive(Debug)]
struct PausedClock {
    base: Timestamp,
    start: Instant,
}

impl PausedClock {
    fn new() -> Arc<Self> {
        Self::skewed(0)
    }

    /// A clock `seconds` ahead of the others (behind when negative).
    fn skewed(seconds: i64) -> Arc<Self> {
        Arc::new(Self {
            base: Timestamp::from_second(1_750_000_000 + seconds).expect("timestamp"),
            start: Instant::now(),
        })
    }
}

impl Clock for PausedClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.start.elapsed()).expect("elapsed");
        self.base.checked_add(elapsed).expect("timestamp")
    }
}

/// The stand-in's state: the Lease, its resourceVersion, and what tests inject.
#[derive(Default)]
struct State {
    lease: Option<Lease>,
    version: u64,
    /// Replicas whose requests fail with 503.
    partitioned: BTreeSet<String>,
    /// When this replica next updates the Lease, another replica (the value) writes it
    /// first, between its read and its write.
    race: Option<(String, String)>,
    /// `(replica, method)` of every request.
    log: Vec<(String, Method)>,
    /// Requests of a replica and method that are served at once but answered this
    /// much later (a loaded API server, a slow network).
    late: BTreeMap<(String, Method), Duration>,
}

#[derive(Clone, Default)]
struct ApiServer(Arc<Mutex<State>>);

fn status(code: StatusCode, reason: &str) -> (StatusCode, serde_json::Value) {
    (
        code,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("stand-in: {reason}"), "reason": reason, "code": code.as_u16(),
        }),
    )
}

impl ApiServer {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("lock")
    }

    fn lease(&self) -> LeaseSpec {
        self.state()
            .lease
            .as_ref()
            .and_then(|l| l.spec.clone())
            .expect("a Lease")
    }

    fn holder(&self) -> Option<String> {
        self.state()
            .lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
    }

    fn store(&self, state: &mut State, mut lease: Lease) -> serde_json::Value {
        state.version += 1;
        lease.metadata.resource_version = Some(state.version.to_string());
        let json = serde_json::to_value(&lease).expect("json");
        state.lease = Some(lease);
        json
    }

    fn handle(
        &self,
        who: &str,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        let mut state = self.state();
        state.log.push((who.to_owned(), method.clone()));
        if state.partitioned.contains(who) {
            return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        let named = format!("{LEASES}/{NAME}");
        match (method, path) {
            (&Method::GET, p) if p == named => match &state.lease {
                Some(l) => (StatusCode::OK, serde_json::to_value(l).expect("json")),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (&Method::POST, LEASES) => {
                let lease: Lease = serde_json::from_slice(body).expect("a Lease");
                if state.race.as_ref().is_some_and(|(loser, _)| loser == who) {
                    let (_, winner) = state.race.take().expect("race");
                    let mut theirs = lease.clone();
                    theirs.spec.get_or_insert_default().holder_identity = Some(winner);
                    self.store(&mut state, theirs);
                }
                if state.lease.is_some() {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                let json = self.store(&mut state, lease);
                (StatusCode::CREATED, json)
            }
            (&Method::PUT, p) if p == named => {
                let lease: Lease = serde_json::from_slice(body).expect("a Lease");
                if state.race.as_ref().is_some_and(|(loser, _)| loser == who) {
                    let (_, winner) = state.race.take().expect("race");
                    let mut theirs = state.lease.clone().expect("a Lease");
                    let spec = theirs.spec.get_or_insert_default();
                    spec.holder_identity = Some(winner);
                    spec.renew_time = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
                    self.store(&mut state, theirs);
                }
                let current = state
                    .lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
                if current.is_none() {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                }
                if lease.metadata.resource_version != current {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                let json = self.store(&mut state, lease);
                (StatusCode::OK, json)
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound"),
        }
    }

    /// A kube client through which replica `who` talks to this stand-in.
    fn client(&self, who: &str) -> kube::Client {
        let server = self.clone();
        let who = who.to_owned();
        let service = tower::service_fn(move |req: Request<Body>| {
            let server = server.clone();
            let who = who.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let (code, json) = server.handle(&who, &parts.method, parts.uri.path(), &bytes);
                let late = server
                    .state()
                    .late
                    .get(&(who.clone(), parts.method.clone()))
                    .copied();
                if let Some(late) = late {
                    tokio::time::sleep(late).await;
                }
                let mut resp = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec(&json).expect("json"),
                )));
                *resp.status_mut() = code;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, kube::Error>(resp)
            }
        });
        kube::Client::new(service, NAMESPACE)
    }

    fn requests(&self, who: &str, method: &Method) -> usize {
        self.state()
            .log
            .iter()
            .filter(|(w, m)| w == who && m == method)
            .count()
    }
}

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig::new(NAME, NAMESPACE, identity, DURATION).expect("config")
}

fn elector(server: &ApiServer, identity: &str, clock: &Arc<PausedClock>) -> LeaderElector {
    LeaderElector::new(server.client(identity), config(identity)).with_clock(clock.clone())
}

/// A running replica: its leadership, every change of it with the time, and how to
/// stop it.
struct Replica {
    leadership: Leadership,
    history: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(server: &ApiServer, identity: &str, clock: &Arc<PausedClock>) -> Self {
        Self::start_with(elector(server, identity, clock))
    }

    fn start_with(elector: LeaderElector) -> Self {
        let leadership = elector.leadership();
        let history = Arc::new(Mutex::new(Vec::new()));
        let mut watcher = leadership.clone();
        let log = history.clone();
        tokio::spawn(async move {
            loop {
                let leader = watcher.changed().await;
                log.lock().expect("lock").push((Instant::now(), leader));
            }
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(elector.run(async {
            let _ = stopped.await;
        }));
        Self {
            leadership,
            history,
            stop: Some(stop),
            task,
        }
    }

    fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    fn history(&self) -> Vec<(Instant, bool)> {
        self.history.lock().expect("lock").clone()
    }

    /// When it first became the leader.
    fn led_at(&self) -> Option<Instant> {
        self.history().iter().find(|(_, l)| *l).map(|(t, _)| *t)
    }
}

/// Lets every task run (time is paused, so this is instant).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn renew_time(spec: &LeaseSpec) -> Timestamp {
    spec.renew_time.as_ref().expect("renewTime").0
}

#[tokio::test(start_paused = true)]
async fn a_single_replica_acquires_the_lease_and_renews_it() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let a = Replica::start(&server, "a", &clock);
    settle().await;
    assert!(a.is_leader());
    let spec = server.lease();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.acquire_time, spec.renew_time);
    let acquired = renew_time(&spec);

    // Renewed every third of the duration; acquireTime stays.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spec = server.lease();
    assert_eq!(renew_time(&spec), acquired + SignedDuration::from_secs(5));
    assert_eq!(spec.acquire_time.map(|t| t.0), Some(acquired));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(a.is_leader());
    assert_eq!(server.requests("a", &Method::PUT), 13, "a renewal every 5s");
    assert_eq!(a.history().len(), 1, "leadership never flickered");
}

#[tokio::test(start_paused = true)]
async fn a_second_replica_stays_standby_while_the_first_renews() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let a = Replica::start(&server, "a", &clock);
    settle().await;
    let b = Replica::start(&server, "b", &clock);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(a.is_leader());
    assert!(!b.is_leader());
    assert!(b.history().is_empty(), "b never led");
    assert_eq!(server.holder().as_deref(), Some("a"));
    assert_eq!(server.lease().lease_transitions, Some(0));
    assert_eq!(
        server.requests("b", &Method::PUT) + server.requests("b", &Method::POST),
        0,
        "a standby does not write a Lease that is held"
    );
    // It reads at most every third of the duration.
    assert!(server.requests("b", &Method::GET) <= 120 / 5 + 1);
}

#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_within_a_duration_of_seeing_the_last_renewal() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let a = Replica::start(&server, "a", &clock);
    // b reads out of step with a's renewals, so that reading every third of the
    // duration alone would take over too late.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let b = Replica::start(&server, "b", &clock);
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert!(a.is_leader() && !b.is_leader());

    // The leader dies just after a renewal: no more renewals, no release.
    a.task.abort();
    let stopped = Instant::now();
    settle().await;
    assert!(!a.is_leader(), "a dead elector's leadership reads false");
    let last_renewal = renew_time(&server.lease());
    while !b.is_leader() && stopped.elapsed() < DURATION * 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = b.led_at().expect("b took over");
    // b saw the last renewal at its next read, a third of the duration at most after.
    assert!(
        took_over - stopped <= DURATION + DURATION / 3,
        "took over {:?} after the leader stopped",
        took_over - stopped
    );
    // Not before the Lease expired: renewTime + duration, by the shared clock.
    let expired = last_renewal + SignedDuration::try_from(DURATION).expect("duration");
    let at = renew_time(&server.lease());
    assert!(
        at > expired,
        "took over at {at}, the Lease expired at {expired}"
    );
    let spec = server.lease();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.acquire_time.map(|t| t.0), Some(at));
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_before_a_standby_takes_over() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let registry = prometheus::Registry::new();
    let a = Replica::start_with(
        elector(&server, "a", &clock)
            .with_metrics(&registry)
            .expect("metrics"),
    );
    let gauge = || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "sluice_controller_leader")
            .map(|f| f.get_metric()[0].get_gauge().get_value())
    };
    assert_eq!(gauge(), Some(0.0));
    settle().await;
    assert_eq!(gauge(), Some(1.0));
    let b = Replica::start(&server, "b", &clock);
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert!(a.is_leader() && !b.is_leader());

    // The leader loses the API server; its pod keeps running.
    let cut = Instant::now();
    server.state().partitioned.insert("a".into());
    tokio::time::sleep(DURATION * 2).await;
    assert!(!a.is_leader() && b.is_leader());
    let stepped_down = a
        .history()
        .iter()
        .find(|(_, l)| !l)
        .map(|(t, _)| *t)
        .expect("a stepped down");
    let took_over = b.led_at().expect("b took over");
    assert!(
        stepped_down - cut <= DURATION * 2 / 3,
        "a stepped down {:?} after the cut: past the renew deadline",
        stepped_down - cut
    );
    assert!(stepped_down < took_over, "two leaders at once");
    assert!(took_over - cut <= DURATION);
    assert_eq!(gauge(), Some(0.0));

    // Back on the network, a finds b holding the Lease and stays standby.
    server.state().partitioned.clear();
    tokio::time::sleep(DURATION).await;
    assert!(!a.is_leader() && b.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_update_means_not_leader() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    // The Lease of a replica that went away a minute ago.
    let old = clock.now() - SignedDuration::from_secs(60);
    server.store(
        &mut server.state(),
        Lease {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("gone".into()),
                renew_time: Some(MicroTime(old)),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }),
        },
    );
    // a has not seen the record change for a duration yet: it waits, whatever the
    // record's timestamps say.
    let a = elector(&server, "a", &clock);
    assert!(matches!(
        a.try_acquire_or_renew().await.expect("round"),
        Observed::HeldBy { holder, .. } if holder == "gone"
    ));
    tokio::time::sleep(DURATION + Duration::from_millis(1)).await;
    // b writes it between a's read and a's write.
    server.state().race = Some(("a".into(), "b".into()));
    assert_eq!(
        a.try_acquire_or_renew().await.expect("round"),
        Observed::Conflict
    );
    assert!(!a.leadership().is_leader());
    assert_eq!(server.holder().as_deref(), Some("b"));
    // The next round sees b's claim.
    match a.try_acquire_or_renew().await.expect("round") {
        Observed::HeldBy { holder, .. } => assert_eq!(holder, "b"),
        other => panic!("expected b to hold the Lease, got {other:?}"),
    }

    // A leader that loses a race on renewal steps down at once.
    let server = ApiServer::default();
    let a = Replica::start(&server, "a", &clock);
    settle().await;
    assert!(a.is_leader());
    server.state().race = Some(("a".into(), "b".into()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!a.is_leader());
    assert_eq!(server.holder().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn of_two_replicas_creating_the_lease_one_wins() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    // b creates the Lease between a's read (none) and a's create.
    server.state().race = Some(("a".into(), "b".into()));
    let a = elector(&server, "a", &clock);
    assert_eq!(
        a.try_acquire_or_renew().await.expect("round"),
        Observed::Conflict
    );
    assert_eq!(server.holder().as_deref(), Some("b"));
    assert_eq!(server.requests("a", &Method::POST), 1);
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_at_the_next_read() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let mut a = Replica::start(&server, "a", &clock);
    settle().await;
    let b = Replica::start(&server, "b", &clock);
    tokio::time::sleep(Duration::from_secs(7)).await;

    let stopped = Instant::now();
    a.stop.take().expect("running").send(()).expect("stop");
    (&mut a.task).await.expect("a stopped");
    assert!(!a.is_leader());
    assert_eq!(server.holder(), None, "released");
    while !b.is_leader() && stopped.elapsed() < DURATION {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = b.led_at().expect("b took over") - stopped;
    assert!(
        took_over <= DURATION / 3,
        "took over {took_over:?} after the release, not at the next read"
    );
    assert_eq!(
        server.lease().lease_transitions,
        Some(1),
        "a new holder after a release is a transition, as client-go counts it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standby_whose_clock_is_ahead_does_not_take_over_while_the_leader_renews() {
    let server = ApiServer::default();
    let a = Replica::start(&server, "a", &PausedClock::new());
    settle().await;
    // b's wall clock is twelve seconds ahead: by it, a's renewTime + 15s is past three
    // seconds after each renewal, two before the next.
    let b = Replica::start(&server, "b", &PausedClock::skewed(12));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(a.is_leader());
    assert!(b.history().is_empty(), "b never led: {:?}", b.history());
    assert_eq!(server.holder().as_deref(), Some("a"));
    assert_eq!(server.lease().lease_transitions, Some(0));
    assert_eq!(server.requests("b", &Method::PUT), 0);
}

#[tokio::test(start_paused = true)]
async fn a_standby_whose_clock_is_behind_takes_over_in_time() {
    let server = ApiServer::default();
    let a = Replica::start(&server, "a", &PausedClock::new());
    settle().await;
    // A minute behind: by its clock, a's claim would last a minute longer.
    let b = Replica::start(&server, "b", &PausedClock::skewed(-60));
    tokio::time::sleep(Duration::from_secs(20)).await;
    a.task.abort();
    let stopped = Instant::now();
    tokio::time::sleep(DURATION * 2).await;
    let took_over = b.led_at().expect("b took over") - stopped;
    assert!(
        took_over <= DURATION + DURATION / 3,
        "took over {took_over:?} after the leader stopped"
    );
    assert_eq!(server.holder().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn renew_time_is_stamped_just_before_the_write() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let started = clock.now();
    // Reads are answered two seconds late.
    server
        .state()
        .late
        .insert(("a".into(), Method::GET), Duration::from_secs(2));
    let a = elector(&server, "a", &clock);
    assert_eq!(
        a.try_acquire_or_renew().await.expect("round"),
        Observed::Acquired
    );
    let written = renew_time(&server.lease());
    assert_eq!(
        written,
        started + SignedDuration::from_secs(2),
        "stamped when the write went out, not when the read did"
    );
    assert_eq!(server.lease().acquire_time.map(|t| t.0), Some(written));
}

#[tokio::test(start_paused = true)]
async fn the_renew_deadline_counts_from_the_start_of_the_last_renewal() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    let a = Replica::start(&server, "a", &clock);
    settle().await;
    assert!(a.is_leader());
    // Renewals take effect at once but are answered four seconds late.
    server
        .state()
        .late
        .insert(("a".into(), Method::PUT), Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(a.is_leader());
    let last_renewal = renew_time(&server.lease());
    let cut = Instant::now();
    server.state().partitioned.insert("a".into());
    tokio::time::sleep(DURATION * 2).await;
    let stepped_down = a
        .history()
        .iter()
        .find(|(_, l)| !l)
        .map(|(t, _)| *t)
        .expect("a stepped down");
    // The last renewal took effect at `last_renewal`: a standby that saw it may take
    // over a duration later, and a stops leading two thirds of it later, at most.
    let stepped_down_at =
        clock.now() - SignedDuration::try_from(stepped_down.elapsed()).expect("duration");
    let since_renewal = stepped_down_at.duration_since(last_renewal);
    assert!(stepped_down > cut);
    assert!(
        since_renewal <= SignedDuration::try_from(DURATION * 2 / 3).expect("duration"),
        "stepped down {since_renewal:?} after the last renewal took effect"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standby_round_gives_up_after_a_third_of_the_duration() {
    let server = ApiServer::default();
    let clock = PausedClock::new();
    // Every answer to b comes four seconds late: a read and a write take eight.
    for method in [Method::GET, Method::POST] {
        server
            .state()
            .late
            .insert(("b".into(), method), Duration::from_secs(4));
    }
    let b = Replica::start(&server, "b", &clock);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        !b.is_leader(),
        "a round that outlasts a third of the duration does not make a leader"
    );
}

#[test]
fn the_lease_configuration_is_checked() {
    assert!(LeaseConfig::new(NAME, NAMESPACE, "a", Duration::from_secs(3)).is_ok());
    for bad in [Duration::from_secs(2), Duration::from_millis(15_500)] {
        assert!(matches!(
            LeaseConfig::new(NAME, NAMESPACE, "a", bad),
            Err(LeaseError::Duration(_))
        ));
    }
    let err = LeaseConfig::new(NAME, NAMESPACE, "", DURATION).expect_err("empty identity");
    assert_eq!(err.to_string(), "the lease identity must not be empty");
    let c = config("a");
    assert_eq!(
        (c.renew_interval(), c.renew_deadline()),
        (Duration::from_secs(5), Duration::from_secs(10))
    );
}

const POOL: &str = r"
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: chat, namespace: agents, generation: 1}
spec:
  matches: [{pathPrefix: /chat}]
  backends: [{endpoints: ['10.0.0.1:8080']}]
";

#[tokio::test(start_paused = true)]
async fn only_the_leaders_watch_loop_sends_statuses() {
    let mut objects = Objects::default();
    manifest::parse_into(POOL, "fixture", &mut objects).expect("fixture parses");
    fn listed<K: Send + 'static>(objects: Vec<K>) -> sluice_controller::watch::EventStream<K> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(Event::Init).expect("send");
        for o in objects {
            tx.send(Event::InitApply(o)).expect("send");
        }
        tx.send(Event::InitDone).expect("send");
        // Keep the stream open: the loop runs until its sources end.
        std::mem::forget(tx);
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
    let sources = Sources {
        pools: vec![erased(listed(objects.pools))],
        policies: vec![erased(listed(Vec::<sluice_api::RatePolicy>::new()))],
        slices: vec![listed(Vec::new())],
        secrets: vec![listed(Vec::new())],
        slice_services: None,
        upstream_secret_namespaces: None,
    };
    let publisher = Publisher::new();
    let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let (leader, leadership) = watch::channel(false);
    let (tx, mut statuses) = watch::channel(StatusBatch::default());
    let core = Watch::new(
        sources,
        publisher.clone(),
        metrics,
        Duration::from_millis(50),
    )
    .with_statuses(tx)
    .with_leadership(Leadership::from(leadership));
    tokio::spawn(core.run());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        publisher.current().is_some(),
        "a standby compiles and publishes"
    );
    assert!(
        !statuses.has_changed().expect("open"),
        "but sends no status"
    );

    leader.send(true).expect("send");
    settle().await;
    assert!(
        statuses.has_changed().expect("open"),
        "the new leader catches up"
    );
    let batch = statuses.borrow_and_update().clone();
    assert_eq!(batch.pools.len(), 1);
    assert_eq!(batch.pools[0].0.metadata().name.as_deref(), Some("chat"));
}
