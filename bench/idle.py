#!/usr/bin/env python3
"""Memory per idle keep-alive connection, Sluice beside nginx.

Each proxy fronts the same static upstream (nginx `return 200`). For each proxy in
turn: N connections are opened, each sends one request and reads its answer, then all
are held open and idle; the proxy's resident set (summed over its processes) is read
before and after, and the difference divided by N is reported.

With --upstream, the upstream is a small server of this script that holds answers to
`/hold` until N are waiting, so that each proxy opens N connections to it; those are
kept alive and idle beside the N idle client connections. Each proxy is measured
twice, fresh each time: N idle clients alone, then N idle clients with N idle upstream
connections; the difference per connection is the idle upstream connection.

    python3 bench/idle.py SLUICE_BINARY [--connections 5000] [--port-base 19500] [--upstream]

Needs nginx (Debian). Prints one line per proxy and measurement, and the ratios.
"""
import asyncio
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


def hold(port, n, path="/idle", window=256):
    """Opens n connections, one request each (at most `window` in flight), answers
    read; returns the sockets."""
    sel = selectors.DefaultSelector()
    socks = []
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    pending = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
        socks.append(s)
        # Keep the number in flight bounded so the proxy is not a backlog test.
        while len(pending) >= window:
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


def measure(name, pids, port, n, path="/idle", window=256):
    before = rss_kb(pids)
    socks = hold(port, n, path, window)
    # Let the proxy finish what the last answers left behind (Sluice parks an idle
    # upstream connection after one to two seconds).
    time.sleep(3)
    after = rss_kb(pids)
    for s in socks:
        s.close()
    per = (after - before) * 1024 / n
    print(f"{name}: {n} idle connections, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
          f"{per:.0f} bytes per connection", flush=True)
    return per


def serve_upstream(port, n):
    """Answers `ok` to every request, those to `/hold` once n of them wait."""
    state = {"waiting": 0, "batch": None}

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if head.split(b" ", 2)[1] == b"/hold":
                batch = state["batch"]
                state["waiting"] += 1
                if state["waiting"] == n:
                    state["waiting"], state["batch"] = 0, asyncio.Event()
                    batch.set()
                await batch.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def run():
        state["batch"] = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-upstream":
        serve_upstream(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("sluice")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--port-base", type=int, default=19500)
    ap.add_argument("--upstream", action="store_true",
                    help="also measure idle upstream connections")
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
  upstream agent {{ server 127.0.0.1:{up}; keepalive {args.connections if args.upstream else 128}; }}
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
        if args.upstream:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve-upstream", str(up), str(args.connections)]))
        else:
            procs.append(subprocess.Popen(
                ["nginx", "-p", f"{run}/up/", "-c", f"{run}/up/nginx.conf"]))
        wait_port(up)
        env = dict(os.environ, RUST_LOG="warn")

        def start(name):
            """Starts the proxy `name`; returns its process and port."""
            if name == "nginx":
                proc = subprocess.Popen(
                    ["nginx", "-p", f"{run}/px/", "-c", f"{run}/px/nginx.conf"])
                port = nginx_port
            else:
                proc = subprocess.Popen(
                    [args.sluice, "proxy", "--config", f"{run}/pool.yaml",
                     "--listen", f"127.0.0.1:{sluice_port}", "--admin", f"127.0.0.1:{admin}",
                     "--access-log", "off", "--idle-timeout", "600s"],
                    env=env, stdout=subprocess.DEVNULL)
                port = sluice_port
            procs.append(proc)
            wait_port(port)
            time.sleep(0.5)
            return proc, port

        def stop(proc):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            procs.remove(proc)

        n = args.connections
        per = {}
        for name in ("nginx", "sluice"):
            proc, port = start(name)
            pids = [proc.pid] + children(proc.pid)
            per[name] = measure(name, pids, port, n)
            if args.upstream:
                stop(proc)
                proc, port = start(name)
                pids = [proc.pid] + children(proc.pid)
                both = measure(f"{name}, each with an upstream connection", pids, port, n,
                               path="/hold", window=n)
                per[f"{name} upstream"] = both - per[name]
                print(f"{name}: {per[name + ' upstream']:.0f} bytes per idle upstream connection",
                      flush=True)
            stop(proc)
        print(f"sluice/nginx: {per['sluice'] / per['nginx']:.1f}x memory per idle connection")
        if args.upstream:
            print(f"sluice/nginx: {per['sluice upstream'] / per['nginx upstream']:.1f}x "
                  "memory per idle upstream connection")
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
