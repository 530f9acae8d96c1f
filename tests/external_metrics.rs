//! End to end: `sluice controller --from-dir --external-metrics-listen` with two
//! `sluice proxy --controller` processes under load. The proxies report their pools'
//! load; the controller answers kube-aggregator's calls (HTTPS, front-proxy client
//! certificate) with the sum, which matches what the proxies export on `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_e2e::{
    Process, demo_agent_with, eventually, get, metric_sum, subscribed_proxy, temp_dir,
};
use sluice_listener::testing::{TestCa, TestCert};

const WAIT: Duration = Duration::from_secs(30);
const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// `GET path` over TLS to `addr` (for the name `127.0.0.1`), presenting `cert`:
/// status and JSON body.
fn aggregator_get(
    addr: SocketAddr,
    serving: &TestCa,
    cert: &TestCert,
    path: &str,
) -> Result<(u16, Value)> {
    let config = serving.client_config_presenting(&[], cert);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let conn = rustls::ClientConnection::new(Arc::clone(&config), name)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Remote-User: system:serviceaccount:kube-system:horizontal-pod-autoscaler\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    if let Err(e) = tls.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e.into());
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    ))
}

/// The value of the single item of a list, as a number (a quantity `3` or `1500m`).
fn single_value(list: &Value) -> Option<f64> {
    let items = list["items"].as_array()?;
    let [item] = items.as_slice() else {
        return None;
    };
    let q = item["value"].as_str()?;
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.parse().ok(),
    }
}

/// Sends `GET path` to `addr` in a thread of its own, without waiting for the answer.
fn send_in_background(addr: SocketAddr, path: &'static str) -> std::thread::JoinHandle<u16> {
    std::thread::spawn(move || get(addr, path).map_or(0, |r| r.status))
}

