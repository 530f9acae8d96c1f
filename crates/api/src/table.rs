//! The `RouteTable`: the only thing that crosses from the control plane to the data plane.
//!
//! A table is immutable once built. The producer (the controller, or the proxy's own
//! file loader) stamps it with a `version` that grows with each publication and a
//! `revision` that is a digest of its content, so a consumer can tell a new table from
//! a re-sent one. Both sides call [`RouteTable::validate`]: a table that fails it is
//! never served.

use http::HeaderName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod client_cert;
mod policy;
mod pool;
pub mod rules;
pub mod units;
pub mod upstream;
mod validate;

pub use client_cert::{ClientCertificates, ClientSubject};
pub use policy::{
    Consumer, Enforcement, FailureMode, Policy, RateAlgorithm, RateKeyType, RequestLimit, Scope,
    TierLimits, TokenLimit,
};
pub use pool::{
    Access, Algorithm, BackendProtocol, BackendTarget, Balancer, Endpoint, FallbackWhen, HashOn,
    HealthCheck, HttpMethod, Jwt, Outlier, Pool, Queue, RetryPolicy,
};
pub use rules::RuleError;
pub use units::{KeyHash, Millis, Percent, Threshold};
pub use upstream::{ClientCertificate, Sensitive, UpstreamAuth, UpstreamTls};

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
    /// Headers that must be present with these exact values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// The method the request must have, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// What the `model` field of the JSON request body must be, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelMatch>,
}

impl Route {
    /// A route to `pool` on `path_prefix`, with no other condition.
    pub fn new(pool: impl Into<String>, path_prefix: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            host: None,
            path_prefix: path_prefix.into(),
            headers: Vec::new(),
            method: None,
            model: None,
        }
    }
}

/// A condition on the OpenAI-style `model` field of a JSON request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModelMatch {
    /// Exactly this name.
    Exact(String),
    /// A name beginning with this.
    Prefix(String),
}

impl ModelMatch {
    /// Whether `model` satisfies the condition.
    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelMatch::Exact(name) => model == name,
            ModelMatch::Prefix(prefix) => model.starts_with(prefix.as_str()),
        }
    }

    /// The name or prefix.
    pub fn text(&self) -> &str {
        match self {
            ModelMatch::Exact(s) | ModelMatch::Prefix(s) => s,
        }
    }
}

