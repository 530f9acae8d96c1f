//! A full rate-limit key store never locks a new caller out: a flood of distinct
//! keys makes the store forget the keys that lose least, and the next caller is
//! admitted and limited by its own quota, with a true Retry-After.

mod support;

use std::num::NonZeroUsize;

use http::Request;
use support::{Agent, PoolYaml, Proxy, client, compile_yaml, empty, send};

/// Two requests a minute per `x-user` value, on `echo`.
const PER_USER: &str = "apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
    metadata: {name: per-user, namespace: demo}\n\
    spec:\n  targetRefs: [{kind: AgentPool, name: echo}]\n  \
    key: {type: Header, header: x-user}\n  \
    defaultTier: all\n  tiers: [{name: all, limits: [{requests: 2, period: 1m}]}]\n";

async fn as_user(proxy: &Proxy, user: &str) -> (u16, Option<String>) {
    let req = Request::get(proxy.url("/x"))
        .header("x-user", user)
        .body(empty())
        .expect("request");
    let reply = send(&client(), req).await;
    let retry_after = reply
        .headers
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (reply.status.as_u16(), retry_after)
}

#[tokio::test]
async fn a_flood_of_new_keys_does_not_lock_out_the_next_caller() {
    let agent = Agent::named("echo").await;
    let yaml = format!(
        "{}---\n{PER_USER}",
        PoolYaml::new("echo").agents(&[&agent]).yaml()
    );
    let max_keys = NonZeroUsize::new(64).expect("non-zero");
    let proxy = Proxy::with_store(|b| b.max_keys(max_keys), compile_yaml(&yaml)).await;

    // A caller spends its quota before the flood.
    for _ in 0..2 {
        assert_eq!(as_user(&proxy, "heavy").await.0, 200);
    }
    // Ten times the store's bound in distinct keys, each active for a minute.
    for i in 0..640 {
        assert_eq!(
            as_user(&proxy, &format!("flood-{i}")).await.0,
            200,
            "flood-{i}"
        );
    }
    // A new caller is admitted for its own two requests, then refused with the
    // wait its own quota gives (30 s), not a store-full placeholder.
    assert_eq!(as_user(&proxy, "newcomer").await.0, 200);
    assert_eq!(as_user(&proxy, "newcomer").await.0, 200);
    let (status, retry_after) = as_user(&proxy, "newcomer").await;
    assert_eq!(status, 429);
    let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(
        (29..=30).contains(&retry_after),
        "Retry-After {retry_after}"
    );

    // The caller that had spent its quota (the largest debt) was not forgotten.
    assert_eq!(as_user(&proxy, "heavy").await.0, 429);

    // The store kept its bound, and said what it forgot.
    proxy.store.refresh_gauges();
    let keys = proxy.metric("sluice_ratelimit_keys").expect("keys gauge");
    assert!(keys <= 64.0, "{keys} keys tracked");
    let active = proxy
        .metric("sluice_ratelimit_key_events_total{event=\"evicted_active\"}")
        .expect("active evictions");
    // 642 keys came (heavy, the flood, the newcomer), all active for the minute:
    // each one beyond what is tracked took an active key's place.
    assert_eq!(active + keys, 642.0);
}
