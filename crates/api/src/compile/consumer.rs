//! Consumers from Secrets labelled `sluice.dev/consumer`.
//!
//! A consumer Secret holds one or more API keys and, optionally, the consumer's tier
//! and the pools it is limited to:
//!
//! | data key | meaning |
//! |---|---|
//! | `api-key`, `api-key-<anything>` | an API key in plain text (hashed here) |
//! | `api-key-sha256`, `api-key-sha256-<anything>` | the SHA-256 of an API key, lower-case hex |
//! | `tier` | the consumer's tier |
//! | `pools` | comma-separated AgentPools (`name` in the Secret's namespace, or `namespace/name`) |
//!
//! The label's value is the consumer's name (the Secret's name when empty); the consumer
//! belongs to the Secret's namespace, and is `namespace/name` in the table (in
//! `x-sluice-consumer` and rate-limit keys): two namespaces' consumers of one name are
//! two consumers. A consumer may be limited to a pool of another namespace only when
//! that pool admits it (by name in `spec.access.consumers`, by namespace in
//! `spec.access.consumerNamespaces`, or as a public pool). Keys are hashed before they
//! enter the table: no plaintext key leaves the compile step, and no diagnostic ever
//! quotes one.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::{Cx, is_name};
use crate::diagnostics::Diagnostic;
use crate::table::{Access, Consumer, KeyHash};

/// The label that marks a Secret as a consumer; its value names the consumer.
pub const CONSUMER_LABEL: &str = "sluice.dev/consumer";

/// The SHA-256 of an API key as lower-case hex: the form keys take in the table.
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

struct Parsed {
    consumer: Consumer,
    secret: String,
}

