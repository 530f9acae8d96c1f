//! [`RouteTable::validate`]: the invariants a consumer of a table relies on, checked
//! with the same [`rules`](super::rules) that `compile` applies.

use std::collections::{HashMap, HashSet};

use super::rules::{self, RuleError};
use super::{
    Algorithm, BackendProtocol, Consumer, KeyHash, Policy, Pool, RateKeyType, Route, RouteTable,
    TableError, is_host_port, upstream,
};

impl RouteTable {
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
            validate_pool(pool)?;
            for backend in &pool.backends {
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
            if let Err(problem) = route_form(route) {
                return Err(inconsistent(format!("route {index}"), problem));
            }
            if let Some(m) = &route.model {
                rule(
                    || format!("route {index} model"),
                    rules::model_name(m.text()),
                )?;
            }
        }
        for pool in &self.pools {
            if let Some(f) = &pool.fallback
                && !keys.contains(f.as_str())
            {
                return Err(inconsistent(
                    format!("pool {} fallback", pool.key),
                    format!("pool {f:?} is not in the table"),
                ));
            }
            if pool.fallback.is_none()
                && !(pool.fallback_when.is_empty() && pool.fallback_statuses.is_empty())
            {
                return Err(inconsistent(
                    format!("pool {} fallback", pool.key),
                    "when and statuses are only set with a fallback",
                ));
            }
            for s in &pool.fallback_statuses {
                rule(
                    || format!("pool {} fallback.statuses", pool.key),
                    rules::retry_status(*s),
                )?;
            }
        }
        for policy in &self.policies {
            validate_policy(policy, &keys)?;
        }
        validate_consumers(&self.consumers, &keys)
    }
}

fn inconsistent(at: String, problem: impl Into<String>) -> TableError {
    TableError::Inconsistent {
        at,
        problem: problem.into(),
    }
}

fn rule(at: impl FnOnce() -> String, checked: Result<(), RuleError>) -> Result<(), TableError> {
    checked.map_err(|error| TableError::Rule { at: at(), error })
}

/// The rules of one pool that its types do not already guarantee.
fn validate_pool(pool: &Pool) -> Result<(), TableError> {
    let key = &pool.key;
    for c in pool
        .capabilities
        .iter()
        .chain(pool.backends.iter().flat_map(|b| &b.capabilities))
    {
        rule(
            || format!("pool {key} capabilities"),
            rules::name(c, "capability"),
        )?;
    }
    for rewrite in pool
        .backends
        .iter()
        .filter_map(|b| b.model_rewrite.as_deref())
    {
        rule(
            || format!("pool {key} backends model.rewrite"),
            rules::model_name(rewrite),
        )?;
    }
    if (pool.algorithm == Algorithm::ConsistentHash) != pool.balancer.hash_on.is_some() {
        return Err(inconsistent(
            format!("pool {key} balancer"),
            "hashOn is set exactly when the algorithm is ConsistentHash",
        ));
    }
    rule(
        || format!("pool {key} balancer.boundedLoad"),
        rules::bounded_load(pool.balancer.bounded_load),
    )?;
    if let Some(r) = &pool.retries {
        rule(
            || format!("pool {key} retries.attempts"),
            rules::retry_attempts(r.attempts),
        )?;
        for s in &r.statuses {
            rule(
                || format!("pool {key} retries.statuses"),
                rules::retry_status(*s),
            )?;
        }
        rule(
            || format!("pool {key} retries"),
            rules::retry_budget(r.budget_ratio, r.min_retries_per_second),
        )?;
    }
    if let Some(o) = &pool.outlier {
        rule(
            || format!("pool {key} outlier.maxEjectionMs"),
            rules::ejection_times(o.base_ejection, o.max_ejection),
        )?;
    }
    for (i, b) in pool.backends.iter().enumerate() {
        if let Some(auth) = &b.auth
            && auth.header_value().is_err()
        {
            return Err(inconsistent(
                format!("pool {key} backends[{i}].auth"),
                "the credential is not a valid header value",
            ));
        }
        if let Some(host) = &b.host
            && (host.parse::<http::uri::Authority>().is_err() || host.contains('@'))
        {
            return Err(inconsistent(
                format!("pool {key} backends[{i}].host"),
                format!("{host:?} is not a host with an optional port"),
            ));
        }
        if let Some(tls) = &b.tls {
            if b.protocol == BackendProtocol::H2c {
                return Err(inconsistent(
                    format!("pool {key} backends[{i}].protocol"),
                    "H2c is cleartext: over TLS ALPN chooses the protocol",
                ));
            }
            upstream::client_config(tls, rustls::RootCertStore::empty)
                .map_err(|e| inconsistent(format!("pool {key} backends[{i}].tls"), e))?;
        }
    }
    if let Some(q) = &pool.queue {
        for tier in q.tier_priorities.keys() {
            rule(
                || format!("pool {key} queue.tierPriorities"),
                rules::name(tier, "tier"),
            )?;
        }
    }
    for t in &pool.access.tiers {
        rule(
            || format!("pool {key} access.tiers"),
            rules::name(t, "tier"),
        )?;
    }
    for c in &pool.access.consumers {
        rule(
            || format!("pool {key} access.consumers"),
            rules::consumer(c),
        )?;
    }
    for ns in &pool.access.namespaces {
        if ns != "*" && !rules::is_namespace(ns) {
            return Err(inconsistent(
                format!("pool {key} access.namespaces"),
                format!("{ns:?} is not a namespace"),
            ));
        }
    }
    if let Some(certs) = &pool.access.client_certificates {
        let field = || format!("pool {key} access.clientCertificates");
        certs
            .parsed_subjects()
            .map_err(|e| inconsistent(field(), e))?;
        certs.verifier().map_err(|e| inconsistent(field(), e))?;
    }
    Ok(())
}

