#!/usr/bin/env python3
"""Helper of bench/push_latency.sh: generate the manifests, measure the push latency.

  push_latency.py gen DIR [--pools 1000] [--endpoints 10]
      DIR/pools.yaml            1 000 AgentPools (namespace agents), one Service each
      DIR/slices/agent-NNNN.yaml one EndpointSlice per file, 10 endpoints each

  push_latency.py load --api URL [--pools 1000] [--endpoints 10]
      the same objects, created in a (fake) API server

  push_latency.py measure --dir DIR [--api URL] --controller URL --proxy ID=ADMIN_URL ... \
      --controller-pid PID --proxy-pid ID=PID ... --controller-log F --proxy-log ID=F ...
      [--changes 100] [--out results.json]

Standard library only. Loopback only; every wait is bounded.
"""

import argparse
import datetime as dt
import http.client
import json
import math
import os
import random
import re
import sys
import time
import urllib.parse

NS = "agents"

# ---------------------------------------------------------------- generation


def slice_obj(i, endpoints, generation=0):
    """One EndpointSlice for Service agent-i; `generation` shifts one address."""
    eps = []
    for e in range(endpoints):
        last = e + 1
        if e == 0 and generation:
            # the changed endpoint: 10.X.Y.(100 + generation % 150)
            last = 100 + generation % 150
        eps.append({
            "addresses": [f"10.{i // 250}.{i % 250}.{last}"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "zone": f"zone-{e % 3}",
        })
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"agent-{i}-abcde",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": f"agent-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": eps,
    }


def pool_obj(i):
    return {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": f"agent-{i}", "namespace": NS},
        "spec": {
            "matches": [{"pathPrefix": f"/agents/agent-{i}/"}],
            "backends": [{"service": {"name": f"agent-{i}", "port": "http"}}],
        },
    }


def as_yaml(obj):
    """JSON is YAML: one document, as `kubectl apply -f` reads it."""
    return json.dumps(obj, indent=1) + "\n"


def slice_path(d, i):
    return os.path.join(d, "slices", f"agent-{i:04d}.yaml")


