//! Building a pool's runtime from its compiled form, carrying over the state of the
//! pool it replaces.

use sluice_api::table::{Algorithm, Pool, RetryPolicy};
use sluice_balance::{
    ConsistentHash, HashConfig, HealthConfig, LeastRequest, LoadConfig, LoadFactor, OutlierConfig,
    OutlierDetector, PeakEwma, PoolLoad, RetryBudget, RetryBudgetConfig, RoundRobin, Selector,
    WaitQueue, Weighted,
};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use super::{EndpointRt, Kept, PoolEnv, PoolRuntime, Upstream};
use crate::metrics::PoolMetrics;

/// Builds a pool runtime; `previous` is the pool of the same key in the runtime being
/// replaced, whose state carries over; `upstreams` says how each backend is reached,
/// in order; `kept` gives the health and counters an endpoint keeps across tables.
pub fn build(
    spec: &Pool,
    previous: Option<&PoolRuntime>,
    upstreams: &[Arc<Upstream>],
    kept: &dyn Fn(&str) -> Kept,
    env: &PoolEnv,
) -> PoolRuntime {
    let metrics = &env.metrics;
    let now = env.clock.now_nanos();
    let key = spec.key.as_str();
    let mut endpoints = Vec::new();
    let mut weights = Vec::new();
    let sizes: Vec<usize> = spec.backends.iter().map(|b| b.endpoints.len()).collect();
    let lcm = sizes
        .iter()
        .filter(|&&n| n > 0)
        .fold(1u64, |acc, &n| lcm(acc, n as u64).min(10_000));
    for (backend, upstream) in spec.backends.iter().zip(upstreams) {
        if backend.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(
                pool = key,
                backend = %backend.name,
                "insecureSkipVerify: the backend's TLS certificates are not verified"
            );
        }
        let mut capabilities: Vec<String> = spec
            .capabilities
            .iter()
            .chain(&backend.capabilities)
            .cloned()
            .collect();
        capabilities.sort();
        capabilities.dedup();
        let share = u64::from(backend.weight.get()) * lcm / (backend.endpoints.len().max(1) as u64);
        for ep in &backend.endpoints {
            let (health, stats, connections) = kept(&ep.address);
            endpoints.push(EndpointRt {
                address: ep.address.clone(),
                authority: ep.address.parse().ok(),
                terminating: ep.terminating,
                max_concurrency: backend.max_concurrency,
                capabilities: capabilities.clone(),
                upstream: upstream.clone(),
                model_rewrite: backend.model_rewrite.as_deref().map(Arc::from),
                stats,
                health,
                connections,
            });
            weights.push(
                NonZeroU32::new(u32::try_from(share).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MIN),
            );
        }
    }
    let addresses: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
    let load_config = LoadConfig {
        decay: spec.balancer.ewma_decay.get(),
        neutral_latency: spec.balancer.ewma_default_latency.get(),
    };
    let load = match previous {
        Some(p) => p.load.rebuild(&addresses, load_config, now),
        None => PoolLoad::new(&addresses, load_config, now),
    };
    let start = env.entropy.below(usize::MAX);
    // Every algorithm honours the backends' weights (spread over each backend's
    // endpoints): a rotation becomes the weighted rotation, the power-of-two
    // choices weigh load by capacity, and the ring gives points by weight.
    let uniform = weights.windows(2).all(|w| w[0] == w[1]);
    let selector: Box<dyn Selector> = match spec.algorithm {
        Algorithm::RoundRobin if uniform => {
            Box::new(RoundRobin::new(endpoints.len()).starting_at(start))
        }
        Algorithm::RoundRobin | Algorithm::Weighted => {
            Box::new(Weighted::new(&weights).starting_at(start))
        }
        Algorithm::LeastRequest => Box::new(LeastRequest::weighted(load.clone(), &weights)),
        Algorithm::PeakEwma => Box::new(PeakEwma::weighted(load.clone(), &weights)),
        Algorithm::ConsistentHash => Box::new(ConsistentHash::weighted(
            load.clone(),
            HashConfig {
                vnodes: sluice_balance::consistent_hash::DEFAULT_VNODES,
                load_factor: LoadFactor::new(spec.balancer.bounded_load),
            },
            &weights,
        )),
    };

    let outlier = spec.outlier.as_ref().map(|o| {
        let config = OutlierConfig {
            consecutive_failures: Some(o.consecutive_failures),
            consecutive_connect_failures: None,
            base_ejection: o.base_ejection.get(),
            max_ejection: o.max_ejection.get(),
            max_ejection_percent: o.max_ejection_percent.get(),
            ..OutlierConfig::default()
        };
        match previous.and_then(|p| p.outlier.as_ref()) {
            Some(old) => {
                let previous_index = |address: &str| {
                    previous.and_then(|p| p.endpoints.iter().position(|e| e.address == address))
                };
                old.carry_over(config, endpoints.iter().map(|e| previous_index(&e.address)))
            }
            None => OutlierDetector::new(config, endpoints.len()),
        }
    });
    let health_config = spec.health_check.as_ref().map(|h| HealthConfig {
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
    });
    let mixed_capabilities = endpoints
        .windows(2)
        .any(|w| w[0].capabilities != w[1].capabilities);
    let depth = spec.queue.as_ref().map_or(0, |q| q.max_depth as usize);
    let queue = match previous {
        Some(p) if p.queue.max_depth() == depth => p.queue.clone(),
        _ => Arc::new(WaitQueue::new(depth)),
    };
    // Retries draw on the budget, and so does sending a request on to the fallback
    // after an agent's answer: a pool that does that without a `retries` block has
    // the default budget.
    let default_retries = RetryPolicy {
        budget_ratio: 0.2,
        min_retries_per_second: 10,
        ..RetryPolicy::default()
    };
    let budget_of = spec
        .retries
        .as_ref()
        .or_else(|| (!spec.fallback_statuses.is_empty()).then_some(&default_retries));
    let retry_budget = budget_of.and_then(|r| {
        let config = RetryBudgetConfig {
            ratio: r.budget_ratio,
            min_per_second: r.min_retries_per_second,
            ..RetryBudgetConfig::default()
        };
        let same = previous.is_some_and(|p| {
            p.spec.retries == spec.retries && p.spec.fallback_statuses == spec.fallback_statuses
        });
        match previous
            .and_then(|p| p.retry_budget.clone())
            .filter(|_| same)
        {
            Some(b) => Some(b),
            None => RetryBudget::new(&config).ok().map(Arc::new),
        }
    });
    PoolRuntime {
        metrics: PoolMetrics::new(metrics, key),
        spec: spec.clone(),
        endpoints,
        load,
        selector,
        outlier,
        health_config,
        queue,
        mixed_capabilities,
        replaced: std::sync::atomic::AtomicBool::new(false),
        retry_budget,
        jwt: None,
        client_certs: None,
        checker: Mutex::new(None),
        metrics_all: metrics.clone(),
        clock: env.clock.clone(),
        entropy: env.entropy.clone(),
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b).max(1) * b
}
