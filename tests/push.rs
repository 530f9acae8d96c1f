//! End to end: `sluice controller --from-dir` pushes tables to two
//! `sluice proxy --controller` processes; an edit of the folder reaches both; with the
//! controller gone, both keep serving the last table. The controller knows which
//! version each proxy acknowledged.

use std::time::Duration;

use anyhow::Result;
use sluice_e2e::{Process, demo_agent, eventually, get, subscribed_proxy, temp_dir};

fn pool(endpoint: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo, namespace: e2e}}\n\
         spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n  backends: [{{endpoints: [\"{endpoint}\"]}}]\n"
    )
}

#[test]
fn controller_pushes_to_two_proxies_which_survive_its_loss() -> Result<()> {
    let (_agent_a, a) = demo_agent("agent-a")?;
    let (_agent_b, b) = demo_agent("agent-b")?;

    let dir = temp_dir("push");
    std::fs::write(dir.join("pool.yaml"), pool(&a.to_string()))?;
    let dir_arg = dir.to_string_lossy().to_string();
    let mut controller = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            &dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "50ms",
            "--heartbeat",
            "1s",
        ],
    )?;
    let controller_addr = controller.logged_addr("controller started", "listen")?;

    let mut proxies = Vec::new();
    for name in ["proxy-1", "proxy-2"] {
        let (p, traffic, admin) = subscribed_proxy(name, controller_addr, name, &[])?;
        proxies.push((p, traffic, admin));
    }

    let served_by = |traffic| -> Result<Option<String>> {
        let resp = get(traffic, "/agents/echo/hello")?;
        Ok(resp.header("x-demo-agent").map(str::to_owned))
    };

    // Both proxies receive the first table and forward to agent-a.
    for (_, traffic, admin) in &proxies {
        eventually(Duration::from_secs(20), "proxy ready", || {
            Ok((get(*admin, "/readyz")?.status == 200).then_some(()))
        })?;
        let resp = get(*traffic, "/agents/echo/hello")?;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-demo-agent"), Some("agent-a"));
        let echoed: serde_json::Value = serde_json::from_str(&resp.body)?;
        assert_eq!(echoed["path"], "/agents/echo/hello");
        let routes: serde_json::Value = serde_json::from_str(&get(*admin, "/routes")?.body)?;
        assert_eq!(routes["version"], 1);
    }

    // An edit of the folder reaches both proxies.
    std::fs::write(dir.join("pool.yaml"), pool(&b.to_string()))?;
    for (_, traffic, admin) in &proxies {
        eventually(
            Duration::from_secs(20),
            "the edit to reach the proxy",
            || Ok((served_by(*traffic)?.as_deref() == Some("agent-b")).then_some(())),
        )?;
        let routes: serde_json::Value = serde_json::from_str(&get(*admin, "/routes")?.body)?;
        assert_eq!(routes["version"], 2);
    }

    // The controller knows both proxies run version 2 (they acknowledged it).
    let listed = eventually(
        Duration::from_secs(20),
        "both acknowledgements of version 2",
        || {
            let listed: serde_json::Value =
                serde_json::from_str(&get(controller_addr, "/v1/proxies")?.body)?;
            Ok((listed["current"] == 2).then_some(listed))
        },
    )?;
    assert_eq!(listed["version"], 2, "{listed}");
    let ids: Vec<&str> = listed["proxies"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["proxy-1", "proxy-2"], "{listed}");
    let metrics = get(controller_addr, "/metrics")?.body;
    assert!(
        metrics.contains(r#"sluice_controller_proxies{state="current"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_controller_proxies{state="stale"} 0"#),
        "{metrics}"
    );

    // A broken edit is not published: the proxies keep version 2.
    std::fs::write(dir.join("pool.yaml"), "kind: [")?;
    controller.wait_for_log("cannot read manifests", Duration::from_secs(20))?;

    // Without the controller, both proxies keep serving the last table.
    controller.kill();
    for (p, traffic, admin) in &mut proxies {
        p.wait_for_log("controller stream ended", Duration::from_secs(20))?;
        for _ in 0..5 {
            assert_eq!(served_by(*traffic)?.as_deref(), Some("agent-b"));
        }
        assert_eq!(get(*admin, "/readyz")?.status, 200);
        let metrics = get(*admin, "/metrics")?.body;
        assert!(
            metrics.contains("sluice_route_table_version 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"sluice_requests_total{code="2xx",pool="e2e/echo"}"#),
            "{metrics}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
