//! The `RouteTable`: the only thing that crosses from the control plane to the data plane.
//!
//! A table is immutable once built. The producer (the controller, or the proxy's own
//! file loader) stamps it with a `version` that grows with each publication and a
//! `revision` that is a digest of its content, so a consumer can tell a new table from
//! a re-sent one. Both sides call [`RouteTable::validate`]: a table that fails it is
//! never served.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod policy;
mod pool;

pub use crate::agent_pool::HeaderMatch;
pub use policy::{
    Consumer, FailureMode, Policy, RateAlgorithm, RateKeyType, RequestLimit, Scope, TierLimits,
    TokenLimit,
};
pub use pool::{
    Access, Algorithm, BackendProtocol, BackendTarget, Balancer, Endpoint, HashOn, HealthCheck,
    Jwt, Outlier, Pool, Queue, RetryPolicy,
};

/// A compiled, versioned routing table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    /// Grows by one with each table a producer publishes.
    pub version: u64,
    /// Hex digest of `routes` and `pools`: equal revisions mean equal content.
    pub revision: String,
    /// Matching rules in precedence order: the first that matches wins.
    pub routes: Vec<Route>,
    /// The pools routes point to, sorted by key.
    pub pools: Vec<Pool>,
    /// Rate policies, sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    /// Consumers, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
}

/// One matching rule, pointing at a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The key (`namespace/name`) of the pool this route sends to.
    pub pool: String,
    /// Lower-case host name the request must carry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Segment-wise path prefix, without a trailing slash (`/` itself for the root).
    pub path_prefix: String,
    /// Headers (names in lower case) that must be present with these exact values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A route names a pool the table does not have. Not retryable: the producer is buggy
    /// or the table was corrupted.
    #[error("route {index} points to unknown pool {pool:?}")]
    UnknownPool {
        /// Index of the route.
        index: usize,
        /// The pool it names.
        pool: String,
    },
    /// Two pools share a key.
    #[error("pool {0:?} appears twice")]
    DuplicatePool(String),
    /// A backend weight is zero.
    #[error("pool {pool:?} backend {backend:?} has weight 0")]
    ZeroWeight {
        /// The pool.
        pool: String,
        /// The backend.
        backend: String,
    },
    /// An endpoint address is not `host:port`.
    #[error("pool {pool:?} endpoint {address:?} is not host:port")]
    BadAddress {
        /// The pool.
        pool: String,
        /// The address.
        address: String,
    },
    /// The revision does not match the content.
    #[error("revision {claimed} does not match the content ({actual})")]
    Revision {
        /// The revision the table carries.
        claimed: String,
        /// The digest of its content.
        actual: String,
    },
}

impl RouteTable {
    /// Builds a table with version 0 and its revision computed from the content.
    pub fn new(routes: Vec<Route>, pools: Vec<Pool>) -> Self {
        Self::with_policies(routes, pools, Vec::new(), Vec::new())
    }

    /// Builds a table with rate policies and consumers too.
    pub fn with_policies(
        routes: Vec<Route>,
        pools: Vec<Pool>,
        policies: Vec<Policy>,
        consumers: Vec<Consumer>,
    ) -> Self {
        let mut table = Self {
            version: 0,
            revision: String::new(),
            routes,
            pools,
            policies,
            consumers,
        };
        table.revision = table.content_digest();
        table
    }

    /// The digest of the content (the version is not part of it).
    pub fn content_digest(&self) -> String {
        let mut hasher = Sha256::new();
        // Serialising plain structs to JSON cannot fail.
        let content =
            serde_json::to_vec(&(&self.routes, &self.pools, &self.policies, &self.consumers))
                .unwrap_or_default();
        hasher.update(&content);
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Looks a pool up by key.
    pub fn pool(&self, key: &str) -> Option<&Pool> {
        self.pools
            .binary_search_by(|p| p.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.pools[i])
    }

    /// Checks the invariants a consumer relies on.
    ///
    /// # Errors
    ///
    /// The first broken invariant, as a [`TableError`].
    pub fn validate(&self) -> Result<(), TableError> {
        let actual = self.content_digest();
        if actual != self.revision {
            return Err(TableError::Revision {
                claimed: self.revision.clone(),
                actual,
            });
        }
        let mut keys = HashSet::new();
        for pool in &self.pools {
            if !keys.insert(pool.key.as_str()) {
                return Err(TableError::DuplicatePool(pool.key.clone()));
            }
            for backend in &pool.backends {
                if backend.weight == 0 {
                    return Err(TableError::ZeroWeight {
                        pool: pool.key.clone(),
                        backend: backend.name.clone(),
                    });
                }
                for ep in &backend.endpoints {
                    if !is_host_port(&ep.address) {
                        return Err(TableError::BadAddress {
                            pool: pool.key.clone(),
                            address: ep.address.clone(),
                        });
                    }
                }
            }
        }
        if !self.pools.windows(2).all(|w| w[0].key < w[1].key) {
            // Sorted order is what `pool` relies on; duplicates were caught above.
            return Err(TableError::DuplicatePool(
                "<pools not sorted by key>".into(),
            ));
        }
        for (index, route) in self.routes.iter().enumerate() {
            if !keys.contains(route.pool.as_str()) {
                return Err(TableError::UnknownPool {
                    index,
                    pool: route.pool.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `s` is `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address,
/// and a port from 1 to 65535).
pub fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
    {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:8080",
            "agent-a.default.svc:9000",
            "localhost:1",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:99999",
            ":80",
            "a b:80",
            "-a:80",
            "::1:80x",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    fn pool(key: &str) -> Pool {
        Pool {
            key: key.into(),
            algorithm: Algorithm::RoundRobin,
            backends: vec![BackendTarget {
                name: "static[0]".into(),
                weight: 1,
                endpoints: vec![Endpoint::new("127.0.0.1:9001")],
                ..Default::default()
            }],
            connect_timeout_ms: 1000,
            request_timeout_ms: 1000,
            ..Default::default()
        }
    }

    fn route(pool: &str) -> Route {
        Route {
            pool: pool.into(),
            host: None,
            path_prefix: "/".into(),
            headers: vec![],
        }
    }

    #[test]
    fn validate_catches_broken_tables() {
        let good = RouteTable::new(vec![route("a/x")], vec![pool("a/x")]);
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.pool("a/x").map(|p| p.key.as_str()), Some("a/x"));

        let dangling = RouteTable::new(vec![route("a/y")], vec![pool("a/x")]);
        assert!(matches!(
            dangling.validate(),
            Err(TableError::UnknownPool { .. })
        ));

        let dup = RouteTable::new(vec![], vec![pool("a/x"), pool("a/x")]);
        assert!(matches!(dup.validate(), Err(TableError::DuplicatePool(_))));

        let mut tampered = good.clone();
        tampered.pools[0].request_timeout_ms = 5;
        assert!(matches!(
            tampered.validate(),
            Err(TableError::Revision { .. })
        ));

        let mut zero = RouteTable::new(vec![], vec![pool("a/x")]);
        zero.pools[0].backends[0].weight = 0;
        zero.revision = zero.content_digest();
        assert!(matches!(
            zero.validate(),
            Err(TableError::ZeroWeight { .. })
        ));
    }

    #[test]
    fn revision_ignores_version_and_tracks_content() {
        let a = RouteTable::new(vec![route("a/x")], vec![pool("a/x")]);
        let mut b = a.clone();
        b.version = 7;
        assert_eq!(a.content_digest(), b.content_digest());
        let c = RouteTable::new(vec![], vec![pool("a/x")]);
        assert_ne!(a.revision, c.revision);
    }
}