pub(super) fn compile_consumers(
    secrets: &[Secret],
    pools: &BTreeMap<&str, &Access>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Consumer> {
    let mut parsed: Vec<Parsed> = Vec::new();
    let mut sorted: Vec<&Secret> = secrets
        .iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(CONSUMER_LABEL))
        })
        .collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for secret in sorted {
        let mut cx = Cx::new(
            "Secret",
            secret.metadata.namespace.as_deref(),
            secret.metadata.name.as_deref(),
        );
        if let Some(consumer) = compile_secret(secret, pools, &mut cx) {
            parsed.push(Parsed {
                consumer,
                secret: format!(
                    "{}/{}",
                    secret.metadata.namespace.as_deref().unwrap_or("default"),
                    secret.metadata.name.as_deref().unwrap_or_default()
                ),
            });
        }
        diags.extend(cx.diags);
    }

    // A name or a key claimed by two Secrets identifies no one for sure: drop both.
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_key: BTreeMap<&KeyHash, BTreeSet<&str>> = BTreeMap::new();
    for p in &parsed {
        by_name.entry(&p.consumer.name).or_default().push(&p.secret);
        for h in &p.consumer.key_hashes {
            by_key.entry(h).or_default().insert(&p.secret);
        }
    }
    let mut rejected = BTreeMap::new();
    for (name, owners) in &by_name {
        if owners.len() > 1 {
            for o in owners {
                rejected.insert(
                    (*o).to_owned(),
                    format!(
                        "consumer {name:?} is defined by {} Secrets ({}); none is used",
                        owners.len(),
                        owners.join(", ")
                    ),
                );
            }
        }
    }
    for owners in by_key.values() {
        if owners.len() > 1 {
            let list: Vec<&str> = owners.iter().copied().collect();
            for o in owners {
                rejected.entry((*o).to_owned()).or_insert_with(|| {
                    format!(
                        "an API key is shared by Secrets {}; none of them is used",
                        list.join(", ")
                    )
                });
            }
        }
    }
    let mut out = Vec::new();
    for p in parsed {
        match rejected.get(&p.secret) {
            Some(message) => {
                let (ns, name) = p.secret.split_once('/').unwrap_or(("default", &p.secret));
                let mut cx = Cx::new("Secret", Some(ns), Some(name));
                cx.error("metadata.labels", message.clone());
                diags.extend(cx.diags);
            }
            None => out.push(p.consumer),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn compile_secret(
    secret: &Secret,
    pools: &BTreeMap<&str, &Access>,
    cx: &mut Cx,
) -> Option<Consumer> {
    let namespace = secret.metadata.namespace.as_deref().unwrap_or("default");
    let label = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONSUMER_LABEL))
        .cloned()
        .unwrap_or_default();
    let name = if label.is_empty() {
        secret.metadata.name.clone().unwrap_or_default()
    } else {
        label
    };
    if !is_name(&name) {
        cx.error(
            &format!("metadata.labels[{CONSUMER_LABEL}]"),
            format!("{name:?} is not a valid consumer name (1-63 letters, digits, `-`, `_`, `.`)"),
        );
        return None;
    }

    // `stringData` wins over `data`, as the API server merges them.
    let mut entries: BTreeMap<String, (Vec<u8>, &str)> = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        entries.insert(k.clone(), (v.0.clone(), "data"));
    }
    for (k, v) in secret.string_data.iter().flatten() {
        entries.insert(k.clone(), (v.clone().into_bytes(), "stringData"));
    }

    let mut consumer = Consumer {
        name: format!("{namespace}/{name}"),
        ..Consumer::default()
    };
    for (key, (value, section)) in &entries {
        let field = format!("{section}.{key}");
        let text = std::str::from_utf8(value).map(str::trim);
        if key == "api-key-sha256" || key.starts_with("api-key-sha256-") {
            match text {
                Ok(h) if is_hex_sha256(h) => {
                    consumer.key_hashes.extend(KeyHash::from_hex(h));
                }
                _ => cx.error(
                    &field,
                    "is not a SHA-256 hash in lower-case hex (use `sluice hash-key`)",
                ),
            }
        } else if key == "api-key" || key.starts_with("api-key-") {
            match text {
                Ok(k) if !k.is_empty() => {
                    if k.len() < 16 {
                        cx.warning(
                            &field,
                            "is shorter than 16 characters; use a long random key",
                        );
                    }
                    consumer
                        .key_hashes
                        .push(KeyHash::from_bytes(Sha256::digest(k.as_bytes()).into()));
                }
                _ => cx.error(&field, "is empty or not UTF-8"),
            }
        } else if key == "tier" {
            match text {
                Ok(t) if is_name(t) => consumer.tier = Some(t.to_owned()),
                _ => cx.error(&field, "is not a valid tier name"),
            }
        } else if key == "pools" {
            let mut limited = Vec::new();
            for item in text
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let pool = if item.contains('/') {
                    item.to_owned()
                } else {
                    format!("{namespace}/{item}")
                };
                match pools.get(pool.as_str()) {
                    None => cx.warning(
                        &field,
                        format!("AgentPool {pool} is not in the table; left out"),
                    ),
                    Some(access) if !admits(access, &pool, &consumer.name) => cx.warning(
                        &field,
                        format!(
                            "AgentPool {pool} does not admit consumers of namespace \
                             {namespace} (its spec.access.consumers or \
                             consumerNamespaces); left out"
                        ),
                    ),
                    Some(_) => limited.push(pool),
                }
            }
            limited.sort();
            limited.dedup();
            consumer.pools = Some(limited);
        } else {
            cx.warning(
                &field,
                "is not a key Sluice reads (api-key*, api-key-sha256*, tier, pools); ignored",
            );
        }
    }
    if consumer.key_hashes.is_empty() && !cx.has_errors() {
        cx.error("data", "holds no API key: add api-key or api-key-sha256");
    }
    consumer.key_hashes.sort();
    consumer.key_hashes.dedup();
    (!cx.has_errors()).then_some(consumer)
}

/// Whether the pool `pool_key` with `access` consents to consumer `consumer`
/// (qualified) naming it: a pool of its own namespace always does.
fn admits(access: &Access, pool_key: &str, consumer: &str) -> bool {
    let namespace = |key: &str| key.split_once('/').map(|(ns, _)| ns.to_owned());
    namespace(pool_key) == namespace(consumer)
        || access.public
        || access.consumers.iter().any(|c| c == consumer)
        || (!access.tiers.is_empty() && access.tier_admits(pool_key, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_hex_sha256(&hash_api_key("x")));
        assert!(!is_hex_sha256("ABC"));
    }
}
