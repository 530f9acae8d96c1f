#!/usr/bin/env python3
"""Resident memory of a proxy holding a large route table.

A generated table is served by `sluice controller --from-dir` to one subscribed proxy
(as in Kubernetes), once with a single endpoint (the baseline) and once per shape with
ENDPOINTS endpoints: one pool holding them all (in backends of 1 000), and pools of ten
endpoints each (each pool with its own route, balancer and metrics). Once the proxy's
`/readyz` answers, its metrics are scraped a few times and its resident set is read.
Endpoints are addresses nothing listens on: the table is what is measured, not
connections. With `--standalone` the proxy reads the file itself (`--config`), and
the one process holds the compiler's state as well.

    python3 bench/table_rss.py SLUICE_BINARY [--endpoints 10000] [--port-base 19600]
                                             [--standalone]

Prints one line per shape: RSS, and the difference from the baseline.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pool(name, endpoints, path):
    # A backend lists at most 1 000 endpoints here (the schema allows 1 024).
    backends = ", ".join(
        "{endpoints: [" + ", ".join(f'"{e}"' for e in endpoints[i : i + 1000]) + "]}"
        for i in range(0, len(endpoints), 1000)
    )
    return (
        "apiVersion: sluice.dev/v1alpha1\n"
        "kind: AgentPool\n"
        f"metadata: {{name: {name}, namespace: bench}}\n"
        "spec:\n"
        f"  matches: [{{pathPrefix: {path}}}]\n"
        f"  backends: [{backends}]\n"
        "  loadBalancing: {algorithm: LeastRequest}\n"
    )


def addresses(n):
    # 10.0.0.0/8 addresses nothing answers on: only the table is measured.
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080" for i in range(1, n + 1)]


def table(shape, n):
    eps = addresses(n)
    if shape == "baseline":
        return pool("one", eps[:1], "/")
    if shape == "one pool":
        return pool("all", eps, "/")
    docs = []
    for i in range(0, n, 10):
        docs.append(pool(f"p{i // 10}", eps[i : i + 10], f"/p{i // 10}/"))
    return "---\n".join(docs)


def measure(binary, shape, n, port_base, workdir, standalone):
    folder = os.path.join(workdir, shape.replace(" ", "-"))
    os.makedirs(folder)
    path = os.path.join(folder, "pools.yaml")
    with open(path, "w") as f:
        f.write(table(shape, n))
    listen, admin, push = port_base, port_base + 1, port_base + 2
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "env": {**os.environ, "RUST_LOG": "warn"}}
    started = []
    if standalone:
        source = ["--config", path]
    else:
        started.append(subprocess.Popen(
            [binary, "controller", "--from-dir", folder, "--listen", f"127.0.0.1:{push}"],
            **quiet))
        source = ["--controller", f"http://127.0.0.1:{push}"]
    proc = subprocess.Popen(
        [binary, "proxy", *source, "--listen", f"127.0.0.1:{listen}",
         "--admin", f"127.0.0.1:{admin}", "--access-log", "off"], **quiet)
    started.append(proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"{shape}: the proxy did not become ready")
            time.sleep(0.1)
        for _ in range(3):
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read()
        time.sleep(1)
        return rss_kb(proc.pid)
    finally:
        for p in started:
            p.send_signal(signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary")
    parser.add_argument("--endpoints", type=int, default=10000)
    parser.add_argument("--port-base", type=int, default=19600)
    parser.add_argument("--standalone", action="store_true",
                        help="the proxy reads the file itself (--config)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        base = measure(args.binary, "baseline", 1, args.port_base, workdir, args.standalone)
        print(f"{'one endpoint':<40} {base / 1024:8.1f} MiB")
        for shape in ["one pool", "pools of ten"]:
            kb = measure(args.binary, shape, args.endpoints, args.port_base, workdir,
                         args.standalone)
            label = f"{args.endpoints} endpoints, {shape}"
            print(f"{label:<40} {kb / 1024:8.1f} MiB  (+{(kb - base) / 1024:.1f} MiB, "
                  f"{(kb - base) * 1024 / args.endpoints:.0f} B per endpoint)")


if __name__ == "__main__":
    main()
