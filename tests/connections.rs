//! End to end: a proxy out of file descriptors keeps its accept loop alive. Its limit
//! is lowered with `prlimit` while it runs; connections beyond it make `accept()` fail,
//! which is logged once, counted, and paced; once they close, it serves again.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_e2e::{Process, demo_agent, eventually, get, temp_dir};

#[test]
fn a_proxy_out_of_descriptors_backs_off_counts_and_recovers() -> Result<()> {
    let (_agent, agent) = demo_agent("agent")?;
    let dir = temp_dir("descriptors");
    std::fs::write(
        dir.join("pool.yaml"),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo}}\n\
             spec:\n  matches: [{{pathPrefix: /}}]\n  backends: [{{endpoints: [\"{agent}\"]}}]\n"
        ),
    )?;
    let config = dir.to_string_lossy().into_owned();
    let mut proxy = Process::start(
        "proxy",
        "sluice",
        &[
            "proxy",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    )?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    let wait = Duration::from_secs(20);
    eventually(wait, "the proxy ready", || {
        Ok((get(traffic, "/x")?.status == 200).then_some(()))
    })?;

    let limit = 64;
    let status = Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(format!("--pid={}", proxy.id()))
        .status()
        .context("prlimit")?;
    anyhow::ensure!(status.success(), "prlimit failed: {status}");
    // More connections than descriptors: the kernel completes them into the backlog,
    // the proxy fails to accept the ones past its limit.
    let mut held = Vec::new();
    for _ in 0..limit * 2 {
        held.push(TcpStream::connect_timeout(
            &traffic,
            Duration::from_secs(5),
        )?);
    }
    proxy.wait_for_log("accept failed", wait)?;

    // The silent connections are closed after the header-read timeout at the latest;
    // closing them now frees the descriptors sooner.
    drop(held);
    eventually(wait, "the proxy to serve again", || {
        Ok(get(traffic, "/x")
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })?;
    proxy.wait_for_log("accepting connections again", wait)?;
    let metrics = get(admin, "/metrics")?.body;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_listener_accept_errors_total")
                && l.contains("listener=\"http\"")
                && l.contains("reason=\"descriptor_limit\"")
        })
        .context("no descriptor_limit count")?;
    let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
    assert!(count >= 1.0, "{line}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
