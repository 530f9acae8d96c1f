//! The client examples of `docs/clients.md` back off as the gateway asks, and succeed.
//!
//! Each example (`docs/examples/clients/`: the OpenAI Python client, httpx, curl) is
//! quoted whole in the page, and runs here against the real proxy and a demo agent, on
//! ports they picked free, under a limit of two requests per two seconds: its three
//! requests in a row meet at least one 429. An example passes when it ends successfully
//! with three answers, and the proxy refused it only a few times: a client that did not
//! wait its `Retry-After` would be refused over and over, or give up.
//!
//! The Python examples run with the interpreter of the repository's `.venv` (`make
//! venv` installs `scripts/requirements.txt`, which holds `openai` and `httpx`), or
//! `SLUICE_PYTHON`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use sluice_e2e::{Process, demo_agent, eventually, get, temp_dir};

const API_KEY: &str = "example-client-key";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pool the examples call, its limit, and their consumer.
fn manifests(agent: SocketAddr) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
         metadata: {{name: chat, namespace: clients}}\n\
         spec:\n  matches: [{{pathPrefix: /v1}}]\n  backends: [{{endpoints: [\"{agent}\"]}}]\n\
         ---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\n\
         metadata: {{name: tight, namespace: clients}}\n\
         spec:\n  targetRefs: [{{kind: AgentPool, name: chat}}]\n  key: {{type: Consumer}}\n  \
         tiers:\n  - name: standard\n    limits: [{{requests: 2, period: 2s}}]\n  \
         softLimit: {{percent: 50}}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\n\
         metadata: {{name: example-client, namespace: clients, labels: {{sluice.dev/consumer: example-client}}}}\n\
         stringData: {{api-key: {API_KEY}}}\n"
    )
}

/// The Python interpreter with `openai` and `httpx`.
fn python() -> Result<PathBuf> {
    let python = std::env::var_os("SLUICE_PYTHON")
        .map_or_else(|| root().join(".venv/bin/python"), PathBuf::from);
    let ok = Command::new(&python)
        .args(["-c", "import openai, httpx"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "{} cannot import openai and httpx: run `make venv` (or set SLUICE_PYTHON)",
        python.display()
    );
    Ok(python)
}

/// `sluice_ratelimit_decisions_total{result="denied"}` of the examples' policy.
fn denied(admin: SocketAddr) -> Result<u64> {
    let metrics = get(admin, "/metrics")?.body;
    let series = "sluice_ratelimit_decisions_total{policy=\"clients/tight\",result=\"denied\",tier=\"standard\"} ";
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(Ok(0), str::parse)?)
}

/// Runs `program` with `args` against the proxy at `traffic`; returns its stdout and
/// stderr once it succeeded. A client that never gives up is killed after a minute.
fn run(program: &Path, args: &[&Path], traffic: SocketAddr) -> Result<(String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .env("SLUICE_URL", format!("http://{traffic}"))
        .env("SLUICE_API_KEY", API_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Their output is a few lines: it fits the pipes while they run.
    let finished = eventually(Duration::from_secs(60), "the example to end", || {
        Ok(child.try_wait()?.map(|_| ()))
    });
    if finished.is_err() {
        child.kill()?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8(out.stderr)?;
    if !out.status.success() {
        bail!("{args:?} failed ({:?}):\n{stdout}\n{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

#[test]
fn each_client_example_backs_off_and_succeeds() -> Result<()> {
    let python = python()?;
    let page = std::fs::read_to_string(root().join("docs/clients.md"))?;
    let (_agent, agent_addr) = demo_agent("agent")?;
    let dir = temp_dir("clients");
    std::fs::write(dir.join("clients.yaml"), manifests(agent_addr))?;
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
            "--access-log",
            "off",
        ],
    )?;
    let traffic = proxy.logged_addr("proxy started", "listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    eventually(Duration::from_secs(20), "the proxy ready", || {
        Ok((get(admin, "/readyz")?.status == 200).then_some(()))
    })?;

    let bash = PathBuf::from("bash");
    let examples = root().join("docs/examples/clients");
    for (name, program) in [
        ("openai_chat.py", &python),
        ("httpx_chat.py", &python),
        ("curl_chat.sh", &bash),
    ] {
        let path = examples.join(name);
        let text = std::fs::read_to_string(&path)?;
        assert!(
            page.contains(&text),
            "docs/clients.md must quote docs/examples/clients/{name} whole, as it is"
        );
        let before = denied(admin)?;
        let (stdout, stderr) = run(program, &[&path], traffic)?;
        let refused = denied(admin)? - before;
        for question in ["hello", "and again", "once more"] {
            assert!(
                stdout.contains(&format!("echo from agent: {question}")),
                "{name}: no answer to {question:?} in\n{stdout}"
            );
        }
        // Three requests in a row against two per two seconds: at least one 429; each
        // waited out, so none is refused twice in a row.
        assert!(
            (1..=3).contains(&refused),
            "{name}: refused {refused} times\n{stderr}"
        );
        if name == "httpx_chat.py" {
            assert!(
                stderr.contains("near a limit: \"clients/tight/standard\";q=2;reached=50%"),
                "{name} reports the soft limit:\n{stderr}"
            );
            assert!(
                stderr.contains("429 rate_limited: retrying in 1 s"),
                "{stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