/// A route's path prefix and host are in the form routing compares against.
fn route_form(route: &Route) -> Result<(), String> {
    let p = route.path_prefix.as_str();
    if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
        return Err(format!(
            "path prefix {p:?} must start with / and not end with one"
        ));
    }
    if p.contains("//")
        || p.split('/').any(|s| s == "." || s == "..")
        || p.bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(format!("path prefix {p:?} is not a plain, normalised path"));
    }
    if let Some(h) = &route.host
        && (h.contains(':')
            || h.ends_with('.')
            || h.bytes().any(|b| b.is_ascii_uppercase())
            || !is_host_port(&format!("{h}:1")))
    {
        return Err(format!("host {h:?} is not a lower-case host name"));
    }
    Ok(())
}

fn validate_policy(policy: &Policy, pools: &HashSet<&str>) -> Result<(), TableError> {
    let key = &policy.key;
    for p in &policy.pools {
        if !pools.contains(p.as_str()) {
            return Err(inconsistent(
                format!("policy {key} pools"),
                format!("pool {p:?} is not in the table"),
            ));
        }
    }
    if (policy.key_type == RateKeyType::Header) != policy.header.is_some() {
        return Err(inconsistent(
            format!("policy {key} header"),
            "a header is set exactly when the key type is Header",
        ));
    }
    if !policy.tiers.contains_key(&policy.default_tier) {
        return Err(inconsistent(
            format!("policy {key} defaultTier"),
            format!("{:?} is not one of the tiers", policy.default_tier),
        ));
    }
    for (name, limits) in &policy.tiers {
        rule(|| format!("policy {key} tiers"), rules::name(name, "tier"))?;
        if limits.requests.is_empty() && limits.tokens.is_empty() {
            return Err(inconsistent(
                format!("policy {key} tier {name}"),
                "has no limit",
            ));
        }
        for l in &limits.requests {
            let at = || format!("policy {key} tier {name} limits");
            rule(at, rules::period(l.period))?;
            rule(
                at,
                rules::request_limit(policy.algorithm, l.requests, l.period),
            )?;
        }
        for l in &limits.tokens {
            let at = || format!("policy {key} tier {name} tokenLimits");
            rule(at, rules::period(l.period))?;
            rule(at, rules::token_limit(l.tokens, l.period))?;
        }
    }
    Ok(())
}

fn validate_consumers(consumers: &[Consumer], pools: &HashSet<&str>) -> Result<(), TableError> {
    let mut owners: HashMap<&KeyHash, &str> = HashMap::new();
    let mut names = HashSet::new();
    for c in consumers {
        let at = || format!("consumer {}", c.name);
        rule(at, rules::consumer(&c.name))?;
        if !names.insert(c.name.as_str()) {
            return Err(inconsistent(at(), "appears twice"));
        }
        if let Some(t) = &c.tier {
            rule(at, rules::name(t, "tier"))?;
        }
        if c.key_hashes.is_empty() {
            return Err(inconsistent(at(), "has no API key"));
        }
        for h in &c.key_hashes {
            if let Some(other) = owners.insert(h, &c.name)
                && other != c.name
            {
                return Err(inconsistent(
                    at(),
                    format!("shares an API key with consumer {other}"),
                ));
            }
        }
        for p in c.pools.iter().flatten() {
            if !pools.contains(p.as_str()) {
                return Err(inconsistent(
                    format!("consumer {} pools", c.name),
                    format!("pool {p:?} is not in the table"),
                ));
            }
        }
    }
    Ok(())
}
