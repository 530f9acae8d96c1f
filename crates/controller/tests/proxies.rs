//! The proxy registry: push latency from publication or subscription to
//! acknowledgement, a bounded set of names, and the proxies of the other replicas,
//! learnt from their `/v1/proxies`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::testing::one_pool_table as table;
use sluice_controller::Publisher;
use sluice_controller::peers::{self, PeerConfig, ProxyRevisions};
use sluice_controller::proxies::{AckError, Acked, ProxyRegistry, RegisterError};
use sluice_controller::push::PushConfig;
use support::push::{PushServer, ack};

#[tokio::test(start_paused = true)]
async fn push_latency_runs_from_publication_or_subscription_to_acknowledgement() {
    let publisher = Publisher::new();
    let registry = ProxyRegistry::new(publisher.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let early = registry.register("early", peer).expect("registered");
    publisher.publish(table("/a")).expect("valid");
    let v1 = publisher.current().expect("published").table.clone();
    tokio::time::advance(Duration::from_millis(30)).await;
    let late = registry.register("late", peer).expect("registered");
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(
        registry.ack(&ack("early", &v1)),
        Ok(Acked::Recorded(Some(Duration::from_millis(40))))
    );
    assert_eq!(
        registry.ack(&ack("late", &v1)),
        Ok(Acked::Recorded(Some(Duration::from_millis(10)))),
        "measured from the subscription, which came after the publication"
    );
    assert_eq!(registry.ack(&ack("late", &v1)), Ok(Acked::Ignored));
    assert_eq!(
        registry.ack(&ack("nobody", &v1)),
        Err(AckError::UnknownProxy("nobody".into()))
    );

    // After a new publication, acknowledging the old version records it without a
    // latency (it was not the current table any more).
    publisher.publish(table("/b")).expect("valid");
    let summary = registry.summary();
    assert_eq!((summary.version, summary.current, summary.stale), (2, 0, 2));
    let third = registry.register("third", peer).expect("registered");
    assert_eq!(registry.ack(&ack("third", &v1)), Ok(Acked::Recorded(None)));
    assert_eq!(registry.count_at(1), 3);
    assert_eq!(registry.count_current(), 0);
    let mut unpublished = ack("third", &v1);
    unpublished.version = 3;
    assert_eq!(registry.ack(&unpublished), Err(AckError::Unpublished(3)));
    drop((early, late, third));
    assert!(registry.is_empty());
}

#[test]
fn a_name_subscribed_again_replaces_its_entry_and_the_registry_is_bounded() {
    let publisher = Publisher::new();
    let registry = ProxyRegistry::with_capacity(publisher, 1);
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let first = registry.register("p", peer).expect("registered");
    assert_eq!(
        registry.register("q", peer).map(|_| ()),
        Err(RegisterError::Full(1))
    );
    let second = registry.register("p", peer).expect("same name replaces");
    assert_eq!(registry.len(), 1);
    drop(first);
    assert_eq!(
        registry.len(),
        1,
        "the old subscription does not remove the new"
    );
    drop(second);
    assert!(registry.is_empty());
    assert_eq!(
        registry.register("bad name", peer).map(|_| ()),
        Err(RegisterError::InvalidId)
    );
}

#[tokio::test]
async fn a_replica_learns_the_proxies_of_its_peers_and_forgets_a_silent_one() {
    let publisher = Publisher::new();
    publisher.publish(table("/a")).expect("valid table");
    let current = publisher.current().expect("published");
    // The peer: a replica with two proxies, one of which acknowledged the table.
    let proxies = ProxyRegistry::new(publisher.clone());
    let from: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let _acked = proxies.register("remote-1", from).expect("register");
    let _fresh = proxies.register("remote-2", from).expect("register");
    proxies.ack(&ack("remote-1", &current.table)).expect("ack");
    let server = PushServer::with_registry(
        proxies,
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        },
    )
    .await;
    let target = server.base.trim_start_matches("http://").to_owned();

    let (tx, mut rx) = tokio::sync::watch::channel(ProxyRevisions::new());
    let poller = tokio::spawn(peers::run(
        PeerConfig {
            target,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            token: None,
            ca: None,
        },
        tx,
    ));
    let expected: ProxyRevisions = [
        ("remote-1".to_owned(), Some(current.table.revision.clone())),
        ("remote-2".to_owned(), None),
    ]
    .into();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v == expected))
        .await
        .expect("the peer's proxies within 10 s")
        .expect("poller running");

    // The peer goes away: once it has missed a few polls, its proxies are dropped.
    server.stop().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(ProxyRevisions::is_empty),
    )
    .await
    .expect("a silent peer forgotten within 10 s")
    .expect("poller running");
    poller.abort();
}

