//! End to end: `sluice proxy --config DIR` runs without a controller, reloads on change,
//! and keeps the last good table through a broken edit or an invalid object.

use std::time::Duration;

use anyhow::Result;
use sluice_e2e::{Process, demo_agent, eventually, get, temp_dir};

fn pool(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: {name}}}\n\
         spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n  backends: [{{endpoints: [\"{endpoint}\"]}}]\n"
    )
}

#[test]
fn file_mode_reloads_and_keeps_the_last_good_table() -> Result<()> {
    let (_agent_a, a) = demo_agent("agent-a")?;
    let (_agent_b, b) = demo_agent("agent-b")?;
    let (a, b) = (a.to_string(), b.to_string());

    let dir = temp_dir("standalone");
    std::fs::write(dir.join("pool.yaml"), pool("echo", &a))?;
    let dir_arg = dir.to_string_lossy().to_string();
    let mut proxy = Process::start(
        "proxy",
        "sluice",
        &[
            "proxy",
            "--config",
            &dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--poll-interval",
            "50ms",
        ],
    )?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    let served_by = || -> Result<Option<String>> {
        Ok(get(traffic, "/agents/echo/x")?
            .header("x-demo-agent")
            .map(str::to_owned))
    };
    let wait = Duration::from_secs(20);

    eventually(wait, "first table", || {
        Ok((served_by()?.as_deref() == Some("agent-a")).then_some(()))
    })?;

    // A file that is not YAML: logged, the last table stays.
    std::fs::write(dir.join("pool.yaml"), "kind: [")?;
    proxy.wait_for_log("cannot read manifests", wait)?;
    assert_eq!(served_by()?.as_deref(), Some("agent-a"));

    // Valid YAML with an invalid object: its diagnostic is logged, the last table stays.
    std::fs::write(dir.join("pool.yaml"), pool("echo", "not-an-address"))?;
    let line = proxy.wait_for_log("is not host:port", wait)?;
    assert!(
        line.contains("AgentPool default/echo: spec.backends[0].endpoints[0]"),
        "{line}"
    );
    proxy.wait_for_log("manifests have errors; keeping the last table", wait)?;
    assert_eq!(served_by()?.as_deref(), Some("agent-a"));

    // A good edit goes live.
    std::fs::write(dir.join("pool.yaml"), pool("echo", &b))?;
    eventually(wait, "the fixed edit", || {
        Ok((served_by()?.as_deref() == Some("agent-b")).then_some(()))
    })?;
    let routes: serde_json::Value = serde_json::from_str(&get(admin, "/routes")?.body)?;
    assert_eq!(routes["version"], 2, "the broken edits published nothing");

    // Unknown paths get a JSON 404 from the proxy itself.
    let resp = get(traffic, "/nowhere")?;
    assert_eq!(resp.status, 404);
    assert!(resp.body.contains("no_route"), "{}", resp.body);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
