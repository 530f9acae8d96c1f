//! Support for the end-to-end tests: start the real binaries, learn the addresses they
//! bound from their logs, talk HTTP to them, and wait for conditions without sleeping
//! blindly.
//!
//! The binaries are found next to the test executable's folder (`target/debug`), so run
//! `cargo build --workspace` before `cargo test` (`make test` does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod load;
pub mod redis;
pub mod sse;

/// The path of a workspace binary built beside this test.
///
/// # Panics
///
/// When the binary has not been built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A child process whose stderr is collected line by line (and echoed, prefixed, to
/// the test's stderr). Killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts workspace binary `bin_name` with `args`.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn start(name: &str, bin_name: &str, args: &[&str]) -> Result<Self> {
        Self::start_with_env(name, bin_name, args, &[])
    }

    /// Starts workspace binary `bin_name` with `args` and the environment variables
    /// `env` added.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn start_with_env(
        name: &str,
        bin_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut command = Command::new(bin(bin_name));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        Self::spawn(name, command).with_context(|| format!("starting {bin_name}"))
    }

    /// Starts `command` (any program), its stdout discarded.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
        })
    }

    /// Waits for a log line containing `needle` and returns it.
    ///
    /// # Errors
    ///
    /// When no such line appears within `timeout` or the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let name = self.name.clone();
        let lines = self.lines.clone();
        let child = &mut self.child;
        eventually(timeout, &format!("{name} to log {needle:?}"), || {
            let found = lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if found.is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(anyhow::anyhow!("{name} exited with {status}"));
            }
            Ok(found)
        })
    }

    /// Waits for a log line containing `needle` and returns the socket address given
    /// in its `field=ADDR` part.
    ///
    /// # Errors
    ///
    /// As [`Process::wait_for_log`], or when the field is missing.
    pub fn logged_addr(&mut self, needle: &str, field: &str) -> Result<SocketAddr> {
        let line = self.wait_for_log(needle, Duration::from_secs(20))?;
        let key = format!("{field}=");
        let start = line
            .find(&key)
            .with_context(|| format!("no {key} in {line:?}"))?
            + key.len();
        let value = line[start..].split_whitespace().next().unwrap_or_default();
        value
            .parse()
            .with_context(|| format!("{value:?} in {line:?}"))
    }

    /// Sends the process signal `name` (`TERM`, `INT`...) with `kill`.
    ///
    /// # Errors
    ///
    /// When `kill` cannot be run or fails.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
        Ok(())
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How many file descriptors the process holds open (`/proc/PID/fd`).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read (the process is gone).
    pub fn open_descriptors(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.id()))?.count())
    }

    /// The process's resident memory in KiB (`VmRSS` in `/proc/PID/status`).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read or holds no `VmRSS`.
    pub fn resident_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line.trim().trim_end_matches("kB").trim().parse()?)
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Errors
    ///
    /// When it is still running after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let name = self.name.clone();
        let child = &mut self.child;
        eventually(
            timeout,
            &format!("{name} to exit"),
            || Ok(child.try_wait()?),
        )
    }

    /// Stops the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `sluice-demo-agent` named `name` (answering in about 1 ms) and returns it
/// with the address it listens on.
///
/// # Errors
///
/// When it cannot be started or does not log its address.
pub fn demo_agent(name: &str) -> Result<(Process, SocketAddr)> {
    demo_agent_with(name, &["--latency-p50", "1ms", "--latency-p99", "1ms"])
}

/// Starts `sluice-demo-agent` named `name` with the flags `args` (latency, token
/// interval, request log...) and returns it with the address it listens on.
///
/// # Errors
///
/// When it cannot be started or does not log its address.
pub fn demo_agent_with(name: &str, args: &[&str]) -> Result<(Process, SocketAddr)> {
    let mut all = vec!["--listen", "127.0.0.1:0", "--name", name];
    all.extend_from_slice(args);
    let mut agent = Process::start(name, "sluice-demo-agent", &all)?;
    let addr = agent.logged_addr("demo agent listening", "addr")?;
    Ok((agent, addr))
}

