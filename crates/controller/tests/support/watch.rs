//! A watch loop fed from channels (a [`Harness`]), and the objects the tests list:
//! pools and EndpointSlices in namespace `agents`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use sluice_api::compile::SERVICE_NAME_LABEL;
use sluice_api::{AgentPool, AgentPoolStatus, Objects, RatePolicy, RouteTable, manifest};
use sluice_controller::Publisher;
use sluice_controller::proxies::ProxyRegistry;
use sluice_controller::status_writer::StatusBatch;
use sluice_controller::watch::{EventStream, Services, Sources, Watch, WatchMetrics, erased};
use tokio::sync::{mpsc, watch};

/// The watch loop's debounce in these tests.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Where a test sends one kind's watch events.
pub type Tx<K> = mpsc::UnboundedSender<Event<K>>;

/// A channel and the event stream it feeds.
pub fn feed<K: Send + 'static>() -> (Tx<K>, EventStream<K>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    (tx, stream)
}

/// A running watch loop and the ends of its channels.
pub struct Harness {
    pub pools: Tx<AgentPool>,
    pub policies: Tx<RatePolicy>,
    pub slices: Tx<EndpointSlice>,
    pub secrets: Tx<Secret>,
    pub publisher: Publisher,
    pub metrics: WatchMetrics,
    pub statuses: watch::Receiver<StatusBatch>,
}

impl Harness {
    pub fn start() -> Self {
        Self::start_with(|core, _| core)
    }

    /// A harness whose loop also counts the proxies of the returned registry.
    pub fn start_with_proxies() -> (Self, ProxyRegistry) {
        let mut registry = None;
        let h = Self::start_with(|core, publisher| {
            let r = ProxyRegistry::new(publisher.clone());
            registry = Some(r.clone());
            core.with_proxies(r)
        });
        (h, registry.expect("set by start_with"))
    }

    /// A harness whose loop asks for the slices of the Services the pools reference,
    /// as with kube's watchers: it keeps no other slice. The receiver tells which.
    pub fn start_selecting() -> (Self, watch::Receiver<Services>) {
        let (tx, rx) = watch::channel(Services::new());
        (Self::start_inner(|core, _| core, Some(tx)), rx)
    }

    pub fn start_with(configure: impl FnOnce(Watch, &Publisher) -> Watch) -> Self {
        Self::start_inner(configure, None)
    }

    fn start_inner(
        configure: impl FnOnce(Watch, &Publisher) -> Watch,
        slice_services: Option<watch::Sender<Services>>,
    ) -> Self {
        let (pools, pool_stream) = feed();
        let (policies, policy_stream) = feed();
        let (slices, slice_stream) = feed();
        let (secrets, secret_stream) = feed();
        let sources = Sources {
            pools: vec![erased(pool_stream)],
            policies: vec![erased(policy_stream)],
            slices: vec![slice_stream],
            secrets: vec![secret_stream],
            slice_services,
            upstream_secret_namespaces: None,
        };
        let publisher = Publisher::new();
        let metrics = WatchMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let (tx, statuses) = watch::channel(StatusBatch::default());
        let core =
            Watch::new(sources, publisher.clone(), metrics.clone(), DEBOUNCE).with_statuses(tx);
        tokio::spawn(configure(core, &publisher).run());
        Self {
            pools,
            policies,
            slices,
            secrets,
            publisher,
            metrics,
            statuses,
        }
    }

    /// Lists `objects` as each watcher's initial sync would.
    pub fn sync(&self, objects: Objects) {
        fn list<K>(tx: &Tx<K>, objects: Vec<K>) {
            tx.send(Event::Init).expect("send");
            for o in objects {
                tx.send(Event::InitApply(o)).expect("send");
            }
            tx.send(Event::InitDone).expect("send");
        }
        list(&self.pools, objects.pools);
        list(&self.policies, objects.policies);
        list(&self.slices, objects.slices);
        list(&self.secrets, objects.secrets);
    }

    pub fn compiles(&self) -> u64 {
        self.metrics.compiles.get()
    }

    pub fn table(&self) -> RouteTable {
        self.publisher
            .current()
            .map(|p| p.table.clone())
            .expect("a table is published")
    }

    pub fn pool_status(&self, name: &str) -> Option<AgentPoolStatus> {
        self.statuses
            .borrow()
            .pools
            .iter()
            .find(|(p, _)| p.metadata().name.as_deref() == Some(name))
            .map(|(_, s)| s.clone())
    }
}

/// Pool `chat` with one ready endpoint, 10.0.0.1, in slice `chat-1`.
pub fn chat() -> Objects {
    let mut objects = Objects::default();
    objects.pools.push(pool("chat", "chat"));
    objects
        .slices
        .push(slice("chat-1", "chat", &[("10.0.0.1", true, false)]));
    objects
}

/// Lets the loop run until its timers have fired (time is paused, so this is instant).
pub async fn settle() {
    tokio::time::sleep(DEBOUNCE * 4).await;
}

pub fn parse(yaml: &str) -> Objects {
    let mut objects = Objects::default();
    manifest::parse_into(yaml, "fixture", &mut objects).expect("fixture parses");
    objects
}

pub fn pool(name: &str, service: &str) -> AgentPool {
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: {name}, namespace: agents, generation: 2}}\nspec:\n  matches: [{{pathPrefix: /{name}}}]\n  backends: [{{service: {{name: {service}, port: http}}}}]\n"
    );
    parse(&yaml).pools.remove(0)
}

/// `(address, ready, terminating)`
pub fn slice(name: &str, service: &str, endpoints: &[(&str, bool, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("agents".into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                service.into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(address, ready, terminating)| Endpoint {
                addresses: vec![(*address).into()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(true),
                    terminating: Some(*terminating),
                }),
                zone: Some("zone-a".into()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}