#[test]
fn an_hpa_reads_the_load_of_two_proxies_from_the_controller() -> Result<()> {
    // Each request takes about 3 s; the pool takes 2 at a time per proxy, and queues.
    let (_agent, agent) =
        demo_agent_with("agent", &["--latency-p50", "3s", "--latency-p99", "3s"])?;
    let dir = temp_dir("external-metrics");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("pool.yaml"),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo, namespace: e2e}}\n\
             spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n  queue: {{maxDepth: 10, timeout: 30s}}\n  \
             backends: [{{endpoints: [\"{agent}\"], maxConcurrency: 2}}]\n"
        ),
    )?;
    let serving = TestCa::new("serving");
    let files = serving.leaf(&["127.0.0.1"]).write(&dir, "serving");
    let front_proxy = TestCa::new("front-proxy-ca");
    let front_ca = front_proxy.write(&dir, "front-proxy-ca.crt");
    let arg = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (manifests_arg, cert, key, ca) = (
        arg(&manifests),
        arg(&files.cert),
        arg(&files.key),
        arg(&front_ca),
    );
    let mut controller = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            &manifests_arg,
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "50ms",
            "--external-metrics-listen",
            "127.0.0.1:0",
            "--external-metrics-tls-cert",
            &cert,
            "--external-metrics-tls-key",
            &key,
            "--requestheader-client-ca",
            &ca,
            "--requestheader-allowed-name",
            "front-proxy-client",
        ],
    )?;
    let api = controller.logged_addr("serving external.metrics.k8s.io", "listen")?;
    let push = controller.logged_addr("controller started", "listen")?;
    let mut proxies = Vec::new();
    for name in ["proxy-1", "proxy-2"] {
        proxies.push(subscribed_proxy(
            name,
            push,
            name,
            &["--report-interval", "100ms"],
        )?);
    }
    let aggregator = front_proxy.client_leaf("front-proxy-client", &[], &[]);
    let metric = |name: &str| -> Result<Value> {
        let path = format!("{BASE}/namespaces/e2e/{name}?labelSelector=pool_name%3Decho");
        let (status, list) = aggregator_get(api, &serving, &aggregator, &path)?;
        anyhow::ensure!(status == 200, "{path}: {status} {list}");
        Ok(list)
    };

    // Both proxies report the pool, idle: a window starts before the load.
    eventually(WAIT, "both proxies to report the pool", || {
        let listed: Value = serde_json::from_str(&get(push, "/v1/proxies")?.body)?;
        let reporting = listed["proxies"].as_array().map(|a| {
            a.iter()
                .filter(|p| p["load"]["pools"][0]["pool"] == "e2e/echo")
                .count()
        });
        Ok((reporting == Some(2)).then_some(()))
    })?;
    let (status, resources) = aggregator_get(api, &serving, &aggregator, BASE)?;
    assert_eq!(status, 200);
    assert_eq!(resources["kind"], "APIResourceList", "{resources}");

    // Load: 3 requests through proxy-1 (2 in flight, 1 queued), 1 through proxy-2.
    let (t1, t2) = (proxies[0].1, proxies[1].1);
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(send_in_background(t1, "/agents/echo/slow"));
    }
    requests.push(send_in_background(t2, "/agents/echo/slow"));
    let admins: Vec<SocketAddr> = proxies.iter().map(|p| p.2).collect();
    let summed = |family: &str| -> Result<f64> {
        admins.iter().try_fold(0.0, |sum, admin| {
            Ok(sum
                + metric_sum(
                    &get(*admin, "/metrics")?.body,
                    family,
                    &[r#"pool="e2e/echo""#],
                ))
        })
    };
    // What the HPA reads is what the proxies export, summed.
    let (in_flight, queued) = eventually(WAIT, "the load in the external metrics", || {
        let exported = (
            summed("sluice_requests_in_flight")?,
            summed("sluice_queue_depth")?,
        );
        if exported.1 < 1.0 {
            return Ok(None);
        }
        let served = (
            single_value(&metric("sluice_requests_in_flight")?),
            single_value(&metric("sluice_queue_depth")?),
        );
        Ok((served == (Some(exported.0), Some(exported.1))).then_some(exported))
    })?;
    assert_eq!(queued, 1.0);
    assert!((3.0..=4.0).contains(&in_flight), "{in_flight}");
    // Utilisation: what is in flight over the capacity, 2 per proxy.
    eventually(WAIT, "the utilisation in the external metrics", || {
        let exported = summed("sluice_requests_in_flight")? / 4.0;
        let served = single_value(&metric("sluice_pool_utilisation")?);
        Ok(served.filter(|u| (u - exported).abs() < 0.001))
    })?;

    for r in requests {
        assert_eq!(r.join().map_err(|_| anyhow::anyhow!("thread"))?, 200);
    }
    // The p95 over the window: three requests took about 3 s (2.5 s to 5 s), the
    // queued one about 6 s (5 s to 10 s).
    let p95 = eventually(WAIT, "the latency in the external metrics", || {
        let finished = summed("sluice_request_duration_seconds_count")?;
        let p95 = single_value(&metric("sluice_request_duration_p95_seconds")?);
        Ok((finished == 4.0)
            .then_some(p95)
            .flatten()
            .filter(|p| *p > 0.0))
    })?;
    assert!((2.5..=10.0).contains(&p95), "{p95}");
    // The last body ends a moment after its headers were counted.
    eventually(WAIT, "no request in flight", || {
        let served = single_value(&metric("sluice_requests_in_flight")?);
        Ok((served == Some(0.0)).then_some(()))
    })?;

    // Bad input, and a caller without the front-proxy certificate.
    let (status, body) = aggregator_get(
        api,
        &serving,
        &aggregator,
        &format!("{BASE}/namespaces/e2e/sluice_nothing"),
    )?;
    assert_eq!((status, body["kind"].as_str()), (404, Some("Status")));
    let (status, _) = aggregator_get(
        api,
        &serving,
        &aggregator,
        &format!("{BASE}/namespaces/e2e/sluice_queue_depth?labelSelector=a%20b"),
    )?;
    assert_eq!(status, 400);
    let stranger = TestCa::new("other").client_leaf("front-proxy-client", &[], &[]);
    assert!(aggregator_get(api, &serving, &stranger, BASE).is_err());

    drop(proxies);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
