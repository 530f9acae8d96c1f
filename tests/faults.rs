//! Faults under load, counted: the real binaries on free ports, load sent by the test
//! itself, a fault injected while it runs, and the outcome of every request counted.
//! Each case asserts its expectation on the counts (timing only within generous
//! bounds: the machine is shared) and prints one `fault-result` line with them.
//!
//! `SLUICE_FAULT_SECONDS` sets how long each case runs under load (12 by default; `make
//! soak` runs them longer) and `SLUICE_FAULT_REPORT` a file the result lines are
//! appended to. The cases run one at a time: each loads the machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use sluice_e2e::load::{Load, Outcome, Req, Shape, Tally};
use sluice_e2e::redis::{self, Redis};
use sluice_e2e::sse::{SseStream, complete};
use sluice_e2e::{
    Process, config_proxy, demo_agent_with, eventually, free_port, get, metric_sum,
    subscribed_proxy, temp_dir,
};

/// One case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long each case keeps its load running.
fn run_for() -> Duration {
    let seconds = std::env::var("SLUICE_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12_u64);
    Duration::from_secs(seconds.max(4))
}

const WAIT: Duration = Duration::from_secs(20);

/// Prints the counts of a case, and appends them to the file `SLUICE_FAULT_REPORT`
/// names, if any (`make soak` does).
fn report(case: &str, tally: &Tally, extra: &str) {
    let line = format!(
        "fault-result case={case} seconds={} sent={} non_2xx={} {extra} | {tally}",
        run_for().as_secs(),
        tally.total(None),
        tally.failed(None),
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SLUICE_FAULT_REPORT") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("cannot append to {}: {e}", path.to_string_lossy());
        }
    }
}

/// A pool named `name` matching `prefix`, over static `endpoints`, with `extra` spec
/// lines (indented by two spaces).
fn pool(name: &str, prefix: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: {name}, namespace: faults}}\n\
         spec:\n  matches: [{{pathPrefix: {prefix}}}]\n  backends: [{{endpoints: [{}]}}]\n{extra}",
        endpoints.join(", ")
    )
}

/// Replaces `dir/name` with `content` atomically (a hidden file renamed over it), as
/// Kubernetes updates a mounted ConfigMap: the proxy polls the folder and would
/// otherwise read a file caught half-written for what it is.
fn write_manifest(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> Result<()> {
    let staged = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staged, content)?;
    std::fs::rename(&staged, dir.join(name))?;
    Ok(())
}

/// Waits until `admin` serves table `version` or a later one.
fn wait_for_version(admin: SocketAddr, version: u64) -> Result<()> {
    eventually(WAIT, &format!("table version {version}"), || {
        let routes: serde_json::Value = serde_json::from_str(&get(admin, "/routes")?.body)?;
        Ok((routes["version"].as_u64() >= Some(version)).then_some(()))
    })
}

/// Waits until `GET path` through `traffic` gets a 2xx.
fn wait_for_success(traffic: SocketAddr, path: &str) -> Result<()> {
    eventually(WAIT, &format!("a 2xx for {path}"), || {
        Ok(get(traffic, path)
            .ok()
            .filter(|r| (200..300).contains(&r.status))
            .map(|_| ()))
    })
}

fn metrics(admin: SocketAddr) -> Result<String> {
    Ok(get(admin, "/metrics")?.body)
}

/// GETs and POSTs in turn; each POST carries the id `post-N`.
fn gets_and_posts(n: u64) -> Req {
    if n.is_multiple_of(2) {
        Req::get("get", "/agents/echo/get")
    } else {
        Req::post(
            "post",
            "/agents/echo/post",
            format!("post-{n}"),
            Bytes::from(vec![b'x'; 512]),
        )
    }
}

