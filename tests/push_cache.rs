//! End to end: a proxy persists the tables it receives (`--table-cache`), and one
//! restarted while the controller is down serves its persisted table at once; when the
//! controller returns, the proxy resubscribes and takes the new table. Along the way,
//! the controller knows which version the proxy acknowledged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use sluice_e2e::{Process, demo_agent, eventually, get, subscribed_proxy, temp_dir};

fn pool(endpoint: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo, namespace: e2e}}\n\
         spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n  backends: [{{endpoints: [\"{endpoint}\"]}}]\n"
    )
}

fn controller(dir: &str, listen: &str) -> Result<(Process, SocketAddr)> {
    let mut p = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            dir,
            "--listen",
            listen,
            "--poll-interval",
            "50ms",
            "--heartbeat",
            "1s",
        ],
    )?;
    let addr = p.logged_addr("controller started", "listen")?;
    Ok((p, addr))
}

fn proxy(
    name: &str,
    controller: SocketAddr,
    cache: &str,
) -> Result<(Process, SocketAddr, SocketAddr)> {
    subscribed_proxy(name, controller, "e2e-proxy", &["--table-cache", cache])
}

fn served_by(traffic: SocketAddr) -> Result<Option<String>> {
    let resp = get(traffic, "/agents/echo/hello")?;
    Ok((resp.status == 200)
        .then(|| resp.header("x-demo-agent").map(str::to_owned))
        .flatten())
}

fn json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&get(addr, path)?.body)?)
}

#[test]
fn a_proxy_restarted_while_the_controller_is_down_serves_its_persisted_table() -> Result<()> {
    let (_agent_a, a) = demo_agent("agent-a")?;
    let (_agent_b, b) = demo_agent("agent-b")?;
    let dir = temp_dir("push-cache");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("pool.yaml"), pool(&a.to_string()))?;
    let manifests_arg = manifests.to_string_lossy().to_string();
    let cache = dir.join("table.json");
    let cache_arg = cache.to_string_lossy().to_string();

    // Controller and proxy: the proxy is served, acknowledges, and caches the table.
    let (mut ctl, ctl_addr) = controller(&manifests_arg, "127.0.0.1:0")?;
    let (mut first, traffic, admin) = proxy("proxy", ctl_addr, &cache_arg)?;
    eventually(Duration::from_secs(20), "proxy ready", || {
        Ok((get(admin, "/readyz")?.status == 200).then_some(()))
    })?;
    assert_eq!(served_by(traffic)?.as_deref(), Some("agent-a"));
    first.wait_for_log("route table cached", Duration::from_secs(20))?;
    let listed = eventually(
        Duration::from_secs(20),
        "the controller to record the acknowledgement",
        || {
            let listed = json(ctl_addr, "/v1/proxies")?;
            Ok((listed["current"] == 1).then_some(listed))
        },
    )?;
    assert_eq!(listed["proxies"][0]["id"], "e2e-proxy", "{listed}");
    assert_eq!(listed["proxies"][0]["version"], 1, "{listed}");
    let metrics = get(ctl_addr, "/metrics")?.body;
    assert!(
        metrics.contains(r#"sluice_controller_proxies{state="current"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_controller_push_latency_seconds_count 1"),
        "{metrics}"
    );
    let cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cache)?)?;
    assert_eq!(cached["version"], 1);

    // The controller goes, then the proxy.
    ctl.kill();
    first.kill();

    // Restarted with the same cache and no controller: ready at once, served.
    let (mut second, traffic, admin) = proxy("proxy-restarted", ctl_addr, &cache_arg)?;
    second.wait_for_log("serving the cached route table", Duration::from_secs(20))?;
    assert_eq!(get(admin, "/readyz")?.status, 200);
    for _ in 0..5 {
        assert_eq!(served_by(traffic)?.as_deref(), Some("agent-a"));
    }
    assert_eq!(json(admin, "/routes")?["version"], 1);

    // The controller returns, on the same address, with an edited pool: the proxy
    // resubscribes, switches, acknowledges, and caches the new table.
    std::fs::write(manifests.join("pool.yaml"), pool(&b.to_string()))?;
    let (_ctl, _) = controller(&manifests_arg, &ctl_addr.to_string())?;
    eventually(
        Duration::from_secs(20),
        "the new table to reach the proxy",
        || Ok((served_by(traffic)?.as_deref() == Some("agent-b")).then_some(())),
    )?;
    eventually(
        Duration::from_secs(20),
        "the returned controller to record the acknowledgement",
        || Ok((json(ctl_addr, "/v1/proxies")?["current"] == 1).then_some(())),
    )?;
    eventually(Duration::from_secs(20), "the cache to hold agent-b", || {
        let text = std::fs::read_to_string(&cache)?;
        Ok(text.contains(&b.to_string()).then_some(()))
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
