//! Route tables for the tests of the crates built on this one (feature `testing`, a
//! dev-dependency only).

use crate::RouteTable;
use crate::table::{Algorithm, BackendTarget, Endpoint, Millis, Pool, Route};

/// A table with one pool `d/p` behind one route on `prefix`: round robin over one
/// endpoint, `127.0.0.1:9` (the discard port, where nothing answers), 1 ms timeouts.
/// Version 0, as [`RouteTable::new`] makes it.
pub fn one_pool_table(prefix: &str) -> RouteTable {
    let pool = Pool {
        key: "d/p".into(),
        algorithm: Algorithm::RoundRobin,
        backends: vec![BackendTarget {
            name: "static[0]".into(),
            endpoints: vec![Endpoint::new("127.0.0.1:9")],
            ..Default::default()
        }],
        connect_timeout: Millis::MIN,
        request_timeout: Millis::MIN,
        ..Default::default()
    };
    let route = Route::new("d/p", prefix);
    RouteTable::new(vec![route], vec![pool])
}
