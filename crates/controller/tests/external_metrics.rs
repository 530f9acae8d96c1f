//! The external metrics API as an HPA controller reaches it through kube-aggregator:
//! HTTPS with the front-proxy client certificate, discovery, then the list of
//! `ExternalMetricValue`s of a namespace, a metric and a label selector, summed over
//! the load reports the proxies posted on the push channel. Stale reports and proxies
//! gone count nowhere; bad input is refused. A replica also answers for the proxies of
//! its peers, each proxy once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sluice_api::load::{LATENCY_BUCKETS, LoadReport, PoolReport};
use sluice_api::push::REPORT_PATH;
use sluice_api::testing::one_pool_table as table;
use sluice_controller::Publisher;
use sluice_controller::external_metrics::{self, ExternalMetrics};
use sluice_controller::load::{LoadSettings, ProxyLoads};
use sluice_controller::peers::{self, PeerConfig, ProxyRevisions};
use sluice_controller::proxies::{DEFAULT_CAPACITY, ProxyRegistry};
use sluice_controller::push::PushConfig;
use sluice_listener::testing::{TestCa, TestCert};
use sluice_listener::{ServerConfig, TlsConfig};
use support::push::{PushServer, answer};
use tokio::net::TcpListener;

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// Cumulative counts of `requests` requests taking between 0.1 s and 0.25 s, and
/// `slow` taking between 1 s and 2.5 s.
fn latency(requests: u64, slow: u64) -> Vec<u64> {
    let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
    for (i, c) in counts.iter_mut().enumerate() {
        if i >= 7 {
            *c += requests;
        }
        if i >= 10 {
            *c += slow;
        }
    }
    counts
}

fn report(proxy: &str, in_flight: u64, queued: u64, counts: Vec<u64>) -> LoadReport {
    LoadReport {
        proxy: proxy.parse().expect("a proxy name"),
        pools: vec![PoolReport {
            pool: "d/p".into(),
            in_flight,
            queued,
            capacity: Some(8),
            latency: counts,
        }],
    }
}

fn registry(window: Duration, max_age: Duration) -> ProxyRegistry {
    let publisher = Publisher::new();
    publisher.publish(table("/a")).expect("valid");
    ProxyRegistry::with_settings(
        publisher,
        DEFAULT_CAPACITY,
        LoadSettings { window, max_age },
    )
}

/// The items of `GET path` on `api`, called in process.
fn items(api: &ExternalMetrics, path: &str) -> Vec<Value> {
    let req = http::Request::get(path).body(()).expect("request");
    let resp = api.handle(&req);
    assert_eq!(resp.status(), 200, "{path}");
    let body = futures_util::FutureExt::now_or_never(resp.into_body().collect())
        .expect("a full body")
        .expect("body")
        .to_bytes();
    let list: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(list["kind"], "ExternalMetricValueList");
    list["items"].as_array().expect("items").clone()
}

