//! The routing state in force, swapped in whole when a new table arrives.
//!
//! A [`Runtime`] is built once per table: routes resolved to pool indices, a selector
//! per pool, upstream clients attached. Requests read it through an `ArcSwap` and
//! never take a lock; a table that fails validation is refused and the last good
//! runtime stays.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::table::{Algorithm, Pool};
use sluice_api::{RouteTable, TableError};
use sluice_balance::{RoundRobin, Selector, Weighted};

use crate::metrics::Metrics;

/// The pooled HTTP client used to reach agents.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The routing state built from one table.
#[derive(Debug)]
pub struct Runtime {
    /// The table this runtime was built from.
    pub table: RouteTable,
    /// The pools, in the table's order.
    pub pools: Vec<PoolRuntime>,
    route_pool: Vec<usize>,
}

impl Runtime {
    /// The pool route `index` sends to.
    pub fn pool_for_route(&self, index: usize) -> Option<&PoolRuntime> {
        self.route_pool.get(index).and_then(|&p| self.pools.get(p))
    }
}

/// One pool, ready to pick endpoints and send to them.
#[derive(Debug)]
pub struct PoolRuntime {
    /// `namespace/name`.
    pub key: String,
    /// All endpoint addresses, backends flattened in order.
    pub endpoints: Vec<String>,
    /// Deadline for a whole request.
    pub request_timeout: Duration,
    /// Connect timeout, as configured.
    pub connect_timeout: Duration,
    /// The pooled client for this pool's connect timeout.
    pub client: UpstreamClient,
    picker: Picker,
}

impl PoolRuntime {
    /// Picks the endpoint for the next request, as an index into `endpoints`.
    pub fn pick(&self) -> Option<usize> {
        match &self.picker {
            Picker::Flat(rr) => rr.pick(),
            Picker::Weighted { backends, members } => {
                let (offset, rr) = &members[backends.pick()?];
                rr.pick().map(|i| offset + i)
            }
        }
    }
}

#[derive(Debug)]
enum Picker {
    /// Round robin over every endpoint.
    Flat(RoundRobin),
    /// Weighted over backends that have endpoints, then round robin inside one:
    /// `members[i]` is the offset of backend `i`'s endpoints and its selector.
    Weighted {
        backends: Weighted,
        members: Vec<(usize, RoundRobin)>,
    },
}

fn picker(pool: &Pool) -> Picker {
    match pool.algorithm {
        Algorithm::Weighted => {
            let mut weights = Vec::new();
            let mut members = Vec::new();
            let mut offset = 0;
            for backend in &pool.backends {
                let n = backend.endpoints.iter().filter(|e| !e.terminating).count();
                if let (Some(w), true) = (NonZeroU32::new(backend.weight), n > 0) {
                    weights.push(w);
                    members.push((offset, RoundRobin::new(n)));
                }
                offset += n;
            }
            Picker::Weighted {
                backends: Weighted::new(&weights),
                members,
            }
        }
        // The compiler refuses the algorithms the proxy does not implement yet; a
        // table carrying one anyway is balanced round robin rather than dropped.
        Algorithm::RoundRobin
        | Algorithm::LeastRequest
        | Algorithm::PeakEwma
        | Algorithm::ConsistentHash => Picker::Flat(RoundRobin::new(
            pool.endpoints().filter(|e| !e.terminating).count(),
        )),
    }
}

/// Holds the runtime in force and builds new ones.
#[derive(Debug)]
pub struct TableStore {
    current: ArcSwapOption<Runtime>,
    clients: Mutex<HashMap<Duration, UpstreamClient>>,
    metrics: Metrics,
}

/// What [`TableStore::apply`] did with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table is now in force.
    Swapped,
    /// The table has the content of the one in force; only its version was noted.
    Unchanged,
}

impl TableStore {
    /// An empty store: not ready until the first table is applied.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            clients: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The runtime in force, if any.
    pub fn load(&self) -> Option<Arc<Runtime>> {
        self.current.load_full()
    }

