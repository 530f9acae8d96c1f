//! The `proxies` and `updatedProxies` of pool statuses: the proxies tracked here and
//! at the other replicas, and which of them run each pool as it is now.

mod support;

use std::time::Duration;

use kube::runtime::watcher::Event;
use sluice_api::Objects;
use sluice_api::push::Ack;
use sluice_controller::peers::ProxyRevisions;
use sluice_controller::proxies::ProxyRegistry;
use support::watch::{Harness, chat, pool, settle, slice};
use tokio::sync::watch;

#[tokio::test(start_paused = true)]
async fn pool_status_counts_the_proxies_that_run_the_pool_as_it_is_now() {
    let (h, registry) = Harness::start_with_proxies();
    let mut objects = Objects::default();
    objects.pools.push(pool("chat", "chat"));
    objects.pools.push(pool("other", "other"));
    objects
        .slices
        .push(slice("chat-1", "chat", &[("10.0.0.1", true, false)]));
    objects
        .slices
        .push(slice("other-1", "other", &[("10.0.0.2", true, false)]));
    h.sync(objects);
    settle().await;
    let counts = |name: &str| {
        let s = h.pool_status(name).expect("status");
        (s.proxies, s.updated_proxies)
    };
    assert_eq!(counts("chat"), (Some(0), Some(0)));

    let peer = "127.0.0.1:1".parse().expect("addr");
    let one = registry.register("proxy-1", peer).expect("register");
    let two = registry.register("proxy-2", peer).expect("register");
    let ack = |proxy: &str| {
        let table = h.table();
        registry
            .ack(&Ack {
                proxy: proxy.parse().expect("a proxy name"),
                version: table.version,
                revision: table.revision,
            })
            .expect("ack");
    };
    ack("proxy-1");
    ack("proxy-2");
    settle().await;
    assert_eq!(counts("chat"), (Some(2), Some(2)));

    // chat changes; the proxies still on the first table run other as it is now.
    h.slices
        .send(Event::Apply(slice(
            "chat-1",
            "chat",
            &[("10.0.0.9", true, false)],
        )))
        .expect("send");
    settle().await;
    assert_eq!(h.table().version, 2);
    assert_eq!(counts("chat"), (Some(2), Some(0)));
    assert_eq!(counts("other"), (Some(2), Some(2)));

    ack("proxy-1");
    settle().await;
    assert_eq!(counts("chat"), (Some(2), Some(1)));

    drop(two);
    settle().await;
    assert_eq!(counts("chat"), (Some(1), Some(1)));
    assert_eq!(counts("other"), (Some(1), Some(1)));
    drop(one);
}

#[tokio::test(start_paused = true)]
async fn a_status_pass_does_not_hold_the_next_compile_back() {
    let (h, registry) = Harness::start_with_proxies();
    h.sync(chat());
    settle().await;
    assert_eq!(h.compiles(), 1);

    // A proxy subscribes: a status pass (no compile) runs at once.
    let peer = "127.0.0.1:1".parse().expect("addr");
    let _proxy = registry.register("proxy-1", peer).expect("register");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.pool_status("chat").and_then(|s| s.proxies), Some(1));

    // An endpoint change right after it is compiled at once, not a debounce later.
    h.slices
        .send(Event::Apply(slice(
            "chat-1",
            "chat",
            &[("10.0.0.2", true, false)],
        )))
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.compiles(), 2);
    assert_eq!(h.table().version, 2);
}

#[tokio::test(start_paused = true)]
async fn pool_status_counts_the_proxies_of_the_other_replicas_once() {
    let (peers_tx, peers_rx) = watch::channel(ProxyRevisions::new());
    let mut registry = None;
    let h = Harness::start_with(|core, publisher| {
        let r = ProxyRegistry::new(publisher.clone());
        registry = Some(r.clone());
        core.with_proxies(r).with_peer_proxies(peers_rx)
    });
    let registry = registry.expect("set by start_with");
    h.sync(chat());
    settle().await;
    let revision = h.table().revision;

    // One proxy here; two at a peer, one of them also listed here (it moved).
    let _local = registry
        .register("proxy-1", "127.0.0.1:1".parse().expect("addr"))
        .expect("register");
    peers_tx.send_replace(
        [
            ("proxy-1".to_owned(), Some("an-old-revision".to_owned())),
            ("proxy-2".to_owned(), Some(revision.clone())),
            ("proxy-3".to_owned(), None),
        ]
        .into(),
    );
    settle().await;
    let status = h.pool_status("chat").expect("status");
    assert_eq!((status.proxies, status.updated_proxies), (Some(3), Some(1)));

    // The peer's proxies acknowledge; ours has not yet.
    peers_tx.send_replace(
        [
            ("proxy-2".to_owned(), Some(revision.clone())),
            ("proxy-3".to_owned(), Some(revision)),
        ]
        .into(),
    );
    settle().await;
    let status = h.pool_status("chat").expect("status");
    assert_eq!((status.proxies, status.updated_proxies), (Some(3), Some(2)));
}