def write_atomic(path, text):
    """Write through a hidden temp file and rename: the controller skips hidden
    entries, so a poll sees the old file or the new one, never half of one."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def gen(args):
    os.makedirs(os.path.join(args.dir, "slices"), exist_ok=True)
    with open(os.path.join(args.dir, "pools.yaml"), "w") as f:
        f.write("---\n".join(as_yaml(pool_obj(i)) for i in range(args.pools)))
    for i in range(args.pools):
        write_atomic(slice_path(args.dir, i), as_yaml(slice_obj(i, args.endpoints)))
    total = sum(
        os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(args.dir) for n in ns
    )
    print(
        f"generated {args.pools} AgentPools, {args.pools} EndpointSlices x "
        f"{args.endpoints} endpoints = {args.pools * args.endpoints} endpoints "
        f"({args.pools + 1} files, {total / 1024:.0f} KiB) in {args.dir}"
    )


POOLS_PATH = f"/apis/sluice.dev/v1alpha1/namespaces/{NS}/agentpools"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def load(args):
    """Creates the pools and slices in the (fake) API server."""
    api = Http(args.api)
    t0 = time.monotonic()
    for i in range(args.pools):
        api.send("POST", POOLS_PATH, pool_obj(i), expect=201)
        api.send("POST", SLICES_PATH, slice_obj(i, args.endpoints), expect=201)
    print(
        f"created {args.pools} AgentPools and {args.pools} EndpointSlices x {args.endpoints} "
        f"endpoints in {args.api} in {time.monotonic() - t0:.1f}s"
    )


# ---------------------------------------------------------------- HTTP


class Http:
    """A keep-alive HTTP/1.1 client to one loopback host:port."""

    def __init__(self, base):
        u = urllib.parse.urlparse(base)
        assert u.hostname in ("127.0.0.1", "localhost", "::1"), base
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def get(self, path, timeout=2.0):
        return self.request("GET", path, None, timeout)

    def send(self, method, path, obj, expect):
        """Sends `obj` as JSON; fails unless the status is `expect`."""
        status, body = self.request(method, path, json.dumps(obj).encode(), 5.0)
        if status != expect:
            sys.exit(f"{method} {path}: {status} {body[:300]!r}")
        return body

    def request(self, method, path, body, timeout):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


READY_RE = re.compile(rb"table version (\d+)")


def proxy_version(client):
    """The version of the table in force, from /readyz ("ready: table version N"),
    which the proxy sets in the same step as sluice_route_table_version; a few
    bytes instead of the whole /metrics text."""
    try:
        status, body = client.get("/readyz", timeout=1.0)
    except (OSError, http.client.HTTPException):
        return None
    m = READY_RE.search(body)
    return int(m.group(1)) if status == 200 and m else None


def metric_value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return None


def histogram(text, name):
    """{le: cumulative count} plus sum and count of a Prometheus histogram."""
    buckets, total, count = {}, 0.0, 0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[math.inf if le == "+Inf" else float(le)] = int(float(line.split()[-1]))
        elif line.startswith(name + "_sum"):
            total = float(line.split()[-1])
        elif line.startswith(name + "_count"):
            count = int(float(line.split()[-1]))
    return {"buckets": buckets, "sum": total, "count": count}


def hist_delta(before, after):
    return {
        "buckets": {le: after["buckets"][le] - before["buckets"].get(le, 0) for le in after["buckets"]},
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


def hist_quantile(h, q):
    """Like PromQL histogram_quantile (linear within the bucket), and the bucket's
    upper bound (the most the bucket counts can prove)."""
    les = sorted(h["buckets"])
    n = h["count"]
    if not n:
        return None, None
    rank = q * n
    prev_le, prev_c = 0.0, 0
    for le in les:
        c = h["buckets"][le]
        if c >= rank:
            if le == math.inf:
                return prev_le, math.inf
            frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_le + (le - prev_le) * frac, le
        prev_le, prev_c = le, c
    return None, None


# ---------------------------------------------------------------- processes


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def machine_busy_seconds():
    """CPU seconds spent busy by the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LOG_RE = re.compile(r"^(\S+Z)\s+\w+\s.*?(route table published|route table applied).*?version[=:]\s*(\d+)")


def log_times(path, what):
    """{version: wall-clock seconds} of the log lines `what` (tracing's default
    format: an RFC 3339 UTC timestamp with microseconds first)."""
    out = {}
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = ansi.sub("", line)
                m = LOG_RE.match(line)
                if m and m.group(2) == what:
                    ts = dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
                    out.setdefault(int(m.group(3)), ts.timestamp())
    except OSError:
        pass
    return out


def pct(values, q):
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, math.ceil(q * len(s)) - 1)
    return s[k]


