#!/usr/bin/env bash
# Two Sluice builds head to head: the same manifests, the same static upstream (nginx
# answering `return 200` on two ports, so the upstream costs almost nothing), wrk
# against each in turn, rounds interleaved. Prints req/s, CPU per request and p99 for
# each build and the ratio of the second to the first. For "is this change slower?".
# Either side may be the word `nginx`: nginx as the proxy doing the same work
# (`least_conn` over the two ports with keep-alive upstream connections; in the limits
# scenario an API-key check and a `limit_req` keyed by the key), one worker per core.
#
#   bash bench/ab.sh BEFORE_SLUICE_BINARY AFTER_SLUICE_BINARY
#   bash bench/ab.sh nginx SLUICE_BINARY
#
# Knobs (environment): AB_ROUNDS (5), AB_DURATION (s, 8), AB_WARMUP (s, 2),
# AB_CONNECTIONS (64), AB_THREADS (wrk threads, 2), AB_SCENARIO (plain: LeastRequest
# over the two ports, no policy; limits: the same plus API-key authentication and a
# per-consumer rate limit), AB_PORT_BASE (19000), AB_ARGS_A and AB_ARGS_B (extra
# `sluice proxy` flags for one side), AB_ACCESS_LOG (off: no access log on either side;
# on: each proxy writes a line per request to a file, Sluice its JSON on stdout, nginx
# its default format), AB_RATE (req/s: instead of wrk's as-fast-as-possible load,
# `oha` sends this many requests a second, each timed from when it was due, for
# latency at a fixed rate; `cargo install oha`), AB_CLOSE (off; on: every request asks
# `Connection: close`, so each comes on a new client connection), AB_SYSCALLS (off; on:
# `perf` counts the system calls each proxy makes while measured, printed per request
# after p99; the tracing adds to the CPU figures of both sides; `perf` from Debian,
# `kernel.perf_event_paranoid` at most 2).
# Needs nginx and wrk (Debian).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C

[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_SLUICE AFTER_SLUICE" >&2; exit 2; }
side_path() { if [[ $1 == nginx ]]; then echo nginx; else realpath "$1"; fi; }
A=$(side_path "$1"); B=$(side_path "$2")
for bin in "$A" "$B"; do
  [[ $bin == nginx || -x $bin ]] || { echo "not executable: $bin" >&2; exit 2; }
done
command -v nginx >/dev/null && command -v wrk >/dev/null \
  || { echo "needs nginx and wrk: apt-get install nginx wrk" >&2; exit 2; }

ROUNDS=${AB_ROUNDS:-5}
DURATION=${AB_DURATION:-8}
WARMUP=${AB_WARMUP:-2}
CONNECTIONS=${AB_CONNECTIONS:-64}
THREADS=${AB_THREADS:-2}
SCENARIO=${AB_SCENARIO:-plain}
ACCESS_LOG=${AB_ACCESS_LOG:-off}
RATE=${AB_RATE:-}
[[ -z $RATE ]] || command -v oha >/dev/null || { echo "AB_RATE needs oha: cargo install oha" >&2; exit 2; }
[[ $ACCESS_LOG == on || $ACCESS_LOG == off ]] || { echo "AB_ACCESS_LOG: on or off" >&2; exit 2; }
CLOSE=${AB_CLOSE:-off}
[[ $CLOSE == on || $CLOSE == off ]] || { echo "AB_CLOSE: on or off" >&2; exit 2; }
SYSCALLS=${AB_SYSCALLS:-off}
[[ $SYSCALLS == on || $SYSCALLS == off ]] || { echo "AB_SYSCALLS: on or off" >&2; exit 2; }
[[ $SYSCALLS == off ]] || command -v perf >/dev/null || { echo "AB_SYSCALLS needs perf: apt-get install linux-perf" >&2; exit 2; }
nginx_log="access_log off;"
[[ $ACCESS_LOG == on ]] && nginx_log="access_log access.log;"
base=${AB_PORT_BASE:-19000}
UP1=$((base + 1)) UP2=$((base + 2)) PROXY=$((base + 80)) ADMIN=$((base + 90))
KEY=bench-consumer-key-0123456789
run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

mkdir -p "$run/nginx" "$run/manifests"
cat > "$run/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP1; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$UP2; location / { return 200 "ok"; } }
}
EOF
cat > "$run/manifests/pool.yaml" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: bench, namespace: bench}
spec:
  matches: [{pathPrefix: /}]
  backends: [{endpoints: ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]}]
  loadBalancing: {algorithm: LeastRequest}
  timeouts: {connect: 1s, request: 60s}