fn value(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|i| i["value"].as_str().expect("a quantity"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_stale_report_counts_nowhere_and_a_proxy_gone_at_once() {
    let proxies = registry(Duration::from_secs(60), Duration::from_secs(30));
    let api = ExternalMetrics::new(proxies.clone());
    let peer = "127.0.0.1:1".parse().expect("addr");
    let p1 = proxies.register("p1", peer).expect("tracked");
    let _p2 = proxies.register("p2", peer).expect("tracked");
    let in_flight =
        format!("{BASE}/namespaces/d/sluice_requests_in_flight?labelSelector=pool_name%3Dp");
    let p95 = format!("{BASE}/namespaces/d/sluice_request_duration_p95_seconds");
    assert!(items(&api, &in_flight).is_empty(), "no report yet");

    proxies
        .report(report("p1", 3, 0, latency(0, 0)))
        .expect("kept");
    proxies
        .report(report("p2", 2, 1, latency(0, 0)))
        .expect("kept");
    assert_eq!(value(&items(&api, &in_flight)), ["5"]);
    assert!(items(&api, &p95).is_empty(), "no window yet: the HPA holds");

    // 20 s on, p1 served 100 requests, 10 of them slow; p2 is silent from now on (one
    // report: no window of its own).
    tokio::time::advance(Duration::from_secs(20)).await;
    proxies
        .report(report("p1", 1, 0, latency(90, 10)))
        .expect("kept");
    assert_eq!(value(&items(&api, &in_flight)), ["3"]);
    let window = items(&api, &p95);
    assert_eq!(value(&window), ["1750m"], "half way into the slow bucket");
    assert_eq!(window[0]["window"], 60);
    assert_eq!(
        window[0]["metricLabels"],
        json!({"pool_namespace": "d", "pool_name": "p"})
    );

    // p2's last report is 31 s old: it counts nowhere.
    tokio::time::advance(Duration::from_secs(11)).await;
    proxies
        .report(report("p1", 4, 0, latency(90, 10)))
        .expect("kept");
    assert_eq!(value(&items(&api, &in_flight)), ["4"]);
    let queue = format!("{BASE}/namespaces/d/sluice_queue_depth");
    assert_eq!(value(&items(&api, &queue)), ["0"]);
    let utilisation = format!("{BASE}/namespaces/d/sluice_pool_utilisation");
    assert_eq!(value(&items(&api, &utilisation)), ["500m"]);

    // p1's subscription ends: its reports go with it.
    drop(p1);
    assert!(items(&api, &in_flight).is_empty());
    assert!(proxies.report(report("p1", 1, 0, latency(0, 0))).is_err());
}

#[tokio::test(start_paused = true)]
async fn pools_are_selected_by_namespace_and_labels_and_bad_input_is_refused() {
    let proxies = registry(Duration::from_secs(60), Duration::from_secs(30));
    let api = ExternalMetrics::new(proxies.clone());
    let _p1 = proxies
        .register("p1", "127.0.0.1:1".parse().expect("addr"))
        .expect("tracked");
    let mut two = report("p1", 1, 0, latency(0, 0));
    two.pools.push(PoolReport {
        pool: "agents/chat".into(),
        in_flight: 7,
        queued: 2,
        capacity: None,
        latency: latency(0, 0),
    });
    proxies.report(two).expect("kept");
    let list = |ns: &str, selector: &str| {
        let path =
            format!("{BASE}/namespaces/{ns}/sluice_requests_in_flight?labelSelector={selector}");
        value(&items(&api, &path)).join(",")
    };
    assert_eq!(list("agents", ""), "7");
    assert_eq!(list("agents", "pool_name%3Dchat"), "7");
    assert_eq!(list("agents", "pool_name%20in%20(chat,other)"), "7");
    assert_eq!(list("agents", "pool_name%3Dother"), "");
    assert_eq!(list("agents", "pool_namespace%3Dd"), "");
    assert_eq!(list("d", "pool_name!%3Dchat"), "1");
    assert_eq!(list("nowhere", ""), "");
    // A pool without capacity has no utilisation.
    let utilisation = format!("{BASE}/namespaces/agents/sluice_pool_utilisation");
    assert!(items(&api, &utilisation).is_empty());

    let call = |method: http::Method, path: &str| {
        let resp = api.handle(
            &http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request"),
        );
        let status = resp.status().as_u16();
        let body = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .expect("a full body")
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let (status, body) = call(
        http::Method::GET,
        &format!("{BASE}/namespaces/d/sluice_nothing"),
    );
    assert_eq!(
        (status, &body["kind"], &body["reason"]),
        (404, &json!("Status"), &json!("NotFound"))
    );
    let (status, body) = call(
        http::Method::GET,
        &format!("{BASE}/namespaces/d/sluice_queue_depth?labelSelector=pool_name%3D(p"),
    );
    assert_eq!(
        (status, &body["reason"], &body["code"]),
        (400, &json!("BadRequest"), &json!(400))
    );
    let (status, _) = call(
        http::Method::GET,
        &format!("{BASE}/namespaces/d/sluice_queue_depth/x"),
    );
    assert_eq!(status, 404);
    let (status, _) = call(http::Method::POST, BASE);
    assert_eq!(status, 405);
}

/// An HTTPS client presenting `cert` (when given), trusting `server_ca`.
fn https_client(
    server_ca: &TestCa,
    cert: Option<(&TestCa, &TestCert)>,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let config = match cert {
        Some((_, cert)) => server_ca.client_config_presenting(&[], cert),
        None => server_ca.client_config(&[]),
    };
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn an_hpa_reads_two_proxies_reports_through_the_aggregator() {
    // The push server, where two proxies subscribe and report.
    let proxies = registry(Duration::from_secs(60), Duration::from_secs(30));
    let push = PushServer::with_registry(
        proxies.clone(),
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        },
    )
    .await;
    let (_, mut s1) = push.subscribe("?proxy=p1").await;
    let (_, mut s2) = push.subscribe("?proxy=p2").await;
    s1.next_table().await;
    s2.next_table().await;
    let post = |body: String| {
        let req = http::Request::post(push.url(REPORT_PATH))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        answer(&push.client, req)
    };
    let json = |r: &LoadReport| serde_json::to_string(r).expect("json");
    for r in [
        report("p1", 3, 1, latency(10, 0)),
        report("p2", 2, 0, latency(5, 0)),
        report("p1", 3, 1, latency(60, 0)),
        report("p2", 2, 0, latency(55, 5)),
    ] {
        assert_eq!(post(json(&r)).await.0, 204);
    }
    assert_eq!(
        post(json(&report("p3", 1, 0, latency(0, 0)))).await.0,
        404,
        "not subscribed"
    );
    let mut short = report("p1", 1, 0, latency(0, 0));
    short.pools[0].latency.pop();
    assert_eq!(post(json(&short)).await.0, 400);
    assert_eq!(post("{}".into()).await.0, 400);
    // The proxies' loads are listed for the other replicas.
    let listed = push.listed().await;
    assert_eq!(
        listed["proxies"][0]["load"]["pools"][0]["inFlight"], 3,
        "{listed}"
    );

    // The API, behind TLS that wants the front-proxy certificate.
    let dir = std::env::temp_dir().join(format!("sluice-xm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let serving_ca = TestCa::new("serving");
    let files = serving_ca.leaf(&["127.0.0.1"]).write(&dir, "serving");
    let front_ca = TestCa::new("front-proxy-ca");
    let verifier = external_metrics::front_proxy_verifier(
        &front_ca.write(&dir, "front-proxy-ca.crt"),
        vec!["front-proxy-client".into()],
    )
    .expect("verifier");
    let tls = TlsConfig::with_client_verifier(vec![files], Duration::from_secs(60), verifier)
        .expect("tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = |path: &str| format!("https://{}{path}", listener.local_addr().expect("addr"));
    let (discovery, list) = (
        url(BASE),
        url(&format!(
            "{BASE}/namespaces/d/sluice_request_duration_p95_seconds?labelSelector=pool_name%3Dp"
        )),
    );
    let in_flight = url(&format!(
        "{BASE}/namespaces/d/sluice_requests_in_flight?labelSelector=pool_name%3Dp"
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(external_metrics::serve(
        listener,
        ServerConfig {
            tls: Some(tls),
            ..ServerConfig::default()
        },
        ExternalMetrics::new(proxies.clone()),
        async {
            let _ = stopped.await;
        },
    ));

    let aggregator = front_ca.client_leaf("front-proxy-client", &[], &[]);
    let client = https_client(&serving_ca, Some((&front_ca, &aggregator)));
    let get = |url: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(url)
                .header(
                    "x-remote-user",
                    "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                )
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = client.request(req).await.expect("answered");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };
    let (status, resources) = get(discovery.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(resources["kind"], "APIResourceList");
    assert_eq!(resources["groupVersion"], "external.metrics.k8s.io/v1beta1");
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "sluice_requests_in_flight",
            "sluice_queue_depth",
            "sluice_pool_utilisation",
            "sluice_request_duration_p95_seconds"
        ]
    );
    // 105 requests in the window, 5 of them slow: p95 near the top of the fast bucket.
    let (status, p95) = get(list).await;
    assert_eq!(status, 200);
    assert_eq!(p95["items"][0]["value"], "250m", "{p95}");
    assert_eq!(
        p95["items"][0]["metricName"],
        "sluice_request_duration_p95_seconds"
    );
    assert!(
        p95["items"][0]["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let (_, in_flight) = get(in_flight).await;
    assert_eq!(in_flight["items"][0]["value"], "5", "{in_flight}");

    // Anyone else is refused in the handshake: no certificate, one of another CA, one
    // of the front-proxy CA with a name not allowed.
    let other_ca = TestCa::new("other");
    let stranger = other_ca.client_leaf("front-proxy-client", &[], &[]);
    let intruder = front_ca.client_leaf("intruder", &[], &[]);
    for (who, client) in [
        ("no certificate", https_client(&serving_ca, None)),
        (
            "another CA",
            https_client(&serving_ca, Some((&other_ca, &stranger))),
        ),
        (
            "a name not allowed",
            https_client(&serving_ca, Some((&front_ca, &intruder))),
        ),
    ] {
        let req = http::Request::get(discovery.clone())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answered = client.request(req).await;
        assert!(
            answered.is_err(),
            "{who}: {:?}",
            answered.map(|r| r.status())
        );
    }

    let _ = stop.send(());
    server.await.expect("stops");
    push.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_replica_answers_for_the_proxies_of_its_peers() {
    // Replica A tracks p1 and p2; replica B tracks p3, and p1 too (it moved to B, and A
    // still lists it until its subscription there ends).
    let window = Duration::from_secs(60);
    let max_age = Duration::from_secs(30);
    let a = registry(window, max_age);
    let b = registry(window, max_age);
    let from = "127.0.0.1:1".parse().expect("addr");
    let _a = ["p1", "p2"].map(|p| a.register(p, from).expect("tracked"));
    let _b = ["p1", "p3"].map(|p| b.register(p, from).expect("tracked"));
    a.report(report("p1", 5, 0, latency(0, 0))).expect("kept");
    a.report(report("p2", 2, 1, latency(0, 0))).expect("kept");
    b.report(report("p1", 1, 0, latency(0, 0))).expect("kept");
    b.report(report("p3", 3, 0, latency(0, 0))).expect("kept");
    let server = PushServer::with_registry(
        a.clone(),
        PushConfig {
            heartbeat: Duration::from_secs(3600),
            ..PushConfig::default()
        },
    )
    .await;

    // B polls A (its peers resolve to A alone here) and serves both replicas' proxies.
    let (tx, _revisions) = tokio::sync::watch::channel(ProxyRevisions::new());
    let (loads_tx, mut loads) = tokio::sync::watch::channel(ProxyLoads::new());
    let poller = tokio::spawn(peers::run_with_loads(
        PeerConfig {
            target: server.base.trim_start_matches("http://").to_owned(),
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            token: None,
            ca: None,
        },
        tx,
        loads_tx,
    ));
    tokio::time::timeout(Duration::from_secs(10), loads.wait_for(|l| l.len() == 2))
        .await
        .expect("the peer's loads within 10 s")
        .expect("poller running");
    let api = ExternalMetrics::new(b.clone()).with_peers(loads);
    let in_flight = format!("{BASE}/namespaces/d/sluice_requests_in_flight");
    // p1 once, as B (where it reports now) has it: 1 + 2 + 3.
    assert_eq!(value(&items(&api, &in_flight)), ["6"]);
    let queue = format!("{BASE}/namespaces/d/sluice_queue_depth");
    assert_eq!(value(&items(&api, &queue)), ["1"]);
    poller.abort();
    server.stop().await;
}
