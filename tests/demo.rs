//! The README's first command works: `deploy/examples/standalone/demo.sh` (what `make
//! demo` runs) starts three agents and the proxy; the echo pool answers from the agents
//! in turn and a streamed chat completion arrives chunk by chunk.
//!
//! The demo runs on ports the test picked free (`PORT`, `ADMIN_PORT`, `AGENT_PORTS`),
//! never on the defaults: a demo the user left running keeps its ports and gets no
//! traffic from here. A port that is taken stops the demo with a message, before
//! anything starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_e2e::{bin, eventually, free_port, get, get_with};

/// The demo script, killed (with everything it started) when dropped.
struct Demo {
    child: Child,
    /// Lines of its standard output, as they come.
    stdout: mpsc::Receiver<String>,
}

impl Demo {
    /// Starts the demo with `ports`: traffic, admin, then the three agents. Its
    /// standard error is the test's, or a pipe with `capture_stderr`.
    fn start(ports: [u16; 5], capture_stderr: bool) -> Result<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin_dir = bin("sluice").parent().context("bin dir")?.to_path_buf();
        let mut child = Command::new("bash")
            .arg(root.join("deploy/examples/standalone/demo.sh"))
            .env("SLUICE_BIN_DIR", &bin_dir)
            .env("PORT", ports[0].to_string())
            .env("ADMIN_PORT", ports[1].to_string())
            .env(
                "AGENT_PORTS",
                format!("{},{},{}", ports[2], ports[3], ports[4]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()?;
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[demo] {line}");
                let _ = tx.send(line);
            }
        });
        Ok(Self { child, stdout })
    }

    /// Waits for the banner line that starts with `needle`.
    fn wait_for_banner(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let status = self.child.try_wait()?;
        bail!("no {needle:?} from the demo (exited: {status:?})")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The script's trap stops the agents and the proxy on SIGTERM.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Five free ports, below the ephemeral range (see [`free_port`]).
fn free_ports() -> [u16; 5] {
    std::array::from_fn(|_| free_port())
}

#[test]
fn make_demo_serves_echo_and_streams_chat() -> Result<()> {
    let ports = free_ports();
    let mut demo = Demo::start(ports, false)?;
    let banner = demo.wait_for_banner("Sluice is up on")?;
    assert!(
        banner.starts_with(&format!(
            "Sluice is up on 127.0.0.1:{} (admin on 127.0.0.1:{})",
            ports[0], ports[1]
        )),
        "{banner}"
    );
    let proxy: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse()?;
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
    assert_eq!(seen["headers"]["x-sluice-consumer"], "demo/demo-standard");
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

#[test]
fn a_taken_port_stops_the_demo_with_a_message() -> Result<()> {
    let ports = free_ports();
    // Another server holds the traffic port, as a second `make demo` would find it.
    let holder = TcpListener::bind(("127.0.0.1", ports[0]))?;
    let mut demo = Demo::start(ports, true)?;
    let status = demo.child.wait()?;
    let mut stderr = String::new();
    demo.child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    let stdout: Vec<String> = demo.stdout.try_iter().collect();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{} for PORT (proxy traffic)", ports[0])),
        "{stderr}"
    );
    assert!(stderr.contains("make demo PORT="), "{stderr}");
    assert!(
        !stdout.iter().any(|l| l.contains("Sluice is up")),
        "{stdout:?}"
    );
    // Nothing was started: the other ports are still free.
    for port in &ports[1..] {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} is in use"
        );
    }
    drop(holder);
    Ok(())
}
