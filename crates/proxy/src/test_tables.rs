//! Route tables for the unit tests of this crate.

use sluice_api::RouteTable;
use sluice_api::table::{Algorithm, BackendTarget, Endpoint, Pool, Route};

/// A table with one pool `d/p` (one endpoint) behind one route on `prefix`.
pub(crate) fn one_pool(prefix: &str, version: u64) -> RouteTable {
    let pool = Pool {
        key: "d/p".into(),
        algorithm: Algorithm::RoundRobin,
        backends: vec![BackendTarget {
            name: "static[0]".into(),
            weight: 1,
            endpoints: vec![Endpoint::new("127.0.0.1:9")],
            ..Default::default()
        }],
        connect_timeout_ms: 1,
        request_timeout_ms: 1,
        ..Default::default()
    };
    let route = Route {
        pool: "d/p".into(),
        host: None,
        path_prefix: prefix.into(),
        headers: vec![],
    };
    let mut t = RouteTable::new(vec![route], vec![pool]);
    t.version = version;
    t
}
