//! Compiling one AgentPool.

use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderName;

use super::slices::{SliceIndex, resolve_service};
use super::upstream::{self, SecretIndex};
use super::{Cx, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS, millis};
use crate::AgentPool;
use crate::agent_pool::{self, Algorithm, Backend, FallbackWhen, LoadBalancing};
use crate::table::{
    Access, BackendTarget, Balancer, ClientCertificates, ClientSubject, Endpoint, HashOn,
    HealthCheck, Jwt, Millis, Outlier, Percent, Pool, Queue, RetryPolicy, Route, is_host_port,
    rules,
};

/// What a pool's backends refer to: Services' EndpointSlices and Secrets.
pub(super) struct Refs<'a> {
    pub(super) slices: SliceIndex<'a>,
    pub(super) secrets: SecretIndex<'a>,
}

/// Compiles `pool`, or returns `None` (with errors in `cx`) when it is invalid.
pub(super) fn compile_pool(
    pool: &AgentPool,
    key: &str,
    refs: &Refs<'_>,
    cx: &mut Cx,
) -> Option<(Pool, Vec<(Route, usize)>)> {
    if pool.metadata.name.as_deref().unwrap_or_default().is_empty() {
        cx.error("metadata.name", "is missing");
        return None;
    }
    if super::bounds::refused(crate::schema::Kind::AgentPool, pool, cx) {
        return None;
    }
    let spec = &pool.spec;
    let namespace = pool.metadata.namespace.as_deref().unwrap_or("default");

    if spec.matches.is_empty() {
        cx.error("spec.matches", "needs at least one entry");
    }
    let mut routes = Vec::new();
    for (i, m) in spec.matches.iter().enumerate() {
        if let Some(route) = super::route::compile_match(m, key, &format!("spec.matches[{i}]"), cx)
        {
            routes.push((route, i));
        }
    }

    if spec.backends.is_empty() {
        cx.error("spec.backends", "needs at least one entry");
    }
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        if let Some(backend) = compile_backend(b, i, namespace, refs, cx) {
            backends.push(backend);
        }
    }
    let capabilities = names(&spec.capabilities, "spec.capabilities", "capability", cx);

    let (algorithm, balancer) = compile_balancer(&spec.load_balancing, cx);
    let timeouts = spec.timeouts.clone().unwrap_or_default();
    let connect_timeout = duration(
        timeouts.connect,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "spec.timeouts.connect",
        cx,
    );
    let request_timeout = duration(
        timeouts.request,
        DEFAULT_REQUEST_TIMEOUT_MS,
        "spec.timeouts.request",
        cx,
    );
    let first_byte_timeout = timeouts
        .first_byte
        .map(|d| duration(Some(d), 1, "spec.timeouts.firstByte", cx));
    let idle_timeout = timeouts
        .idle
        .map(|d| duration(Some(d), 1, "spec.timeouts.idle", cx));
    let stream_max_duration = timeouts
        .stream_max_duration
        .map(|d| duration(Some(d), 1, "spec.timeouts.streamMaxDuration", cx));

    // Requests over `maxConcurrency` wait in the queue: a pool that sets it without
    // a queue block queues with the defaults (`maxDepth: 0` refuses at once).
    let limited = spec.backends.iter().any(|b| b.max_concurrency.is_some());
    if spec.queue.is_some() && !limited {
        cx.error(
            "spec.queue",
            "is only used with backends[].maxConcurrency: without it no endpoint is ever full",
        );
    }
    if spec.fallback.as_ref().is_some_and(|f| {
        f.when
            .iter()
            .any(|w| *w != agent_pool::FallbackWhen::Unavailable)
    }) && !limited
    {
        cx.error(
            "spec.fallback.when",
            "QueueFull and QueueTimeout are only used with backends[].maxConcurrency",
        );
    }
    let queue = match &spec.queue {
        Some(q) => Some(compile_queue(q, cx)),
        None if spec.backends.iter().any(|b| b.max_concurrency.is_some()) => {
            Some(compile_queue(&agent_pool::QueueSpec::default(), cx))
        }
        None => None,
    };
    let retries = spec.retries.as_ref().map(|r| compile_retries(r, cx));
    let health_check = spec
        .health_check
        .as_ref()
        .map(|h| compile_health_check(h, cx));
    let outlier = spec
        .outlier_detection
        .as_ref()
        .map(|o| compile_outlier(o, cx));
    let fallback = spec.fallback.as_ref().map(|f| {
        if f.name == pool.metadata.name.as_deref().unwrap_or_default() {
            cx.error("spec.fallback.name", "a pool cannot be its own fallback");
        }
        format!("{namespace}/{}", f.name)
    });
    let (fallback_when, fallback_statuses) = spec
        .fallback
        .as_ref()
        .map(|f| compile_fallback_on(f, cx))
        .unwrap_or_default();
    let has_jwt = spec
        .authentication
        .as_ref()
        .is_some_and(|a| a.jwt.is_some());
    let access = spec.access.as_ref().map_or_else(Access::default, |a| {
        compile_access(a, namespace, has_jwt, &refs.secrets, cx)
    });
    let jwt = spec
        .authentication
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|j| compile_jwt(j, cx));

    if cx.has_errors() {
        return None;
    }
    Some((
        Pool {
            key: key.to_owned(),
            algorithm,
            balancer,
            backends,
            capabilities,
            connect_timeout,
            request_timeout,
            first_byte_timeout,
            idle_timeout,
            stream_max_duration,
            queue,
            retries,
            health_check,
            outlier,
            fallback,
            fallback_when,
            fallback_statuses,
            access,
            jwt,
        },
        routes,
    ))
}