/// How many times each id was received, over the request logs `files`.
fn received(files: &[&Path]) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for id in text.lines().filter_map(|l| l.split(' ').next()) {
            if id != "-" {
                *seen.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    Ok(seen)
}

/// An agent killed (SIGKILL) during steady load: GETs see no error (retries and
/// outlier ejection absorb it), and no POST reaches an agent twice.
#[test]
fn an_agent_killed_under_load() -> Result<()> {
    let _serial = serial();
    let dir = temp_dir("fault-kill");
    let logs: Vec<_> = (0..3).map(|i| dir.join(format!("agent-{i}.log"))).collect();
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let log = log.to_string_lossy();
        let (agent, addr) = demo_agent_with(
            &format!("agent-{i}"),
            &[
                "--latency-p50",
                "5ms",
                "--latency-p99",
                "20ms",
                "--request-log",
                &log,
            ],
        )?;
        agents.push(agent);
        addrs.push(addr);
    }
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    write_manifest(
        &manifests,
        "pool.yaml",
        pool(
            "echo",
            "/agents/echo/",
            &addrs,
            "  retries: {attempts: 2}\n  outlierDetection: {consecutiveFailures: 3}\n  \
             healthCheck: {interval: 1s, timeout: 500ms, unhealthyThreshold: 2}\n",
        ),
    )?;
    let (_proxy, traffic, admin) = config_proxy("proxy", &manifests, &["--access-log", "off"])?;
    wait_for_success(traffic, "/agents/echo/ready")?;

    let shape = Shape::default();
    let load = Load::start(traffic, shape, gets_and_posts);
    std::thread::sleep(run_for() / 3);
    let before = load.tally();
    agents[2].kill();
    std::thread::sleep(run_for() * 2 / 3);
    let tally = load.stop();

    let files: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    let seen = received(&files)?;
    let killed_saw = received(&files[2..])?.len();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let posts_failed: Vec<&(String, Outcome)> =
        tally.ids.iter().filter(|(_, o)| !o.is_success()).collect();
    let lost: Vec<&String> = tally
        .ids
        .iter()
        .filter(|(id, o)| o.is_success() && seen.get(id) != Some(&1))
        .map(|(id, _)| id)
        .collect();
    let m = metrics(admin)?;
    let retries = metric_sum(&m, "sluice_retries_total", &[r#"result="sent""#]);
    let ejections = metric_sum(&m, "sluice_outlier_ejections_total", &[]);
    report(
        "agent-killed",
        &tally,
        &format!(
            "faults=1 killed_agent_received={killed_saw} posts_not_answered={} posts_received_twice={} retries={retries} ejections={ejections}",
            posts_failed.len(),
            twice.len()
        ),
    );

    ensure!(
        before.total(None) > 0 && killed_saw > 0,
        "no load before the kill"
    );
    ensure!(
        tally.total(None) > before.total(None) + 100,
        "too little load after the kill: {tally}"
    );
    ensure!(tally.failed(Some("get")) == 0, "GETs failed: {tally}");
    ensure!(twice.is_empty(), "POSTs received twice: {twice:?}");
    ensure!(
        lost.is_empty(),
        "answered POSTs not received once: {lost:?}"
    );
    // A POST the killed agent had received (or was sent) is not sent again: at most one
    // per worker was in flight when it died, and it gets 502.
    ensure!(
        posts_failed.len() <= shape.workers
            && posts_failed.iter().all(|(_, o)| *o == Outcome::Status(502)),
        "POSTs failed beyond those in flight at the kill: {posts_failed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// An endpoint removed from the table under load: no request fails, and the requests
/// it was serving, streams included, finish.
#[test]
fn an_endpoint_removed_under_load() -> Result<()> {
    endpoint_leaves_under_load("endpoint-removed", |a, b| {
        pool("echo", "/", &b.map_or_else(|| vec![a], |b| vec![a, b]), "")
    })
}

/// A Service endpoint marked terminating (still serving) in its EndpointSlice under
/// load: it takes no new request, and those it was serving, streams included, finish.
#[test]
fn an_endpoint_marked_terminating_under_load() -> Result<()> {
    endpoint_leaves_under_load("endpoint-terminating", |a, b| {
        let slice = |name: &str, addr: SocketAddr, conditions: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}, namespace: faults, labels: {{kubernetes.io/service-name: agents}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: {}}}]\n\
                 endpoints: [{{addresses: [\"{}\"], conditions: {conditions}}}]\n",
                addr.port(),
                addr.ip()
            )
        };
        let b_conditions = if b.is_some() {
            "{ready: true}"
        } else {
            "{ready: false, serving: true, terminating: true}"
        };
        [
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: echo, namespace: faults}\n\
             spec:\n  matches: [{pathPrefix: /}]\n  backends: [{service: {name: agents, port: http}}]\n"
                .to_owned(),
            slice("agents-a", a, "{ready: true}"),
            slice("agents-b", b.unwrap_or(a), b_conditions),
        ]
        .join("---\n")
    })
}

/// Serves `manifests(a, Some(b))` under load with streams on both agents, then
/// `manifests(a, None)`, where b is gone (or going): every request succeeds, every
/// stream finishes, and new requests reach a only.
fn endpoint_leaves_under_load(
    case: &str,
    manifests: impl Fn(SocketAddr, Option<SocketAddr>) -> String,
) -> Result<()> {
    let _serial = serial();
    let dir = temp_dir(case);
    let args = [
        "--latency-p50",
        "5ms",
        "--latency-p99",
        "20ms",
        "--token-interval",
        "100ms",
    ];
    let (_a, a) = demo_agent_with("agent-a", &args)?;
    let (_b, b) = demo_agent_with("agent-b", &args)?;
    write_manifest(&dir, "pool.yaml", manifests(a, Some(b)))?;
    let (_proxy, traffic, admin) = config_proxy("proxy", &dir, &["--access-log", "off"])?;
    wait_for_success(traffic, "/agents/echo/ready")?;

    let load = Load::start(traffic, Shape::default(), gets_and_posts);
    std::thread::sleep(run_for() / 3);
    // Streams of 80 tokens (8 s), until two run on the endpoint about to go.
    let opened = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..12 {
        let stream = SseStream::open(traffic, 80)?;
        ensure!(stream.head()?.status == 200, "{:?}", stream.head()?);
        streams.push(stream);
        let on_b = streams
            .iter()
            .filter(|s| {
                s.head()
                    .is_ok_and(|h| h.header("x-demo-agent") == Some("agent-b"))
            })
            .count();
        if on_b >= 2 {
            break;
        }
    }
    let on_b = streams
        .iter()
        .filter(|s| {
            s.head()
                .is_ok_and(|h| h.header("x-demo-agent") == Some("agent-b"))
        })
        .count();
    ensure!(on_b >= 1, "no stream reached agent-b");

    write_manifest(&dir, "pool.yaml", manifests(a, None))?;
    wait_for_version(admin, 2)?;
    let removed_after = opened.elapsed();
    ensure!(
        removed_after < Duration::from_secs(6),
        "the streams may have ended before the edit ({removed_after:?})"
    );
    let removed_at = load.tally();
    std::thread::sleep(run_for() * 2 / 3);
    let tally = load.stop();
    let mut finished = 0;
    let opened = streams.len();
    for stream in streams {
        let response = stream.finish()?;
        ensure!(
            response.status == 200 && complete(&response.body),
            "a stream did not finish: {response:?}"
        );
        finished += 1;
    }
    // After the edit, nothing reaches agent-b.
    for _ in 0..10 {
        let resp = get(traffic, "/agents/echo/after")?;
        ensure!(resp.header("x-demo-agent") == Some("agent-a"), "{resp:?}");
    }
    report(
        case,
        &tally,
        &format!(
            "faults=1 streams={opened} streams_on_removed={on_b} streams_finished={finished} after_removal={}",
            tally.total(None) - removed_at.total(None)
        ),
    );
    ensure!(tally.failed(None) == 0, "requests failed: {tally}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The table changes every second under load: no request fails, and the proxy's file
/// descriptors and memory stay flat.
#[test]
fn the_table_changes_every_second_under_load() -> Result<()> {
    let _serial = serial();
    let dir = temp_dir("fault-churn");
    let args = ["--latency-p50", "2ms", "--latency-p99", "10ms"];
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let (agent, addr) = demo_agent_with(&format!("agent-{i}"), &args)?;
        agents.push(agent);
        addrs.push(addr);
    }
    // Change i: two of the three agents, and every other time a second pool.
    let table = |i: usize| {
        let endpoints = [addrs[i % 3], addrs[(i + 1) % 3]];
        let mut yaml = pool("echo", "/agents/echo/", &endpoints, "");
        if i % 2 == 1 {
            yaml.push_str("---\n");
            yaml.push_str(&pool("other", "/agents/other/", &addrs, ""));
        }
        yaml
    };
    write_manifest(&dir, "pool.yaml", table(0))?;
    let (proxy, traffic, admin) = config_proxy("proxy", &dir, &["--access-log", "off"])?;
    wait_for_success(traffic, "/agents/echo/ready")?;

    let load = Load::start(traffic, Shape::default(), gets_and_posts);
    let changes = usize::try_from(run_for().as_secs())?;
    let mut samples = Vec::new();
    for i in 1..=changes {
        std::thread::sleep(Duration::from_secs(1));
        write_manifest(&dir, "pool.yaml", table(i))?;
        samples.push((proxy.open_descriptors()?, proxy.resident_kib()?));
    }
    wait_for_version(admin, u64::try_from(changes)? + 1)?;
    let tally = load.stop();
    // After warming up (a quarter of the run), against the end.
    let warm = samples[samples.len() / 4];
    let end = *samples.last().context("no samples")?;
    let max_fds = samples.iter().map(|s| s.0).max().unwrap_or(0);
    report(
        "table-churn",
        &tally,
        &format!(
            "faults={changes} tables={} fds_warm={} fds_end={} fds_max={max_fds} rss_warm_kib={} rss_end_kib={}",
            changes + 1,
            warm.0,
            end.0,
            warm.1,
            end.1
        ),
    );
    ensure!(tally.failed(None) == 0, "requests failed: {tally}");
    // Flat: the load holds at most one client and one agent connection per worker,
    // whatever the number of tables.
    let workers = Shape::default().workers;
    ensure!(
        end.0 <= warm.0 + 2 * workers,
        "descriptors grew from {} to {}",
        warm.0,
        end.0
    );
    ensure!(
        end.1 <= warm.1 + (warm.1 / 4).max(16 * 1024),
        "memory grew from {} KiB to {} KiB",
        warm.1,
        end.1
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn controller(manifests: &Path, listen: &str) -> Result<(Process, SocketAddr)> {
    let manifests = manifests.to_string_lossy();
    let mut p = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            &manifests,
            "--listen",
            listen,
            "--poll-interval",
            "100ms",
            "--heartbeat",
            "1s",
        ],
    )?;
    let addr = p.logged_addr("controller started", "listen")?;
    Ok((p, addr))
}

fn served_by(traffic: SocketAddr) -> Result<Option<String>> {
    let resp = get(traffic, "/agents/echo/which")?;
    Ok((resp.status == 200)
        .then(|| resp.header("x-demo-agent").map(str::to_owned))
        .flatten())
}

/// The controller stopped under load, then restarted: proxies serve their last table
/// throughout, a proxy restarted meanwhile serves its persisted table, and both take
/// the controller's new table when it returns.
#[test]
fn the_controller_stopped_and_restarted_under_load() -> Result<()> {
    let _serial = serial();
    let dir = temp_dir("fault-controller");
    let args = ["--latency-p50", "2ms", "--latency-p99", "10ms"];
    let (_a, a) = demo_agent_with("agent-a", &args)?;
    let (_b, b) = demo_agent_with("agent-b", &args)?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    write_manifest(
        &manifests,
        "pool.yaml",
        pool("echo", "/agents/echo/", &[a], ""),
    )?;
    let (mut ctl, ctl_addr) = controller(&manifests, &format!("127.0.0.1:{}", free_port()))?;
    let cache = |i: usize| {
        dir.join(format!("table-{i}.json"))
            .to_string_lossy()
            .into_owned()
    };
    let proxy = |i: usize| {
        subscribed_proxy(
            &format!("proxy-{i}"),
            ctl_addr,
            &format!("proxy-{i}"),
            &["--table-cache", &cache(i), "--access-log", "off"],
        )
    };
    let (mut first, traffic_1, admin_1) = proxy(1)?;
    let (mut second, traffic_2, _) = proxy(2)?;
    for traffic in [traffic_1, traffic_2] {
        wait_for_success(traffic, "/agents/echo/ready")?;
    }
    second.wait_for_log("route table cached", WAIT)?;
    let shape = Shape {
        workers: 4,
        ..Shape::default()
    };
    let load_1 = Load::start(traffic_1, shape, gets_and_posts);
    let load_2 = Load::start(traffic_2, shape, gets_and_posts);
    std::thread::sleep(run_for() / 4);

    // The controller goes; both proxies keep serving.
    ctl.kill();
    first.wait_for_log("controller stream ended", WAIT)?;
    std::thread::sleep(run_for() / 4);

    // The second proxy restarts while the controller is away: it serves its cache.
    let tally_2 = load_2.stop();
    second.signal("TERM")?;
    second.wait_for_exit(WAIT)?;
    let (mut second, traffic_2, admin_2) = proxy(2)?;
    second.wait_for_log("serving the cached route table", WAIT)?;
    ensure!(served_by(traffic_2)?.as_deref() == Some("agent-a"));
    let load_2b = Load::start(traffic_2, shape, gets_and_posts);
    std::thread::sleep(run_for() / 4);

    // The controller returns on its address with an edited table: both converge.
    write_manifest(
        &manifests,
        "pool.yaml",
        pool("echo", "/agents/echo/", &[b], ""),
    )?;
    let (_ctl, _) = controller(&manifests, &ctl_addr.to_string())?;
    let returned = Instant::now();
    for traffic in [traffic_1, traffic_2] {
        eventually(WAIT, "the new table", || {
            Ok((served_by(traffic)?.as_deref() == Some("agent-b")).then_some(()))
        })?;
    }
    let converged = returned.elapsed();
    std::thread::sleep(run_for() / 4);
    let tally_1 = load_1.stop();
    let tally_2b = load_2b.stop();
    for admin in [admin_1, admin_2] {
        let routes: serde_json::Value = serde_json::from_str(&get(admin, "/routes")?.body)?;
        ensure!(
            routes.to_string().contains(&b.to_string()),
            "not converged: {routes}"
        );
    }
    let mut all = tally_1.clone();
    for t in [&tally_2, &tally_2b] {
        for (k, n) in &t.counts {
            *all.counts.entry(*k).or_default() += n;
        }
    }
    report(
        "controller-outage",
        &all,
        &format!(
            "faults=2 proxy_1_failed={} proxy_2_failed={} restarted_failed={} converged_ms={}",
            tally_1.failed(None),
            tally_2.failed(None),
            tally_2b.failed(None),
            converged.as_millis()
        ),
    );
    ensure!(all.failed(None) == 0, "requests failed: {all}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Manifests for the Redis case: `open` and `closed` pools under global limits with
/// either failure mode, and `secure`, which takes a consumer key.
fn redis_manifests(agent: SocketAddr) -> String {
    let policy = |name: &str, target: &str, mode: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\nmetadata: {{name: {name}, namespace: faults}}\n\
             spec:\n  targetRefs: [{{kind: AgentPool, name: {target}}}]\n  key: {{type: Pool}}\n  \
             scope: Global\n  failureMode: {mode}\n  tiers: [{{name: standard, limits: [{{requests: 100000, period: 1s}}]}}]\n"
        )
    };
    [
        pool("open", "/open/", &[agent], ""),
        pool("closed", "/closed/", &[agent], ""),
        pool("secure", "/secure/", &[agent], "  access: {consumers: [client]}\n"),
        policy("open-limit", "open", "Open"),
        policy("closed-limit", "closed", "Closed"),
        policy("secure-limit", "secure", "Closed"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: client, namespace: faults, labels: {sluice.dev/consumer: client}}\n\
         stringData: {api-key: fault-client-key-0123456789}\n"
            .to_owned(),
    ]
    .join("---\n")
}

fn redis_requests(n: u64) -> Req {
    match n % 4 {
        0 => Req::get("open", "/open/x"),
        1 => Req::get("closed", "/closed/x"),
        2 => Req::get("anonymous", "/secure/x"),
        _ => Req::get("keyed", "/secure/x")
            .header("authorization", "Bearer fault-client-key-0123456789"),
    }
}

/// The difference of two tallies of the same load.
fn since(later: &Tally, earlier: &Tally) -> Tally {
    let mut out = later.clone();
    for (k, n) in &earlier.counts {
        if let Some(v) = out.counts.get_mut(k) {
            *v -= n;
        }
    }
    out
}

/// Redis stopped, then paused (SIGSTOP) under load: `failureMode: Open` serves every
/// request without waiting on Redis, `Closed` answers 503 and nothing else while it
/// is gone, authentication stays closed, and service comes back by itself.
#[test]
fn redis_stopped_and_paused_under_load() -> Result<()> {
    if redis::skipped() {
        eprintln!("skipping: no redis-server and SLUICE_SKIP_REDIS=1");
        return Ok(());
    }
    let _serial = serial();
    let dir = temp_dir("fault-redis");
    let port = free_port();
    let redis = Redis::start(port)?;
    let (_agent, agent) =
        demo_agent_with("agent", &["--latency-p50", "2ms", "--latency-p99", "10ms"])?;
    write_manifest(&dir, "manifests.yaml", redis_manifests(agent))?;
    let url = redis.url();
    let (_proxy, traffic, admin) = config_proxy(
        "proxy",
        &dir,
        &[
            "--redis-url",
            &url,
            "--redis-timeout",
            "50ms",
            "--access-log",
            "off",
        ],
    )?;
    for path in ["/open/x", "/closed/x"] {
        wait_for_success(traffic, path)?;
    }
    let load = Load::start(traffic, Shape::default(), redis_requests);
    let phase = (run_for() / 4).max(Duration::from_secs(3));
    std::thread::sleep(phase);
    let healthy = load.tally();

    // Stopped: connections refused.
    drop(redis);
    std::thread::sleep(phase);
    let stopped = since(&load.tally(), &healthy);
    let redis = Redis::start(port)?;
    wait_for_success(traffic, "/closed/x")?;
    let recovered = load.tally();

    // Paused: connections open, nothing answered.
    redis.pause()?;
    std::thread::sleep(phase);
    let paused = since(&load.tally(), &recovered);
    redis.resume()?;
    wait_for_success(traffic, "/closed/x")?;
    let resumed = load.tally();
    std::thread::sleep(phase);
    let tally = load.stop();
    let after = since(&tally, &resumed);
    let m = metrics(admin)?;
    let unavailable = metric_sum(
        &m,
        "sluice_ratelimit_decisions_total",
        &[r#"result="unavailable""#],
    );
    report(
        "redis-outage",
        &tally,
        &format!(
            "faults=2 closed_503_stopped={} closed_503_paused={} open_slowest_ms={} unavailable_decisions={unavailable}",
            stopped.count(Some("closed"), |o| o == Outcome::Status(503)),
            paused.count(Some("closed"), |o| o == Outcome::Status(503)),
            tally.slowest.get("open").map_or(0, Duration::as_millis),
        ),
    );

    ensure!(tally.failed(Some("open")) == 0, "Open failed: {tally}");
    ensure!(
        healthy.failed(Some("keyed")) == 0 && healthy.total(Some("keyed")) > 0,
        "a keyed caller was refused while Redis was up: {healthy}"
    );
    ensure!(
        tally.count(Some("anonymous"), |o| o != Outcome::Status(401)) == 0,
        "a caller without a key was not refused: {tally}"
    );
    // The secure pool fails closed too, so a keyed caller gets 2xx or 503 only.
    for kind in ["closed", "keyed"] {
        ensure!(
            tally.count(Some(kind), |o| !o.is_success() && o != Outcome::Status(503)) == 0,
            "{kind}: an outcome other than 2xx or 503: {tally}"
        );
    }
    for (name, outage) in [("stopped", &stopped), ("paused", &paused)] {
        ensure!(
            outage.count(Some("closed"), |o| o == Outcome::Status(503)) > 0,
            "Closed admitted everything while Redis was {name}: {outage}"
        );
    }
    ensure!(
        after.failed(Some("closed")) == 0 && after.total(Some("closed")) > 0,
        "not recovered: {after}"
    );
    // The Redis deadline bounds the wait: no request waited out the pause.
    let slowest = tally.slowest.values().max().copied().unwrap_or_default();
    ensure!(
        slowest < phase / 2,
        "a request took {slowest:?} while Redis was paused for {phase:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A proxy stopped with SIGTERM while requests are in flight: it keeps serving through
/// its shutdown delay, then refuses new connections, lets the streams in flight finish
/// and exits within its drain timeout.
#[test]
fn a_proxy_stopped_with_requests_in_flight() -> Result<()> {
    let _serial = serial();
    let dir = temp_dir("fault-sigterm");
    let (_agent, agent) = demo_agent_with(
        "agent",
        &[
            "--latency-p50",
            "2ms",
            "--latency-p99",
            "10ms",
            "--token-interval",
            "100ms",
        ],
    )?;
    write_manifest(&dir, "pool.yaml", pool("echo", "/", &[agent], ""))?;
    let (mut proxy, traffic, _admin) = config_proxy(
        "proxy",
        &dir,
        &[
            "--shutdown-delay",
            "1s",
            "--drain-timeout",
            "20s",
            "--access-log",
            "off",
        ],
    )?;
    wait_for_success(traffic, "/agents/echo/ready")?;
    // A new connection for every request, as clients arriving after the signal have.
    let shape = Shape {
        workers: 4,
        keep_alive: false,
        ..Shape::default()
    };
    let load = Load::start(traffic, shape, |_| Req::get("get", "/agents/echo/x"));
    load.wait_for(200, WAIT)?;
    std::thread::sleep(run_for() / 2);
    // Streams of 50 tokens (5 s) in flight when the signal comes.
    let streams: Vec<SseStream> = (0..4)
        .map(|_| SseStream::open(traffic, 50))
        .collect::<Result<_>>()?;
    let signalled = Instant::now();
    proxy.signal("TERM")?;
    // New connections are refused once the delay is over, while the streams go on.
    eventually(WAIT, "new connections to be refused", || {
        Ok(TcpStream::connect_timeout(&traffic, Duration::from_secs(1))
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            .map(|_| ()))
    })?;
    let refused_after = signalled.elapsed();
    let mut finished = 0;
    for stream in streams {
        let response = stream.finish()?;
        ensure!(
            response.status == 200 && complete(&response.body),
            "a stream did not finish: {response:?}"
        );
        finished += 1;
    }
    let status = proxy.wait_for_exit(WAIT)?;
    let exited_after = signalled.elapsed();
    let tally = load.stop();
    report(
        "proxy-sigterm",
        &tally,
        &format!(
            "faults=1 streams_in_flight=4 streams_finished={finished} refused_after_ms={} exited_after_ms={} exit={status} reset_at_close={}",
            refused_after.as_millis(),
            exited_after.as_millis(),
            tally.count(None, |o| o == Outcome::Broken)
        ),
    );
    ensure!(status.success(), "exit status {status}");
    ensure!(
        refused_after >= Duration::from_secs(1),
        "refused before the shutdown delay"
    );
    // A connection the kernel completed in the instant the listener closed is reset
    // (Linux resets what waits in the accept queue of a closed socket), and one
    // accepted in that instant is closed before its request is read: at most one per
    // client worker. Everything else is served or refused.
    let broken = tally.count(None, |o| o == Outcome::Broken);
    ensure!(
        broken <= shape.workers as u64
            && tally.count(None, |o| {
                !o.is_success() && o != Outcome::Refused && o != Outcome::Broken
            }) == 0,
        "a request neither served nor cleanly refused: {tally}"
    );
    ensure!(
        tally.count(None, |o| o == Outcome::Refused) > 0,
        "no connection refused after the drain began: {tally}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