    /// Validates `table`, builds its runtime and puts it in force.
    ///
    /// # Errors
    ///
    /// The [`TableError`] that made the table invalid; the runtime in force stays.
    pub fn apply(&self, table: RouteTable) -> Result<Applied, TableError> {
        if let Err(e) = table.validate() {
            self.metrics
                .table_updates
                .with_label_values(&["rejected"])
                .inc();
            return Err(e);
        }
        let version = i64::try_from(table.version).unwrap_or(i64::MAX);
        if let Some(current) = self.current.load().as_deref()
            && current.table.revision == table.revision
        {
            self.metrics.table_version.set(version);
            return Ok(Applied::Unchanged);
        }
        let runtime = self.build(table);
        self.current.store(Some(Arc::new(runtime)));
        self.metrics.table_version.set(version);
        self.metrics
            .table_updates
            .with_label_values(&["applied"])
            .inc();
        Ok(Applied::Swapped)
    }

    fn build(&self, table: RouteTable) -> Runtime {
        let index: HashMap<&str, usize> = table
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.as_str(), i))
            .collect();
        // `validate` checked every route names a pool.
        let route_pool = table
            .routes
            .iter()
            .map(|r| index.get(r.pool.as_str()).copied().unwrap_or(usize::MAX))
            .collect();
        let pools = table
            .pools
            .iter()
            .map(|p| {
                let connect_timeout = Duration::from_millis(p.connect_timeout_ms);
                PoolRuntime {
                    key: p.key.clone(),
                    // Terminating endpoints drain: they get no new requests.
                    endpoints: p
                        .endpoints()
                        .filter(|e| !e.terminating)
                        .map(|e| e.address.clone())
                        .collect(),
                    request_timeout: Duration::from_millis(p.request_timeout_ms),
                    connect_timeout,
                    client: self.client(connect_timeout),
                    picker: picker(p),
                }
            })
            .collect();
        Runtime {
            table,
            pools,
            route_pool,
        }
    }

    /// One pooled client per connect timeout, kept across tables so that a new table
    /// does not drop the idle connections of the old one.
    fn client(&self, connect_timeout: Duration) -> UpstreamClient {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::table::{BackendTarget, Endpoint, Route};

    fn table(algorithm: Algorithm, backends: &[(u32, &[&str])]) -> RouteTable {
        let pool = Pool {
            key: "d/p".into(),
            algorithm,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (w, eps))| BackendTarget {
                    name: format!("static[{i}]"),
                    weight: *w,
                    endpoints: eps.iter().map(|a| Endpoint::new(*a)).collect(),
                    ..Default::default()
                })
                .collect(),
            connect_timeout_ms: 100,
            request_timeout_ms: 1000,
            ..Default::default()
        };
        let route = Route {
            pool: "d/p".into(),
            host: None,
            path_prefix: "/".into(),
            headers: vec![],
        };
        RouteTable::new(vec![route], vec![pool])
    }

    #[tokio::test]
    async fn weighted_splits_by_backend_then_round_robin_inside() {
        let store = TableStore::new(Metrics::new());
        let t = table(
            Algorithm::Weighted,
            &[
                (3, &["127.0.0.1:1", "127.0.0.1:2"]),
                (0, &[]),
                (1, &["127.0.0.1:3"]),
            ],
        );
        // weight 0 is refused by validate; use an empty backend with weight 1 instead.
        assert!(store.apply(t).is_err());
        let t = table(
            Algorithm::Weighted,
            &[
                (3, &["127.0.0.1:1", "127.0.0.1:2"]),
                (1, &[]),
                (1, &["127.0.0.1:3"]),
            ],
        );
        assert_eq!(store.apply(t.clone()), Ok(Applied::Swapped));
        assert_eq!(store.apply(t), Ok(Applied::Unchanged));
        let rt = store.load().expect("loaded");
        let pool = rt.pool_for_route(0).expect("pool");
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[pool.pick().expect("endpoint")] += 1;
        }
        assert_eq!(counts, [150, 150, 100]);
    }

    #[tokio::test]
    async fn an_empty_pool_picks_nothing_and_a_bad_table_keeps_the_last() {
        let store = TableStore::new(Metrics::new());
        assert!(store.load().is_none());
        assert_eq!(
            store.apply(table(Algorithm::RoundRobin, &[(1, &[])])),
            Ok(Applied::Swapped)
        );
        let rt = store.load().expect("loaded");
        assert_eq!(rt.pool_for_route(0).expect("pool").pick(), None);

        let mut bad = table(Algorithm::RoundRobin, &[(1, &["127.0.0.1:1"])]);
        bad.revision = "tampered".into();
        assert!(store.apply(bad).is_err());
        assert_eq!(
            store.load().expect("kept").table.revision,
            rt.table.revision
        );
    }
}
