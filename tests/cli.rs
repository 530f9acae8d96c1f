//! The small subcommands, run as a user would: `sluice hash-key`, `sluice compile`,
//! and flags refused before anything starts.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::Result;
use sluice_e2e::{bin, temp_dir};

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
