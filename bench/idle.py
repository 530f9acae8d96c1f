#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, Sluice beside nginx.

Each proxy fronts the same static upstream (nginx `return 200`). For each proxy in
turn: N connections are opened, each sends one request and reads its answer, then all
are held open and idle; the proxy's resident set (summed over its processes) is read
before and after, and the difference divided by N is reported.

    python3 bench/idle.py SLUICE_BINARY [--connections 5000] [--port-base 19500]

Needs nginx (Debian). Prints one line per proxy and the ratio.
"""
import argparse
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"nothing answers 200 on port {port}")


def hold(port, n):
    """Opens n connections, one request each, answers read; returns the sockets."""
    sel = selectors.DefaultSelector()
    socks = []
    request = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"
    pending = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
        socks.append(s)
        # Keep the number in flight bounded so the proxy is not a backlog test.
        while len(pending) >= 256:
            drain(sel, pending)
    while pending:
        drain(sel, pending)
    return socks


def drain(sel, pending):
    for key, _ in sel.select(timeout=10):
        s = key.fileobj
        data = s.recv(65536)
        if not data:
            sys.exit("a connection closed before its answer")
        pending[s] += data
        head, sep, body = pending[s].partition(b"\r\n\r\n")
        if not sep:
            continue
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"unexpected answer: {head[:80]!r}")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) >= length:
            sel.unregister(s)
            del pending[s]


def measure(name, pids, port, n):
    before = rss_kb(pids)
    socks = hold(port, n)
    time.sleep(1)  # let the proxy finish what the last answers left behind
    after = rss_kb(pids)
    for s in socks:
        s.close()
    per = (after - before) * 1024 / n
    print(f"{name}: {n} idle connections, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
          f"{per:.0f} bytes per connection", flush=True)
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sluice")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--port-base", type=int, default=19500)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    up, nginx_port, sluice_port, admin = (args.port_base + i for i in (1, 81, 84, 94))
    run = tempfile.mkdtemp(prefix="sluice-idle-")
    procs = []
    try:
        os.makedirs(f"{run}/up")
        os.makedirs(f"{run}/px/tmp")
        with open(f"{run}/up/nginx.conf", "w") as f:
            f.write(f"""daemon off; worker_processes 1; pid nginx.pid; error_log error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok"; }} }} }}
""")
        workers = os.cpu_count()
        with open(f"{run}/px/nginx.conf", "w") as f:
            f.write(f"""daemon off; worker_processes {workers}; pid nginx.pid; error_log error.log warn;
worker_rlimit_nofile {hard};
events {{ worker_connections {args.connections * 2 + 1024}; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp;
  uwsgi_temp_path tmp; scgi_temp_path tmp;
  upstream agent {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://agent; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        with open(f"{run}/pool.yaml", "w") as f:
            f.write(f"""apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {{name: bench, namespace: bench}}
spec:
  matches: [{{pathPrefix: /}}]
  backends: [{{endpoints: ["127.0.0.1:{up}"]}}]
""")
        procs.append(subprocess.Popen(["nginx", "-p", f"{run}/up/", "-c", f"{run}/up/nginx.conf"]))
        nginx = subprocess.Popen(["nginx", "-p", f"{run}/px/", "-c", f"{run}/px/nginx.conf"])
        procs.append(nginx)
        env = dict(os.environ, RUST_LOG="warn")
        sluice = subprocess.Popen(
            [args.sluice, "proxy", "--config", f"{run}/pool.yaml",
             "--listen", f"127.0.0.1:{sluice_port}", "--admin", f"127.0.0.1:{admin}",
             "--access-log", "off", "--idle-timeout", "600s"],
            env=env, stdout=subprocess.DEVNULL)
        procs.append(sluice)
        wait_port(up)
        wait_port(nginx_port)
        wait_port(sluice_port)
        time.sleep(0.5)
        n = args.connections
        ng = measure("nginx", [nginx.pid] + children(nginx.pid), nginx_port, n)
        sl = measure("sluice", [sluice.pid], sluice_port, n)
        print(f"sluice/nginx: {sl / ng:.1f}x memory per idle connection")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
