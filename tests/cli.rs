//! The binary as a user meets it: `sluice hash-key`, `sluice compile`, `--version`,
//! flags refused before anything starts, user errors as one line (no backtrace), a
//! closed stdout ending quietly, and a bad manifest counted where it can be alerted on.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_e2e::{Process, bin, eventually, get, temp_dir};

fn sluice(args: &[&str], stdin: &str) -> Result<Output> {
    let mut child = Command::new(bin("sluice"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[test]
fn hash_key_prints_the_sha256_of_the_key() -> Result<()> {
    let out = sluice(&["hash-key"], "abc\n")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    for bad in ["", "  \n", "two words\n"] {
        let out = sluice(&["hash-key"], bad)?;
        assert!(!out.status.success(), "{bad:?} must be refused");
        assert!(String::from_utf8(out.stderr)?.contains("key"));
    }
    Ok(())
}

#[test]
fn compile_prints_the_table_or_the_diagnostics() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("deploy/examples/standalone");
    let out = sluice(&["compile", "-f", &example.to_string_lossy()], "")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(table["pools"].as_array().is_some_and(|p| !p.is_empty()));

    let dir = temp_dir("cli-compile");
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: x}\nspec:\n  matches: [{pathPrefix: nope}]\n  backends: [{endpoints: [\"127.0.0.1:1\"]}]\n",
    )?;
    let out = sluice(&["compile", "-f", &dir.to_string_lossy()], "")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no table on errors");
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("AgentPool default/x: spec.matches[0].pathPrefix"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_zero_interval_is_refused_before_anything_starts() -> Result<()> {
    for args in [
        &["controller", "--poll-interval", "0s", "--print-rbac"][..],
        &["controller", "--heartbeat", "0ms", "--print-rbac"],
        &["controller", "--peers-interval", "0s", "--print-rbac"],
        &["proxy", "--poll-interval", "0s"],
    ] {
        let out = sluice(args, "")?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr)?;
        assert!(stderr.contains("longer than zero"), "{args:?}: {stderr}");
    }
    Ok(())
}

#[test]
fn version_names_the_release_and_the_commit() -> Result<()> {
    let out = sluice(&["--version"], "")?;
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout)?;
    let version = env!("CARGO_PKG_VERSION");
    let commit = line
        .trim()
        .strip_prefix(&format!("sluice {version} ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .with_context(|| format!("`sluice {version} (COMMIT)` expected, got {line:?}"))?;
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit:?}"
    );
    Ok(())
}

#[test]
fn a_user_error_is_one_line_even_with_rust_backtrace() -> Result<()> {
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["proxy", "--config", "/nonexistent", "--admin", "0.0.0.0:0"],
            "",
            "error: --admin 0.0.0.0:0 is not a loopback address",
        ),
        (&["hash-key"], "", "error: no key on standard input"),
        (&["compile", "-f", "/nonexistent/pools.yaml"], "", "error: "),
    ];
    for (args, stdin, expected) in cases {
        let mut child = Command::new(bin("sluice"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8(out.stderr)?;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
    Ok(())
}

#[test]
fn a_closed_stdout_ends_quietly() -> Result<()> {
    for args in [
        &["controller", "--print-rbac"][..],
        &["crds"],
        &["compile", "-f", "../deploy/examples/standalone"],
    ] {
        let mut child = Command::new(bin("sluice"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // `| head -0`: the reader is gone before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8(out.stderr)?;
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    Ok(())
}

/// `sluice_route_table_updates_total{result}` from the proxy's admin listener.
fn table_updates(admin: std::net::SocketAddr, result: &str) -> Result<u64> {
    let metrics = get(admin, "/metrics")?.body;
    let series = format!("sluice_route_table_updates_total{{result=\"{result}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(Ok(0), str::parse)?)
}

#[test]
fn a_manifest_that_does_not_parse_or_compile_counts_as_rejected_in_file_mode() -> Result<()> {
    let dir = temp_dir("cli-rejected");
    let pool = |address: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo}}\n\
             spec:\n  matches: [{{pathPrefix: /echo/}}]\n  backends: [{{endpoints: [\"{address}\"]}}]\n"
        )
    };
    std::fs::write(dir.join("pool.yaml"), pool("127.0.0.1:1"))?;
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
    let admin = proxy.logged_addr("proxy started", "admin")?;
    let wait = Duration::from_secs(20);
    let counts = || -> Result<(u64, u64)> {
        Ok((
            table_updates(admin, "applied")?,
            table_updates(admin, "rejected")?,
        ))
    };
    eventually(wait, "the first table", || {
        Ok((counts()? == (1, 0)).then_some(()))
    })?;

    // Not YAML: never compiled, so the store never sees it; it still counts.
    std::fs::write(dir.join("pool.yaml"), "kind: [")?;
    eventually(wait, "a rejection of the unparsable file", || {
        Ok((counts()? == (1, 1)).then_some(()))
    })?;
    // YAML whose pool does not compile.
    std::fs::write(dir.join("pool.yaml"), pool("not-an-address"))?;
    eventually(wait, "a rejection of the invalid pool", || {
        Ok((counts()? == (1, 2)).then_some(()))
    })?;
    // Fixed: applied again, and the rejections stay counted.
    std::fs::write(dir.join("pool.yaml"), pool("127.0.0.1:2"))?;
    eventually(wait, "the fixed table", || {
        Ok((counts()? == (2, 2)).then_some(()))
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn after_sigterm_the_proxy_accepts_through_the_shutdown_delay_then_exits() -> Result<()> {
    let dir = temp_dir("cli-shutdown");
    std::fs::write(
        dir.join("pool.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: echo}\n\
         spec:\n  matches: [{pathPrefix: /echo/}]\n  backends: [{endpoints: [\"127.0.0.1:1\"]}]\n",
    )?;
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
            "--shutdown-delay",
            "3s",
            "--drain-timeout",
            "1s",
        ],
    )?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    proxy.wait_for_log("route table published", Duration::from_secs(20))?;
    proxy.signal("TERM")?;
    proxy.wait_for_log("still accepting connections", Duration::from_secs(5))?;
    // Within the delay a new request is still taken (and answered by the proxy: the
    // pool's endpoint does not listen).
    assert_eq!(get(traffic, "/echo/x")?.status, 502);
    proxy.wait_for_exit(Duration::from_secs(20))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
