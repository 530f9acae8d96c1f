//! The README's first command works: `deploy/examples/standalone/demo.sh` (what `make
//! demo` runs) starts three agents and the proxy on 127.0.0.1:8080; the echo pool
//! answers from the agents in turn and a streamed chat completion arrives chunk by chunk.
//!
//! It uses the demo's fixed ports (8080, 9901, 9001-9003), so it fails if a demo is
//! already running on this machine.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_e2e::{bin, eventually, get, get_with};

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // The script's trap stops the agents and the proxy on SIGTERM.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn make_demo_serves_echo_and_streams_chat() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = bin("sluice").parent().context("bin dir")?.to_path_buf();
    let _demo = Demo(
        Command::new("bash")
            .arg(root.join("deploy/examples/standalone/demo.sh"))
            .env("SLUICE_BIN_DIR", &bin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?,
    );
    let proxy = "127.0.0.1:8080".parse()?;
    let admin = "127.0.0.1:9901".parse()?;
    eventually(Duration::from_secs(30), "the demo to be ready", || {
        Ok(get(admin, "/readyz")
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })?;

    for _ in 0..6 {
        let resp = get(proxy, "/agents/echo/hello")?;
        assert_eq!(resp.status, 200, "{resp:?}");
        let body: serde_json::Value = serde_json::from_str(&resp.body)?;
        assert_eq!(body["path"], "/agents/echo/hello");
        assert!(
            resp.header("x-demo-agent")
                .is_some_and(|a| a.starts_with("agent-"))
        );
    }

    // The weighted pool splits 70/30 exactly over whole cycles of its weights.
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let resp = get(proxy, "/agents/weighted/")?;
        assert_eq!(resp.status, 200, "{resp:?}");
        *counts
            .entry(
                resp.header("x-demo-agent")
                    .context("x-demo-agent")?
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("agent-1"), Some(&70), "{counts:?}");
    assert_eq!(counts.get("agent-2"), Some(&30), "{counts:?}");

    // Consumers: the secure pool takes demo-premium only.
    let premium = [("authorization", "Bearer demo-premium-key")];
    let standard = [("authorization", "Bearer demo-standard-key")];
    assert_eq!(get(proxy, "/agents/secure/x")?.status, 401);
    assert_eq!(get_with(proxy, "/agents/secure/x", &standard)?.status, 403);
    assert_eq!(get_with(proxy, "/agents/secure/x", &premium)?.status, 200);
    // The agent sees the gateway's identity headers, not the client's, and no key.
    let forged = [
        ("authorization", "Bearer demo-standard-key"),
        ("x-sluice-tier", "premium"),
    ];
    let seen: serde_json::Value =
        serde_json::from_str(&get_with(proxy, "/agents/echo/", &forged)?.body)?;
    assert_eq!(seen["headers"]["x-sluice-tier"], "standard");
    assert_eq!(seen["headers"]["x-sluice-consumer"], "demo-standard");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    // Rate limits: demo-standard has 50 a minute on echo (one used just above), so the
    // 51st request is refused with Retry-After; premium goes on.
    for i in 2..=50 {
        let resp = get_with(proxy, "/agents/echo/", &standard)?;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let refused = get_with(proxy, "/agents/echo/", &standard)?;
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry_after: u64 = refused
        .header("retry-after")
        .context("Retry-After")?
        .parse()?;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        refused
            .header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=50")),
        "{refused:?}"
    );
    assert!(
        refused.body.contains("\"tier\":\"standard\""),
        "{}",
        refused.body
    );
    assert_eq!(get_with(proxy, "/agents/echo/", &premium)?.status, 200);

    // A streamed completion: the first event arrives well before the last one.
    let mut stream = TcpStream::connect(proxy)?;
    let body = r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight"}]}"#;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut events = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if let Some(data) = line.strip_prefix("data: ") {
            events.push((Instant::now(), data.to_owned()));
            if data == "[DONE]" {
                break;
            }
        }
    }
    assert!(
        events.len() >= 10,
        "one event per word, then usage and [DONE]: {events:?}"
    );
    let spread = events[events.len() - 1].0 - events[0].0;
    // The agents wait 20 ms between tokens: a buffered response would arrive at once.
    assert!(
        spread >= Duration::from_millis(100),
        "events arrived together ({spread:?}): not streamed"
    );
    let usage = &events[events.len() - 2].1;
    assert!(usage.contains("\"usage\":{"), "{usage}");
    Ok(())
}