def summary(values):
    return {
        "n": len(values),
        "p50": pct(values, 0.50),
        "p95": pct(values, 0.95),
        "p99": pct(values, 0.99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


# ---------------------------------------------------------------- measurement


def kv(items):
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = v
    return out


def wait_for(cond, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    sys.exit(f"timed out after {timeout}s waiting for {what}")


def measure(args):
    proxies = kv(args.proxy)  # id -> admin URL
    proxy_pids = {k: int(v) for k, v in kv(args.proxy_pid).items()}
    proxy_logs = kv(args.proxy_log)
    ids = sorted(proxies)
    ctl = Http(args.controller)
    admins = {p: Http(u) for p, u in proxies.items()}
    api = Http(args.api) if args.api else None

    def ctl_json(path):
        status, body = ctl.get(path)
        return json.loads(body) if status == 200 else None

    def alive():
        for pid in [args.controller_pid] + list(proxy_pids.values()):
            try:
                os.kill(pid, 0)
            except OSError:
                sys.exit(f"process {pid} exited; see its log")

    def all_current():
        alive()
        j = ctl_json("/v1/proxies")
        if not j or j["version"] == 0:
            return None
        ps = {p["id"]: p for p in j["proxies"]}
        if all(i in ps and ps[i]["current"] for i in ids):
            return j
        return None

    # 1. Initial load: the first table, pushed to all three proxies.
    first = wait_for(all_current, 120, "the first table on all three proxies", step=0.1)
    version = first["version"]
    for p in ids:
        v = proxy_version(admins[p])
        assert v == version, (p, v, version)
    print(f"initial table v{version} on {len(ids)} proxies", flush=True)

    status_converged = None
    if api is not None:
        # Kubernetes mode: the leader writes every pool's status (paced by
        # --status-write-rate); measure once that is done, not during it.
        t0 = time.monotonic()

        def all_statuses():
            alive()
            status, body = api.get(f"/apis/sluice.dev/v1alpha1/namespaces/{NS}/agentpools", timeout=10.0)
            if status != 200:
                return None
            items = json.loads(body)["items"]
            done = all((i.get("status") or {}).get("updatedProxies") == len(ids) for i in items)
            return True if done and len(items) == args.pools else None

        wait_for(all_statuses, 300, "every AgentPool's status to count the proxies", step=0.5)
        status_converged = time.monotonic() - t0
        print(f"every pool's status written and counting {len(ids)} proxies "
              f"{status_converged:.1f}s after the first table reached them", flush=True)

    load_before = os.getloadavg()
    # 2. Idle: RSS, and the CPU the folder poll costs with nothing changing.
    time.sleep(args.settle)
    c0, w0 = cpu_seconds(args.controller_pid), time.monotonic()
    time.sleep(args.idle_window)
    idle_cpu = (cpu_seconds(args.controller_pid) - c0) / (time.monotonic() - w0)
    rss_idle = {"controller": proc_status(args.controller_pid)}
    rss_idle.update({p: proc_status(proxy_pids[p]) for p in ids})
    _, body = ctl.get("/v1/routes")
    table_bytes = len(body)
    _, m = ctl.get("/metrics")
    hist_before = histogram(m.decode(), "sluice_controller_push_latency_seconds")
    print(
        f"idle: controller RSS {rss_idle['controller'].get('VmRSS', 0) / 1024:.1f} MiB, "
        f"CPU {idle_cpu * 100:.0f}% of a core, table line {table_bytes / 1e6:.2f} MB",
        flush=True,
    )

    # 3. The changes.
    rng = random.Random(7)
    records = []
    proxies_lat = []  # controller's per-proxy publish -> ack, exact
    rss_timeline = []
    step = 7  # rotate across files: 0, 7, 14, ... (coprime with 1000)
    busy0, self0 = machine_busy_seconds(), self_cpu_seconds()
    cpu_c0 = cpu_seconds(args.controller_pid)
    cpu_p0 = {p: cpu_seconds(proxy_pids[p]) for p in ids}
    w_changes = time.monotonic()
    for k in range(args.changes):
        i = (k * step) % args.pools
        expected = version + 1
        changed = slice_obj(i, args.endpoints, generation=k + 1)
        text = as_yaml(changed)
        tmp_wall = time.time()
        t0 = time.monotonic()
        if api is not None:
            api.send("PUT", f"{SLICES_PATH}/{changed['metadata']['name']}", changed, expect=200)
        else:
            write_atomic(slice_path(args.dir, i), text)
        seen = {}
        deadline = t0 + args.timeout
        while args.observe == "readyz" and len(seen) < len(ids) and time.monotonic() < deadline:
            for p in ids:
                if p in seen:
                    continue
                v = proxy_version(admins[p])
                if v is not None and v >= expected:
                    seen[p] = (time.monotonic() - t0, v)
            if len(seen) < len(ids):
                time.sleep(0.001)
        rec = {"change": k, "file": i, "expected": expected, "write_wall": tmp_wall}
        rec["per_proxy"] = {p: seen[p][0] for p in seen}
        rec["versions"] = {p: seen[p][1] for p in seen}
        rec["timeout"] = args.observe == "readyz" and len(seen) < len(ids)
        rec["all"] = max(rec["per_proxy"].values()) if seen and not rec["timeout"] else None
        # The controller's own publish -> ack of this version, per proxy.
        j = wait_for(
            lambda: (lambda j: j if j and all(
                x["version"] is not None and x["version"] >= expected for x in j["proxies"] if x["id"] in ids
            ) else None)(ctl_json("/v1/proxies")),
            args.timeout,
            f"acknowledgements of v{expected}",
            step=0.002 if args.observe == "readyz" else 0.01,
        )
        rec["ack"] = {
            x["id"]: x["pushLatencySeconds"]
            for x in j["proxies"]
            if x["id"] in ids and x["version"] == expected
        }
        proxies_lat.extend(v for v in rec["ack"].values() if v is not None)
        version = max([expected] + list(rec["versions"].values()))
        records.append(rec)
        if (k + 1) % 10 == 0:
            rss_timeline.append(
                {"changes": k + 1, **{n: proc_status(pid).get("VmRSS") for n, pid in [("controller", args.controller_pid)] + [(p, proxy_pids[p]) for p in ids]}}
            )
        if rec["timeout"]:
            print(f"change {k}: TIMEOUT, seen {rec['per_proxy']}", flush=True)
        # A random gap, so that changes fall at every phase of the poll tick.
        time.sleep(args.gap_min + rng.random() * (args.gap_max - args.gap_min))
    changes_wall = time.monotonic() - w_changes
    cpu_changes = {"controller": cpu_seconds(args.controller_pid) - cpu_c0}
    cpu_changes.update({p: cpu_seconds(proxy_pids[p]) - cpu_p0[p] for p in ids})
    cpu_changes["harness"] = self_cpu_seconds() - self0
    cpu_changes["machine"] = machine_busy_seconds() - busy0
    # What other processes on the machine used meanwhile, in cores.
    foreign_cores = (cpu_changes["machine"] - sum(v for k, v in cpu_changes.items() if k != "machine")) / changes_wall

    time.sleep(args.settle)
    rss_after = {"controller": proc_status(args.controller_pid)}
    rss_after.update({p: proc_status(proxy_pids[p]) for p in ids})
    _, m = ctl.get("/metrics")
    ctl_metrics = m.decode()
    hist_after = histogram(ctl_metrics, "sluice_controller_push_latency_seconds")
    hist = hist_delta(hist_before, hist_after)
    proxy_metric_versions = {}
    for p in ids:
        _, pm = admins[p].get("/metrics")
        proxy_metric_versions[p] = metric_value(pm.decode(), "sluice_route_table_version")

    # Split the latency with the log timestamps (wall clock, same host).
    published = log_times(args.controller_log, "route table published")
    applied = {p: log_times(proxy_logs[p], "route table applied") for p in ids}
    write_to_publish, publish_to_apply, write_to_apply_all = [], [], []
    for rec in records:
        v = rec["expected"]
        if v in published:
            rec["write_to_publish"] = published[v] - rec["write_wall"]
            write_to_publish.append(rec["write_to_publish"])
            rec["publish_to_apply"] = {
                p: applied[p][v] - published[v] for p in ids if v in applied[p]
            }
            publish_to_apply.extend(rec["publish_to_apply"].values())
        rec["write_to_apply_log"] = {p: applied[p][v] - rec["write_wall"] for p in ids if v in applied[p]}
        if len(rec["write_to_apply_log"]) == len(ids):
            write_to_apply_all.append(max(rec["write_to_apply_log"].values()))

    started = None
    with open(args.controller_log, errors="replace") as f:
        for line in f:
            if "controller started" in line:
                started = dt.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
                break
    initial = {}
    if started and 1 in published:
        initial["controller_start_to_publish_v1"] = published[1] - started
        initial["publish_v1_to_applied"] = {p: applied[p][1] - published[1] for p in ids if 1 in applied[p]}

    all_lat = [r["all"] for r in records if r["all"] is not None]
    per_proxy = {p: [r["per_proxy"][p] for r in records if p in r["per_proxy"]] for p in ids}
    q = {}
    for name, qq in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        q[name] = hist_quantile(hist, qq)

    res = {
        "config": {
            "pools": args.pools,
            "endpoints_per_pool": args.endpoints,
            "changes": args.changes,
            "poll_interval": args.poll_interval,
            "source": "kube" if args.api else "dir",
            "gap_ms": [args.gap_min * 1e3, args.gap_max * 1e3],
            "proxies": ids,
            "observe": args.observe,
        },
        "initial_load": initial,
        "status_converged_seconds": status_converged,
        "loadavg_before_after": [load_before, os.getloadavg()],
        "table_line_bytes": table_bytes,
        "controller_idle_cpu_cores": idle_cpu,
        "changes_wall_seconds": changes_wall,
        "cpu_seconds_during_changes": cpu_changes,
        "foreign_cpu_cores_during_changes": foreign_cores,
        "cores": os.cpu_count(),
        "timeouts": sum(r["timeout"] for r in records),
        "write_to_all_proxies": summary(all_lat),
        "write_to_each_proxy": {p: summary(v) for p, v in per_proxy.items()},
        "write_to_all_applied_log": summary(write_to_apply_all),
        "write_to_publish_log": summary(write_to_publish),
        "publish_to_apply_log": summary(publish_to_apply),
        "publish_to_ack_exact": summary(proxies_lat),
        "publish_to_ack_histogram": {
            "count": hist["count"],
            "mean": hist["sum"] / hist["count"] if hist["count"] else None,
            "buckets": {("+Inf" if le == math.inf else repr(le)): c for le, c in sorted(hist["buckets"].items())},
            "quantiles_interpolated": {k: v[0] for k, v in q.items()},
            "quantiles_bucket_bound": {k: (None if v[1] == math.inf else v[1]) for k, v in q.items()},
        },
        "rss_kib_idle": rss_idle,
        "rss_kib_after": rss_after,
        "rss_kib_timeline": rss_timeline,
        "proxy_metric_versions": proxy_metric_versions,
        "final_version": version,
        "records": records,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    report(res)
    return 0 if res["timeouts"] == 0 else 1


def ms(x):
    return "–" if x is None else f"{x * 1e3:.1f}"


def report(r):
    c = r["config"]
    print()
    kube = c.get("source") == "kube"
    source = ("Kubernetes mode (watching sluice-fake-apiserver; a change is a PUT of an EndpointSlice)"
              if kube else f"--from-dir, --poll-interval {c['poll_interval']} (a change is a file write)")
    print(f"## {c['pools']} pools, {c['pools'] * c['endpoints_per_pool']} endpoints, "
          f"{c['changes']} changes, {source}, observed by {c['observe']}, "
          f"proxies {', '.join(c['proxies'])}")
    print()
    print("| latency (ms) | n | p50 | p95 | p99 | max | mean |")
    print("|---|---|---|---|---|---|---|")

    def row(name, s):
        print(f"| {name} | {s['n']} | {ms(s['p50'])} | {ms(s['p95'])} | {ms(s['p99'])} | {ms(s['max'])} | {ms(s['mean'])} |")

    change = "PUT" if kube else "file write"
    row(f"(a) {change} → all three proxies serve it", r["write_to_all_proxies"])
    for p, s in r["write_to_each_proxy"].items():
        if s["n"]:
            row(f"{change} → proxy {p}", s)
    row(f"{change} → all three applied (log times)", r["write_to_all_applied_log"])
    row(f"{change} → controller publishes (log time)", r["write_to_publish_log"])
    row("publish → proxy applied (log times)", r["publish_to_apply_log"])
    row("(b) publish → ack, per proxy (/v1/proxies pushLatencySeconds)", r["publish_to_ack_exact"])
    h = r["publish_to_ack_histogram"]
    print()
    print(f"(b') sluice_controller_push_latency_seconds over the changes: {h['count']} observations, "
          f"mean {ms(h['mean'])} ms; p50 {ms(h['quantiles_interpolated']['p50'])} ms "
          f"(≤ {ms(h['quantiles_bucket_bound']['p50'])}), p95 {ms(h['quantiles_interpolated']['p95'])} ms "
          f"(≤ {ms(h['quantiles_bucket_bound']['p95'])}), p99 {ms(h['quantiles_interpolated']['p99'])} ms "
          f"(≤ {ms(h['quantiles_bucket_bound']['p99'])}); buckets {h['buckets']}")
    print()
    print("| process | VmRSS idle (MiB) | VmRSS after changes (MiB) | VmHWM (MiB) | CPU s during changes |")
    print("|---|---|---|---|---|")
    for k in r["rss_kib_idle"]:
        i, a = r["rss_kib_idle"][k], r["rss_kib_after"][k]
        print(f"| {k} | {i.get('VmRSS', 0) / 1024:.1f} | {a.get('VmRSS', 0) / 1024:.1f} | "
              f"{a.get('VmHWM', 0) / 1024:.1f} | {r['cpu_seconds_during_changes'][k]:.2f} |")
    print()
    print("RSS (MiB) every 10 changes: " + "; ".join(
        f"{t['changes']}: " + " ".join(f"{(t[k] or 0) / 1024:.0f}" for k in t if k != "changes")
        for t in r["rss_kib_timeline"]) + " (controller, then the proxies)")
    print()
    if r.get("status_converged_seconds") is not None:
        print(f"every AgentPool's status written, counting all proxies: "
              f"{r['status_converged_seconds']:.1f}s after the first table reached them "
              f"(status patches paced by --status-write-rate)")
        print()
    il = r["initial_load"]
    if il:
        print(f"initial load: controller start → v1 published {ms(il['controller_start_to_publish_v1'])} ms; "
              f"v1 published → applied " + ", ".join(f"{p} {ms(v)} ms" for p, v in il["publish_v1_to_applied"].items()))
        print()
    print(f"table line {r['table_line_bytes'] / 1e6:.2f} MB; controller idle CPU "
          f"{r['controller_idle_cpu_cores'] * 100:.0f}% of a core{'' if kube else ' (the folder poll)'}; "
          f"changes took {r['changes_wall_seconds']:.1f}s; timeouts {r['timeouts']}; "
          f"CPU during the changes: harness {r['cpu_seconds_during_changes']['harness']:.1f}s, whole machine "
          f"{r['cpu_seconds_during_changes']['machine']:.1f}s, other processes {r['foreign_cpu_cores_during_changes']:.2f} "
          f"of {r['cores']} cores; "
          f"load average before {r['loadavg_before_after'][0][0]:.2f}, after {r['loadavg_before_after'][1][0]:.2f}; "
          f"final version {r['final_version']}, proxies' sluice_route_table_version "
          f"{r['proxy_metric_versions']}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("dir")
    g.add_argument("--pools", type=int, default=1000)
    g.add_argument("--endpoints", type=int, default=10)
    ld = sub.add_parser("load")
    ld.add_argument("--api", required=True, help="http://127.0.0.1:PORT of the (fake) API server")
    ld.add_argument("--pools", type=int, default=1000)
    ld.add_argument("--endpoints", type=int, default=10)
    m = sub.add_parser("measure")
    m.add_argument("--dir", required=True)
    m.add_argument("--api", help="change EndpointSlices in this API server instead of files")
    m.add_argument("--pools", type=int, default=1000)
    m.add_argument("--endpoints", type=int, default=10)
    m.add_argument("--controller", required=True)
    m.add_argument("--controller-pid", type=int, required=True)
    m.add_argument("--controller-log", required=True)
    m.add_argument("--proxy", action="append", required=True, help="ID=http://127.0.0.1:PORT (admin)")
    m.add_argument("--proxy-pid", action="append", required=True, help="ID=PID")
    m.add_argument("--proxy-log", action="append", required=True, help="ID=FILE")
    m.add_argument("--changes", type=int, default=100)
    m.add_argument("--poll-interval", default="?", help="for the report only")
    m.add_argument("--timeout", type=float, default=5.0, help="per change, seconds")
    m.add_argument("--gap-min", type=float, default=0.05)
    m.add_argument("--gap-max", type=float, default=None,
                   help="seconds; default max(0.15, poll interval + 0.05), so that the "
                        "changes fall at every phase of the poll")
    m.add_argument("--settle", type=float, default=1.0)
    m.add_argument("--idle-window", type=float, default=3.0)
    m.add_argument("--observe", choices=["readyz", "logs"], default="readyz",
                   help="readyz: poll each proxy's /readyz every 1 ms (the default); logs: "
                        "poll nothing but the controller's /v1/proxies (10 ms), take the "
                        "proxies' apply times from their logs")
    m.add_argument("--out")
    args = ap.parse_args()
    if args.cmd == "gen":
        gen(args)
        return 0
    if args.cmd == "load":
        load(args)
        return 0
    if args.gap_max is None:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", args.poll_interval or "")
        poll = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else 0.0
        args.gap_max = max(0.15, poll + 0.05)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