EOF
headers=()
if [[ $SCENARIO == limits ]]; then
  echo "  access: {public: false, tiers: [standard]}" >> "$run/manifests/pool.yaml"
  sed "s/@KEY@/$KEY/" "$(dirname "$0")/conf/sluice/limits.yaml.in" > "$run/manifests/limits.yaml"
  headers=(-H "Authorization: Bearer $KEY")
fi
[[ $CLOSE == off ]] || headers+=(-H "Connection: close")
for bin in "$A" "$B"; do
  [[ $bin == nginx ]] || "$bin" compile -f "$run/manifests" > /dev/null
done

# nginx as the proxy, for `nginx` as a side.
mkdir -p "$run/proxy/tmp"
limit_conf="" check_conf=""
if [[ $SCENARIO == limits ]]; then
  limit_conf="map \$http_authorization \$consumer { \"Bearer $KEY\" bench; default \"\"; }
  limit_req_zone \$consumer zone=consumers:10m rate=1000000r/s;"
  check_conf="if (\$consumer = \"\") { return 401; }
      limit_req zone=consumers burst=1000000 nodelay;"
fi
cat > "$run/proxy/nginx.conf" <<EOF
daemon off;
worker_processes $(nproc);
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
  $nginx_log
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  keepalive_requests 1000000;
  $limit_conf
  upstream agents {
    least_conn;
    server 127.0.0.1:$UP1;
    server 127.0.0.1:$UP2;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$PROXY;
    location / {
      $check_conf
      proxy_pass http://agents;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server { listen 127.0.0.1:$ADMIN; location / { return 200; } }
}
EOF

nginx -p "$run/nginx/" -c "$run/nginx/nginx.conf" &
pids+=($!)

cpu_ticks() { # utime + stime of a process and its children (nginx's workers)
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# With AB_SYSCALLS=on, perf counts the system calls of a proxy's processes (nginx's
# workers, Sluice's threads) from syscalls_start to syscalls_end.
syscalls_start() { # pid
  [[ $SYSCALLS == on ]] || return 0
  local pids
  pids=$(echo "$1" $(pgrep -P "$1" || true) | tr ' ' ,)
  perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$run/perf.txt" &
  perf_pid=$!
  sleep 0.3 # attached before the load starts
}
syscalls_end() { # sets calls: the count, or - when not counted
  calls=-
  [[ $SYSCALLS == on ]] || return 0
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  calls=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$run/perf.txt")
  [[ $calls =~ ^[0-9]+$ ]] || { cat "$run/perf.txt" >&2; echo "perf counted nothing" >&2; exit 1; }
}

# One build at a time on the same ports, so that each runs alone on the machine.
measure() { # label binary seconds -> "rps cpu_us_per_request p99_ms syscalls_per_request|-"
  local bin=$2 secs=$3 pid t0 t1 out rps requests extra p99 calls perf_pid
  extra=${AB_ARGS_A:-}; [[ $1 == B ]] && extra=${AB_ARGS_B:-}
  if [[ $bin == nginx ]]; then
    nginx -p "$run/proxy/" -c "$run/proxy/nginx.conf" > "$run/sluice.log" 2>&1 &
  else
    # shellcheck disable=SC2086 # extra flags are split on purpose
    RUST_LOG=warn "$bin" proxy --config "$run/manifests" --listen "127.0.0.1:$PROXY" \
      --admin "127.0.0.1:$ADMIN" --access-log "$([[ $ACCESS_LOG == on ]] && echo json || echo off)" \
      $extra > "$run/sluice.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 100); do
    curl -fs -o /dev/null "${headers[@]}" "http://127.0.0.1:$PROXY/" && break
    sleep 0.05
  done
  curl -fs -o /dev/null "${headers[@]}" "http://127.0.0.1:$PROXY/" \
    || { cat "$run/sluice.log" >&2; echo "$1 did not start" >&2; exit 1; }
  syscalls_start "$pid"
  t0=$(cpu_ticks "$pid")
  if [[ -n $RATE ]]; then
    out=$(oha -z "${secs}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction --no-tui \
      --output-format json "${headers[@]}" "http://127.0.0.1:$PROXY/")
    t1=$(cpu_ticks "$pid")
    syscalls_end
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
codes = r["statusCodeDistribution"]
n = sum(codes.values())
if set(codes) != {"200"}:
    sys.exit("non-2xx responses: %s" % codes)
cpu_us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / n
calls = "-" if sys.argv[4] == "-" else "%.2f" % (int(sys.argv[4]) / n)
print("%.0f %.1f %.2f %s" % (r["summary"]["requestsPerSec"], cpu_us, r["latencyPercentiles"]["p99"] * 1000, calls))
' "$out" $((t1 - t0)) "$(getconf CLK_TCK)" "$calls" || { echo "$1: $out" >&2; exit 1; }
    return
  fi
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "${headers[@]}" "http://127.0.0.1:$PROXY/")
  t1=$(cpu_ticks "$pid")
  syscalls_end
  kill "$pid"; wait "$pid" 2>/dev/null || true
  grep -q "Non-2xx" <<<"$out" && { echo "$1: non-2xx responses" >&2; echo "$out" >&2; exit 1; }
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" { v = $2; n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    print n }' <<<"$out")
  awk -v r="$rps" -v n="$requests" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v p="$p99" \
    -v c="$calls" 'BEGIN { printf "%.0f %.1f %.2f %s\n", r, t / hz * 1e6 / n, p,
      c == "-" ? "-" : sprintf("%.2f", c / n) }'
}

load="wrk -t$THREADS -c$CONNECTIONS"
[[ -n $RATE ]] && load="oha -q $RATE -c$CONNECTIONS"
echo "scenario $SCENARIO, access log $ACCESS_LOG, close $CLOSE: $load, ${DURATION}s x $ROUNDS rounds, interleaved"
measure A "$A" "$WARMUP" > /dev/null
measure B "$B" "$WARMUP" > /dev/null
: > "$run/results"
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [[ $side == B ]] && bin=$B
    read -r rps cpu p99 calls < <(measure "$side" "$bin" "$DURATION")
    printf '%s %s %s %s %s %s\n' "$side" "$r" "$rps" "$cpu" "$p99" "$calls" | tee -a "$run/results"
  done
done
python3 - "$run/results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {}
for side in "AB":
    rps = [float(r[2]) for r in rows if r[0] == side]
    cpu = [float(r[3]) for r in rows if r[0] == side]
    p99 = [float(r[4]) for r in rows if r[0] == side]
    calls = [float(r[5]) for r in rows if r[0] == side and r[5] != "-"]
    med[side] = (statistics.median(rps), statistics.median(cpu), statistics.median(p99),
                 statistics.median(calls) if calls else None)
    counted = f", {med[side][3]:.2f} system calls per request" if calls else ""
    print(f"{side}: median {med[side][0]:.0f} req/s, {med[side][1]:.1f} µs CPU per request, p99 {med[side][2]:.2f} ms{counted}")
b, a = med["B"], med["A"]
counted = f", system calls per request {b[3] / a[3]:.2f}" if a[3] and b[3] else ""
print(f"B/A: req/s {b[0] / a[0]:.2f}, CPU per request {b[1] / a[1]:.2f}, p99 {b[2] / a[2]:.2f}{counted}")
EOF