/// Peers speak TLS, checked against a CA for the name of the peers' Service, and
/// present a token: without the right one, or to a certificate for another name, the
/// peer's proxies are never learnt.
#[tokio::test]
async fn peers_are_polled_over_tls_with_a_token() {
    use sluice_controller::auth::{PushAuth, TokenFile};
    use sluice_listener::testing::TestCa;
    use sluice_listener::{ListenerMetrics, ServerConfig, TlsConfig};

    let dir = std::env::temp_dir().join(format!("sluice-peers-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = TestCa::new("peers CA");
    let ca_file = ca.write(&dir, "ca.crt");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "peer-token").expect("write");
    let wrong_token = dir.join("wrong");
    std::fs::write(&wrong_token, "not-the-token").expect("write");

    let publisher = Publisher::new();
    publisher.publish(table("/a")).expect("valid table");
    let proxies = ProxyRegistry::new(publisher.clone());
    let from: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let _held = proxies.register("remote-1", from).expect("register");
    let tls = TlsConfig::new(
        vec![ca.leaf(&["localhost"]).write(&dir, "peer")],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    let listener_registry = prometheus::Registry::new();
    let listener_metrics = ListenerMetrics::new(&listener_registry).expect("metrics");
    let server = PushServer::with_registry(
        proxies,
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            auth: PushAuth::SharedToken(Arc::new(TokenFile::new(&token_file))),
            listener: ServerConfig {
                tls: Some(tls),
                metrics: listener_metrics.listener("push"),
                ..ServerConfig::default()
            },
            ..PushConfig::default()
        },
    )
    .await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let poll = |host: &str, token: &std::path::Path| {
        let (tx, rx) = tokio::sync::watch::channel(ProxyRevisions::new());
        let config = PeerConfig {
            target: format!("{host}:{port}"),
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            token: Some(Arc::new(TokenFile::new(token))),
            ca: Some(ca_file.clone()),
        };
        (tokio::spawn(peers::run(config, tx)), rx)
    };

    let (good, mut rx) = poll("localhost", &token_file);
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|v| v.contains_key("remote-1")),
    )
    .await
    .expect("the peer's proxies within 10 s")
    .expect("poller running");
    good.abort();

    // Another token, or a name the certificate does not hold (the address itself):
    // after several polls refused, by the peer or by the poller, nothing learnt.
    let (wrong, rx_token) = poll("localhost", &wrong_token);
    let (misnamed, rx_name) = poll("127.0.0.1", &token_file);
    let count = |registry: &prometheus::Registry, name: &str, labels: &str| -> f64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| format!("{}={}", l.name(), l.value()) == labels)
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while count(
            &server.metrics,
            "sluice_controller_push_auth_failures_total",
            "reason=refused",
        ) < 3.0
            || count(
                &listener_registry,
                "sluice_listener_tls_handshakes_total",
                "result=failed",
            ) < 3.0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("polls refused");
    assert!(rx_token.borrow().is_empty(), "learnt with a wrong token");
    assert!(
        rx_name.borrow().is_empty(),
        "learnt from a certificate for another name"
    );
    wrong.abort();
    misnamed.abort();
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