/// Starts `sluice proxy --config DIR` (process `name`) polling `dir` every 100 ms,
/// with `extra` arguments, listening on ports of its own choosing; returns it with its
/// traffic and admin addresses.
///
/// # Errors
///
/// When it cannot be started or does not log its addresses.
pub fn config_proxy(
    name: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Result<(Process, SocketAddr, SocketAddr)> {
    let dir = dir.to_string_lossy();
    let mut args = vec![
        "proxy",
        "--config",
        &dir,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--poll-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let mut proxy = Process::start(name, "sluice", &args)?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    Ok((proxy, traffic, admin))
}

/// The sum of the samples of metric `name` whose labels include every one of
/// `labels` (`key="value"`), in the Prometheus text `metrics`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `sluice proxy` (process `name`) subscribed as `proxy_id` to the controller
/// at `controller`, with `extra` arguments, listening on ports of its own choosing;
/// returns it with its traffic and admin addresses.
///
/// # Errors
///
/// When it cannot be started or does not log its addresses.
pub fn subscribed_proxy(
    name: &str,
    controller: SocketAddr,
    proxy_id: &str,
    extra: &[&str],
) -> Result<(Process, SocketAddr, SocketAddr)> {
    let url = format!("http://{controller}");
    let mut args = vec![
        "proxy",
        "--controller",
        &url,
        "--proxy-id",
        proxy_id,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut proxy = Process::start(name, "sluice", &args)?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    Ok((proxy, traffic, admin))
}

/// Calls `check` every 20 ms until it returns `Some`, fails, or `timeout` passes.
///
/// # Errors
///
/// When `check` fails or `timeout` passes first; the message says what was awaited.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response read by [`get`].
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` over HTTP/1.1 with `Connection: close` and reads the response.
///
/// # Errors
///
/// On connection or protocol failure.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    get_with(addr, path, &[])
}

/// Sends `GET path` with extra `headers`, as [`get`] does.
///
/// # Errors
///
/// On connection or protocol failure.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request(addr, "GET", path, headers, "")
}

/// Sends `method path` with a JSON `body` (as `POST`, `PUT` or `PATCH` to an API).
///
/// # Errors
///
/// On connection or protocol failure.
pub fn send_json(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Response> {
    request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}{length}Connection: close\r\n\r\n{body}"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// An HTTP/1.1 response read whole.
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A port free on 127.0.0.1, for a server the test starts later or that must come back
/// on the same address after it was stopped.
///
/// The port is taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port that `bind(:0)` handed out and the
/// test released can be given to any outgoing connection in the meantime (the proxy's
/// own connections to its agents, say), and the server that wanted it then finds it
/// taken. Below the range only an explicit bind takes a port; a process never hands out
/// the same port twice.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 15000.min(first_ephemeral / 2);
    let span = u32::from(first_ephemeral - low);
    // Another test process looks for ports at the same time: start where it is unlikely to.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id().wrapping_mul(7919) ^ nanos) % span;
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for i in 0..span {
        let port = low + u16::try_from((start + i) % span).expect("within the span");
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free port between {low} and {first_ephemeral}")
}

/// A fresh, empty temporary folder for one test.
///
/// # Panics
///
/// When the folder cannot be created.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// What [`tls_get`] saw: the handshake's outcome, then the response when asked for.
#[derive(Debug)]
pub struct TlsAnswer {
    /// The certificate the server presented (DER).
    pub certificate: Vec<u8>,
    /// The protocol ALPN agreed, if any.
    pub alpn: Option<Vec<u8>>,
    /// The response to `GET path` over HTTP/1.1, when a path was given.
    pub response: Option<Response>,
}

/// Connects to `addr` over TLS asking for `name` (SNI), trusting only the CA in the PEM
/// file `ca`, offering `alpn`; then, with `path`, sends `GET path` over HTTP/1.1 with
/// `headers` and reads the response.
///
/// # Errors
///
/// When the handshake fails (the certificate does not check out) or the exchange does.
pub fn tls_get(
    addr: SocketAddr,
    name: &str,
    ca: &std::path::Path,
    alpn: &[&[u8]],
    path: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<TlsAnswer> {
    let config = sluice_listener::tls::client_config(ca, alpn)?;
    tls_get_with(addr, name, std::sync::Arc::new(config), path, headers)
}

/// [`tls_get`] with a client configuration of the test's (one that presents a client
/// certificate, say).
///
/// # Errors
///
/// When the handshake fails or the exchange does.
pub fn tls_get_with(
    addr: SocketAddr,
    name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<TlsAnswer> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
    let conn = rustls::ClientConnection::new(config, server_name)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let certificate = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .context("no certificate")?;
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    let response = match path {
        None => None,
        Some(path) => {
            let extra: String = headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect();
            write!(
                tls,
                "GET {path} HTTP/1.1\r\nHost: {name}\r\n{extra}Connection: close\r\n\r\n"
            )?;
            let mut raw = Vec::new();
            // A server that closes without close_notify ends the read with an error.
            if let Err(e) = tls.read_to_end(&mut raw)
                && raw.is_empty()
            {
                return Err(e.into());
            }
            Some(parse_response(&raw)?)
        }
    };
    Ok(TlsAnswer {
        certificate,
        alpn,
        response,
    })
}