/// A duration of whole milliseconds (at least one), `default_ms` when absent; zero is
/// an error.
fn duration(value: Option<crate::Duration>, default_ms: u64, field: &str, cx: &mut Cx) -> Millis {
    match value {
        None => Millis::at_least_one(default_ms),
        Some(d) if d.get().is_zero() => {
            cx.error(field, "must be greater than 0");
            Millis::at_least_one(default_ms)
        }
        Some(d) => Millis::at_least_one(millis(d)),
    }
}

/// A count that must be at least one, `default` when absent.
fn at_least_one(value: Option<u32>, default: NonZeroU32, field: &str, cx: &mut Cx) -> NonZeroU32 {
    match value.map(NonZeroU32::new) {
        None => default,
        Some(Some(n)) => n,
        Some(None) => {
            cx.error(field, "must be at least 1");
            default
        }
    }
}

/// A header name from a resource, lower-cased.
pub(super) fn header_name(name: &str, field: &str, cx: &mut Cx) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) if http_token(name) => Some(h),
        _ => {
            cx.error(field, format!("{name:?} is not a valid header name"));
            None
        }
    }
}

/// Validated, sorted, de-duplicated names (capabilities, tiers, consumers).
fn names(list: &[String], field: &str, what: &'static str, cx: &mut Cx) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        match rules::name(name, what) {
            Ok(()) => out.push(name.clone()),
            Err(e) => cx.error(&format!("{field}[{i}]"), e.to_string()),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn compile_balancer(lb: &LoadBalancing, cx: &mut Cx) -> (Algorithm, Balancer) {
    let defaults = Balancer::default();
    let mut balancer = Balancer::default();
    let algorithm = lb.algorithm;
    if let Some(ewma) = &lb.peak_ewma {
        if algorithm != Algorithm::PeakEwma {
            cx.error(
                "spec.loadBalancing.peakEwma",
                "is only used with algorithm PeakEwma",
            );
        }
        if let Some(d) = ewma.decay {
            balancer.ewma_decay = duration(
                Some(d),
                defaults.ewma_decay.as_millis(),
                "spec.loadBalancing.peakEwma.decay",
                cx,
            );
        }
        if let Some(d) = ewma.default_latency {
            balancer.ewma_default_latency = duration(
                Some(d),
                defaults.ewma_default_latency.as_millis(),
                "spec.loadBalancing.peakEwma.defaultLatency",
                cx,
            );
        }
    }
    match (&lb.consistent_hash, algorithm) {
        (None, Algorithm::ConsistentHash) => cx.error(
            "spec.loadBalancing.consistentHash",
            "is required with algorithm ConsistentHash: set header, cookie or clientIp",
        ),
        (Some(_), a) if a != Algorithm::ConsistentHash => {
            cx.error(
                "spec.loadBalancing.consistentHash",
                "is only used with algorithm ConsistentHash",
            );
        }
        (Some(h), _) => {
            let field = "spec.loadBalancing.consistentHash";
            let on = match (&h.header, &h.cookie, h.client_ip.unwrap_or(false)) {
                (Some(name), None, false) => {
                    header_name(name, &format!("{field}.header"), cx).map(HashOn::Header)
                }
                (None, Some(name), false) => {
                    if http_token(name) {
                        Some(HashOn::Cookie(name.clone()))
                    } else {
                        cx.error(
                            &format!("{field}.cookie"),
                            format!("{name:?} is not a valid cookie name"),
                        );
                        None
                    }
                }
                (None, None, true) => Some(HashOn::ClientIp),
                _ => {
                    cx.error(field, "set exactly one of header, cookie or clientIp: true");
                    None
                }
            };
            balancer.hash_on = on;
            if let Some(factor) = h.bounded_load {
                match rules::bounded_load(factor) {
                    Ok(()) => balancer.bounded_load = factor,
                    Err(e) => cx.error(&format!("{field}.boundedLoad"), e.to_string()),
                }
            }
        }
        (None, _) => {}
    }
    (algorithm, balancer)
}

fn compile_queue(q: &agent_pool::QueueSpec, cx: &mut Cx) -> Queue {
    let mut tier_priorities = std::collections::BTreeMap::new();
    for (tier, priority) in &q.tier_priorities {
        if rules::is_name(tier) {
            tier_priorities.insert(tier.clone(), *priority);
        } else {
            cx.error(
                &format!("spec.queue.tierPriorities.{tier}"),
                format!("{tier:?} is not a valid tier name"),
            );
        }
    }
    Queue {
        max_depth: q.max_depth.unwrap_or(100),
        timeout: duration(q.timeout, 30_000, "spec.queue.timeout", cx),
        default_priority: q.default_priority.unwrap_or(0),
        tier_priorities,
    }
}

fn compile_retries(r: &agent_pool::Retries, cx: &mut Cx) -> RetryPolicy {
    let attempts = r.attempts.unwrap_or(2);
    if let Err(e) = rules::retry_attempts(attempts) {
        cx.error("spec.retries.attempts", e.to_string());
    }
    if attempts == 0 && !r.statuses.is_empty() {
        cx.error(
            "spec.retries.statuses",
            "are only retried with attempts above 0",
        );
    }
    let mut statuses = Vec::new();
    for (i, s) in r.statuses.iter().enumerate() {
        match rules::retry_status(*s) {
            Ok(()) => statuses.push(*s),
            Err(e) => cx.error(&format!("spec.retries.statuses[{i}]"), e.to_string()),
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    let budget_ratio = r.budget_ratio.unwrap_or(0.2);
    let min_retries_per_second = r.min_retries_per_second.unwrap_or(10);
    match rules::retry_budget(budget_ratio, min_retries_per_second) {
        Ok(()) => {}
        Err(e @ rules::RuleError::BudgetRatio(_)) => {
            cx.error("spec.retries.budgetRatio", e.to_string());
        }
        Err(e) => cx.error("spec.retries.minRetriesPerSecond", e.to_string()),
    }
    RetryPolicy {
        attempts,
        statuses,
        budget_ratio,
        min_retries_per_second,
    }
}

/// When a pool's fallback takes its requests: the reasons (`Unavailable` alone by
/// default), sorted, and the answer statuses, sorted.
fn compile_fallback_on(f: &agent_pool::Fallback, cx: &mut Cx) -> (Vec<FallbackWhen>, Vec<u16>) {
    let mut when = f.when.clone();
    if when.is_empty() {
        when.push(FallbackWhen::Unavailable);
    }
    when.sort_unstable();
    when.dedup();
    let mut statuses = Vec::new();
    for (i, s) in f.statuses.iter().enumerate() {
        match rules::retry_status(*s) {
            Ok(()) => statuses.push(*s),
            Err(e) => cx.error(&format!("spec.fallback.statuses[{i}]"), e.to_string()),
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    (when, statuses)
}

fn compile_health_check(h: &agent_pool::HealthCheck, cx: &mut Cx) -> HealthCheck {
    let path = h.path.clone().unwrap_or_else(|| "/healthz".into());
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        cx.error(
            "spec.healthCheck.path",
            format!("{path:?} must be a path starting with /"),
        );
    }
    HealthCheck {
        path,
        interval: duration(h.interval, 5_000, "spec.healthCheck.interval", cx),
        timeout: duration(h.timeout, 1_000, "spec.healthCheck.timeout", cx),
        healthy_threshold: at_least_one(
            h.healthy_threshold,
            NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            "spec.healthCheck.healthyThreshold",
            cx,
        ),
        unhealthy_threshold: at_least_one(
            h.unhealthy_threshold,
            NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            "spec.healthCheck.unhealthyThreshold",
            cx,
        ),
    }
}

fn compile_outlier(o: &agent_pool::OutlierDetection, cx: &mut Cx) -> Outlier {
    let consecutive_failures = at_least_one(
        o.consecutive_failures,
        NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
        "spec.outlierDetection.consecutiveFailures",
        cx,
    );
    let requested_percent = o.max_ejection_percent.unwrap_or(50);
    let max_ejection_percent = Percent::new(u64::from(requested_percent)).unwrap_or_else(|| {
        cx.error(
            "spec.outlierDetection.maxEjectionPercent",
            format!("{requested_percent} is more than 100"),
        );
        Percent::saturating(50)
    });
    let base_ejection = duration(
        o.base_ejection_time,
        30_000,
        "spec.outlierDetection.baseEjectionTime",
        cx,
    );
    let max_ejection = duration(
        o.max_ejection_time,
        300_000,
        "spec.outlierDetection.maxEjectionTime",
        cx,
    );
    if let Err(e) = rules::ejection_times(base_ejection, max_ejection) {
        cx.error("spec.outlierDetection.maxEjectionTime", e.to_string());
    }
    Outlier {
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejection_percent,
    }
}

/// The consumer a pool in `namespace` means by `entry` of `spec.access.consumers`:
/// `namespace/name` for a bare name, the entry itself when qualified; `None` when it is
/// neither.
pub(super) fn qualify_consumer(entry: &str, namespace: &str) -> Option<String> {
    let qualified = if entry.contains('/') {
        entry.to_owned()
    } else {
        format!("{namespace}/{entry}")
    };
    rules::consumer(&qualified).is_ok().then_some(qualified)
}

fn compile_access(
    a: &agent_pool::Access,
    namespace: &str,
    has_jwt: bool,
    secrets: &SecretIndex<'_>,
    cx: &mut Cx,
) -> Access {
    let tiers = names(&a.tiers, "spec.access.tiers", "tier", cx);
    let mut consumers = Vec::new();
    for (i, entry) in a.consumers.iter().enumerate() {
        match qualify_consumer(entry, namespace) {
            Some(qualified) => {
                consumers.push(qualified);
                // A JWT names its subject without a namespace.
                if has_jwt && !entry.contains('/') {
                    consumers.push(entry.clone());
                }
            }
            None => cx.error(
                &format!("spec.access.consumers[{i}]"),
                format!(
                    "{entry:?} is not a consumer name (1-63 letters, digits, `-`, `_`, `.`), \
                     optionally after a namespace and `/`"
                ),
            ),
        }
    }
    consumers.sort();
    consumers.dedup();
    let mut namespaces = Vec::new();
    for (i, ns) in a.consumer_namespaces.iter().enumerate() {
        if ns == "*" || rules::is_namespace(ns) {
            namespaces.push(ns.clone());
        } else {
            cx.error(
                &format!("spec.access.consumerNamespaces[{i}]"),
                format!("{ns:?} is not a namespace name or `*`"),
            );
        }
    }
    namespaces.sort();
    namespaces.dedup();
    if !namespaces.is_empty() && tiers.is_empty() {
        cx.warning(
            "spec.access.consumerNamespaces",
            "admits the tiers of other namespaces' consumers, but no tier is listed",
        );
    }
    let client_certificates = a
        .client_certificates
        .as_ref()
        .and_then(|c| compile_client_certificates(c, namespace, secrets, cx));
    if !a.public && tiers.is_empty() && consumers.is_empty() && a.client_certificates.is_none() {
        cx.warning(
            "spec.access",
            "allows no one: set public: true, tiers, consumers or clientCertificates",
        );
    }
    Access {
        public: a.public,
        tiers,
        consumers,
        namespaces,
        client_certificates,
    }
}

/// The client certificates a pool requires, its CA read from its Secret.
fn compile_client_certificates(
    c: &agent_pool::ClientCertificates,
    namespace: &str,
    secrets: &SecretIndex<'_>,
    cx: &mut Cx,
) -> Option<ClientCertificates> {
    const FIELD: &str = "spec.access.clientCertificates";
    let mut ok = true;
    if c.subjects.is_empty() {
        cx.error(&format!("{FIELD}.subjects"), "needs at least one entry");
        ok = false;
    }
    for (i, subject) in c.subjects.iter().enumerate() {
        if let Err(e) = ClientSubject::parse(subject) {
            cx.error(&format!("{FIELD}.subjects[{i}]"), e.to_string());
            ok = false;
        }
    }
    let field = format!("{FIELD}.caSecretRef");
    let ca_pem =
        upstream::secret_value(&c.ca_secret_ref, "ca.crt", namespace, secrets, &field, cx)?;
    let mut subjects = c.subjects.clone();
    // The first listed is the name a certificate holding several gets: keep the order,
    // drop repeats.
    let mut seen = std::collections::HashSet::new();
    subjects.retain(|s| seen.insert(s.clone()));
    let compiled = ClientCertificates { ca_pem, subjects };
    if let Err(e) = compiled.verifier() {
        let message = e.strip_prefix("caPem: ").unwrap_or(&e);
        cx.error(&field, message);
        return None;
    }
    ok.then_some(compiled)
}

fn compile_jwt(j: &agent_pool::JwtSpec, cx: &mut Cx) -> Jwt {
    let field = "spec.authentication.jwt";
    if j.issuer.is_empty() {
        cx.error(&format!("{field}.issuer"), "is empty");
    }
    if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
        cx.error(
            &format!("{field}.audiences"),
            "needs at least one non-empty audience",
        );
    }
    match (&j.jwks_uri, &j.jwks) {
        (Some(uri), None) => {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                cx.error(
                    &format!("{field}.jwksUri"),
                    format!("{uri:?} is not an http(s) URL"),
                );
            }
        }
        (None, Some(jwks)) => match serde_json::from_str::<serde_json::Value>(jwks) {
            Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
            Ok(_) => cx.error(
                &format!("{field}.jwks"),
                "is not a JSON Web Key Set (no \"keys\" array)",
            ),
            Err(e) => cx.error(&format!("{field}.jwks"), format!("is not JSON: {e}")),
        },
        _ => cx.error(field, "set exactly one of jwksUri or jwks"),
    }
    let leeway = j.leeway.map_or(Duration::from_secs(30), |d| d.get());
    if leeway > Duration::from_secs(300) {
        cx.error(&format!("{field}.leeway"), "is more than 5m");
    }
    if let Some(t) = &j.default_tier
        && !rules::is_name(t)
    {
        cx.error(
            &format!("{field}.defaultTier"),
            format!("{t:?} is not a valid tier name"),
        );
    }
    Jwt {
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        jwks_uri: j.jwks_uri.clone(),
        jwks: j.jwks.clone(),
        consumer_claim: j.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
        tier_claim: j.tier_claim.clone().unwrap_or_else(|| "tier".into()),
        default_tier: j.default_tier.clone(),
        leeway,
    }
}

/// Whether `s` is an HTTP token (a valid header name).
pub(super) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn compile_backend(
    b: &Backend,
    i: usize,
    namespace: &str,
    refs: &Refs<'_>,
    cx: &mut Cx,
) -> Option<BackendTarget> {
    let Refs { slices, secrets } = refs;
    let field = format!("spec.backends[{i}]");
    let weight = at_least_one(
        Some(b.weight),
        NonZeroU32::MIN,
        &format!("{field}.weight"),
        cx,
    );
    let max_concurrency = b.max_concurrency.map(|m| {
        at_least_one(
            Some(m),
            NonZeroU32::MIN,
            &format!("{field}.maxConcurrency"),
            cx,
        )
    });
    let capabilities = names(
        &b.capabilities,
        &format!("{field}.capabilities"),
        "capability",
        cx,
    );
    let model_rewrite = b
        .model
        .as_ref()
        .and_then(|m| match rules::model_name(&m.rewrite) {
            Ok(()) => Some(m.rewrite.clone()),
            Err(e) => {
                cx.error(&format!("{field}.model.rewrite"), e.to_string());
                None
            }
        });
    let url = b
        .url
        .as_ref()
        .and_then(|u| upstream::compile_url(u, &format!("{field}.url"), cx));
    let https = url.as_ref().is_some_and(|u| u.https);
    let tls = match (&b.tls, &b.url) {
        (Some(_), Some(_)) if !https => {
            if url.is_some() {
                cx.error(&format!("{field}.tls"), "is only used with an https url");
            }
            None
        }
        (Some(tls), _) => upstream::compile_tls(
            tls,
            b.protocol,
            namespace,
            secrets,
            &format!("{field}.tls"),
            cx,
        ),
        (None, _) if https => upstream::compile_tls(
            &agent_pool::BackendTls::default(),
            b.protocol,
            namespace,
            secrets,
            &format!("{field}.tls"),
            cx,
        ),
        (None, _) => None,
    };
    let auth = b
        .auth
        .as_ref()
        .and_then(|a| upstream::compile_auth(a, namespace, secrets, &format!("{field}.auth"), cx));
    let target = |name: String, endpoints: Vec<Endpoint>, host: Option<String>| BackendTarget {
        name,
        weight,
        capabilities: capabilities.clone(),
        max_concurrency,
        protocol: b.protocol,
        endpoints,
        host,
        tls: tls.clone(),
        auth: auth.clone(),
        model_rewrite: model_rewrite.clone(),
    };
    let kinds = usize::from(b.service.is_some())
        + usize::from(!b.endpoints.is_empty())
        + usize::from(b.url.is_some());
    if kinds != 1 {
        cx.error(&field, "set exactly one of service, endpoints or url");
        return None;
    }
    if let Some(url) = url {
        return Some(target(
            format!("url/{}", url.host),
            vec![url.endpoint],
            Some(url.host),
        ));
    }
    if b.url.is_some() {
        return None;
    }
    match (&b.service, b.endpoints.is_empty()) {
        (Some(_), false) | (None, true) => None,
        (None, false) => {
            let mut endpoints = Vec::new();
            for (j, address) in b.endpoints.iter().enumerate() {
                if is_host_port(address) {
                    endpoints.push(Endpoint::new(address.clone()));
                } else {
                    cx.error(
                        &format!("{field}.endpoints[{j}]"),
                        format!("{address:?} is not host:port"),
                    );
                }
            }
            endpoints.sort();
            let before = endpoints.len();
            endpoints.dedup();
            if endpoints.len() != before {
                cx.warning(
                    &format!("{field}.endpoints"),
                    "lists the same endpoint more than once; duplicates are dropped",
                );
            }
            Some(target(format!("static[{i}]"), endpoints, None))
        }
        (Some(service), true) => {
            let endpoints =
                resolve_service(service, namespace, slices, &format!("{field}.service"), cx)?;
            Some(target(format!("service/{}", service.name), endpoints, None))
        }
    }
}