/// A header a route requires, with its exact value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// The header.
    #[serde(with = "units::header_name")]
    pub name: HeaderName,
    /// Its value, compared byte for byte.
    pub value: String,
}

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// A value breaks one of the [`rules`] that `compile` enforces.
    #[error("{at}: {error}")]
    Rule {
        /// Where: the pool, policy or consumer and the field.
        at: String,
        /// The rule broken.
        #[source]
        error: RuleError,
    },
    /// A reference does not resolve, or settings contradict each other (a policy's
    /// pool or default tier that is not there, a `Header` key without its header, a
    /// key hash shared by two consumers, a malformed route).
    #[error("{at}: {problem}")]
    Inconsistent {
        /// Where: the pool, policy, consumer or route and the field.
        at: String,
        /// What is wrong.
        problem: String,
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

    /// The table with every secret (client keys, injected credentials) replaced by
    /// `<redacted>`, for display: its revision no longer matches its content.
    pub fn redacted(&self) -> Self {
        let mut table = self.clone();
        for backend in table.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
            if let Some(cert) = backend
                .tls
                .as_mut()
                .and_then(|t| t.client_certificate.as_mut())
            {
                cert.key_pem.redact();
            }
            if let Some(auth) = backend.auth.as_mut() {
                auth.value.redact();
            }
        }
        table
    }

    /// Looks a pool up by key.
    pub fn pool(&self, key: &str) -> Option<&Pool> {
        self.pools
            .binary_search_by(|p| p.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.pools[i])
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
                endpoints: vec![Endpoint::new("127.0.0.1:9001")],
                ..Default::default()
            }],
            connect_timeout: Millis::at_least_one(1000),
            request_timeout: Millis::at_least_one(1000),
            ..Default::default()
        }
    }

    fn route(pool: &str) -> Route {
        Route::new(pool, "/")
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
        tampered.pools[0].request_timeout = Millis::at_least_one(5);
        assert!(matches!(
            tampered.validate(),
            Err(TableError::Revision { .. })
        ));
    }

    /// Re-stamps the revision, as a buggy producer would, so that only the broken rule
    /// is left for `validate` to find.
    fn restamped(mut t: RouteTable) -> RouteTable {
        t.revision = t.content_digest();
        t
    }

    #[test]
    fn validate_refuses_what_compile_refuses() {
        let base = RouteTable::new(vec![route("a/x")], vec![pool("a/x")]);
        let broken = |edit: &dyn Fn(&mut RouteTable)| {
            let mut t = base.clone();
            edit(&mut t);
            restamped(t).validate()
        };
        assert!(matches!(
            broken(&|t| {
                t.pools[0].retries = Some(RetryPolicy {
                    attempts: 11,
                    ..RetryPolicy::default()
                })
            }),
            Err(TableError::Rule {
                error: RuleError::TooManyAttempts(11),
                ..
            })
        ));
        assert!(matches!(
            broken(&|t| t.pools[0].algorithm = Algorithm::ConsistentHash),
            Err(TableError::Inconsistent { .. })
        ));
        assert!(matches!(
            broken(&|t| t.routes[0].path_prefix = "/a/".into()),
            Err(TableError::Inconsistent { .. })
        ));
        assert!(matches!(
            broken(&|t| t.routes[0].model = Some(ModelMatch::Prefix(String::new()))),
            Err(TableError::Rule {
                error: RuleError::BadModel(_),
                ..
            })
        ));
        assert!(matches!(
            broken(&|t| t.pools[0].backends[0].model_rewrite = Some("a\u{0}".into())),
            Err(TableError::Rule {
                error: RuleError::BadModel(_),
                ..
            })
        ));
        assert!(matches!(
            broken(&|t| t.pools[0].capabilities = vec!["a b".into()]),
            Err(TableError::Rule {
                error: RuleError::BadName { .. },
                ..
            })
        ));
        let limit = |requests: u32| RequestLimit {
            requests: std::num::NonZeroU32::new(requests).expect("nonzero"),
            period: Millis::MIN,
            burst: std::num::NonZeroU32::MIN,
        };
        let policy = |requests: u32| Policy {
            key: "a/p".into(),
            pools: vec!["a/x".into()],
            key_type: RateKeyType::Pool,
            header: None,
            per_pool: false,
            algorithm: RateAlgorithm::TokenBucket,
            tiers: [(
                "all".to_owned(),
                TierLimits {
                    requests: vec![limit(requests)],
                    tokens: vec![],
                },
            )]
            .into(),
            default_tier: "all".into(),
            scope: Scope::Local,
            failure_mode: FailureMode::Open,
            soft_percent: None,
            token_estimate: std::num::NonZeroU32::MIN,
            enforcement: Enforcement::Enforce,
        };
        assert_eq!(broken(&|t| t.policies = vec![policy(1_000)]), Ok(()));
        assert!(matches!(
            broken(&|t| t.policies = vec![policy(2_000_000)]),
            Err(TableError::Rule {
                error: RuleError::RateTooHigh { .. },
                ..
            })
        ));
        assert!(matches!(
            broken(&|t| {
                let mut p = policy(1);
                p.default_tier = "gold".into();
                t.policies = vec![p];
            }),
            Err(TableError::Inconsistent { .. })
        ));
        let hash = KeyHash::from_bytes([7; 32]);
        let consumer = |name: &str| Consumer {
            name: name.into(),
            tier: None,
            key_hashes: vec![hash],
            pools: None,
        };
        assert!(matches!(
            broken(&|t| t.consumers = vec![consumer("a"), consumer("b")]),
            Err(TableError::Inconsistent { .. })
        ));
    }

    #[test]
    fn a_zero_in_a_nonzero_field_fails_to_parse() {
        let table = RouteTable::new(vec![route("a/x")], vec![pool("a/x")]);
        let json = serde_json::to_string(&table).expect("serialise");
        assert!(json.contains("\"requestTimeoutMs\":1000"), "{json}");
        let zeroed = json.replace("\"weight\":1", "\"weight\":0");
        assert!(serde_json::from_str::<RouteTable>(&zeroed).is_err());
        let back: RouteTable = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, table);
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
