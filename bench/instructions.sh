#!/usr/bin/env bash
# Instructions per request under callgrind: a count that does not move with the load
# of a shared machine, for "is this change cheaper?" and for Sluice beside nginx.
#
#   bash bench/instructions.sh SLUICE_BINARY [SLUICE_BINARY...]
#
# Each target proxies to the same static upstream (nginx `return 200`, not measured):
# nginx (one worker, no master, keep-alive upstream) and each Sluice binary (one worker
# thread, LeastRequest over the upstream, no policy; access log off where the build has
# one). Counting starts after a warm-up; the same keep-alive client sends
# IR_REQUESTS (2000) requests over IR_CONNECTIONS (4) connections, and the instructions
# the proxy executed meanwhile (all threads), divided by the requests, are printed.
# Needs nginx, valgrind and python3 (Debian). Knobs: IR_REQUESTS, IR_CONNECTIONS,
# IR_PORT_BASE (19700), IR_KEEP (a directory to keep the callgrind files in, for
# callgrind_annotate), IR_ARGS (extra `sluice proxy` flags for every Sluice binary),
# IR_ACCESS_LOG (off; json or text: Sluice's access log, on stdout into a file; nginx
# keeps none), IR_SCENARIO (plain; limits: API-key authentication and a per-consumer
# rate limit on both sides, as in ab.sh: nginx checks the key with a `map` and applies
# a `limit_req` keyed by it).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C
(($#)) || { echo "usage: $0 SLUICE_BINARY..." >&2; exit 2; }
for b in nginx valgrind callgrind_control python3; do
  command -v "$b" >/dev/null || { echo "needs $b (apt-get install nginx valgrind python3)" >&2; exit 2; }
done
SCENARIO=${IR_SCENARIO:-plain}
[[ $SCENARIO == plain || $SCENARIO == limits ]] || { echo "IR_SCENARIO: plain or limits" >&2; exit 2; }
KEY=bench-consumer-key-0123456789
REQUESTS=${IR_REQUESTS:-2000}
CONNECTIONS=${IR_CONNECTIONS:-4}
base=${IR_PORT_BASE:-19700}
UP=$((base + 1)) PROXY=$((base + 80)) ADMIN=$((base + 90))
run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n ${IR_KEEP:-} ]]; then mkdir -p "$IR_KEEP" && cp "$run"/callgrind.* "$IR_KEEP"/; fi
  rm -rf "$run"
}
trap cleanup EXIT

mkdir -p "$run/up" "$run/px/tmp" "$run/manifests"
limit_conf="" check_conf="" auth=""
if [[ $SCENARIO == limits ]]; then
  limit_conf="map \$http_authorization \$consumer { \"Bearer $KEY\" bench; default \"\"; }
  limit_req_zone \$consumer zone=consumers:10m rate=1000000r/s;"
  check_conf="if (\$consumer = \"\") { return 401; } limit_req zone=consumers burst=1000000 nodelay;"
  auth="Bearer $KEY"
fi
cat > "$run/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid nginx.pid; error_log error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
CONF
cat > "$run/px/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid nginx.pid; error_log error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp;
  uwsgi_temp_path tmp; scgi_temp_path tmp;
  $limit_conf
  upstream agent { least_conn; server 127.0.0.1:$UP; keepalive 32; }
  server { listen 127.0.0.1:$PROXY;
    location / { $check_conf
      proxy_pass http://agent; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$run/manifests/pool.yaml" <<CONF
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: bench, namespace: bench}
spec:
  matches: [{pathPrefix: /}]
  backends: [{endpoints: ["127.0.0.1:$UP"]}]
  loadBalancing: {algorithm: LeastRequest}
CONF
if [[ $SCENARIO == limits ]]; then
  echo "  access: {public: false, tiers: [standard]}" >> "$run/manifests/pool.yaml"
  sed "s/@KEY@/$KEY/" "$(dirname "$0")/conf/sluice/limits.yaml.in" > "$run/manifests/limits.yaml"
fi
nginx -p "$run/up/" -c "$run/up/nginx.conf" &
pids+=($!)

load() { # requests connections
  python3 - "$PROXY" "$1" "$2" "$auth" <<'PY'
import http.client, sys
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
headers = {"Host": "bench"}
if sys.argv[4]:
    headers["Authorization"] = sys.argv[4]
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(c)]
for i in range(n):
    conn = conns[i % c]
    conn.request("GET", "/bench", headers=headers)
    r = conn.getresponse(); r.read()
    if r.status != 200: sys.exit(f"status {r.status}")
PY
}

measured=0
measure() { # label command...
  local label=$1; shift
  measured=$((measured + 1))
  local out="$run/callgrind.$measured"
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 SLUICE_WORKERS=1 valgrind --tool=callgrind \
    --callgrind-out-file="$out.%p" --dump-instr=no --compress-strings=no "$@" > "$out.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do load 1 1 2>/dev/null && break; sleep 0.1; done
  load 200 "$CONNECTIONS"                      # warm-up: pools, caches, lazy statics
  callgrind_control -z "$pid" > /dev/null      # zero the counters
  load "$REQUESTS" "$CONNECTIONS"
  callgrind_control -d "$pid" > /dev/null      # dump what the requests cost
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ir
  # The dump after the requests is the largest one (the final dump at exit holds only
  # the shutdown).
  ir=$(cat "$out".[0-9]* | awk '/^(summary|totals):/ {print $2}' | sort -n | tail -1)
  [[ -n $ir ]] || { cat "$out.log" >&2; echo "$label: no callgrind totals" >&2; exit 1; }
  awk -v l="$label" -v ir="$ir" -v n="$REQUESTS" 'BEGIN { printf "%-40s %10.0f instructions per request\n", l, ir / n }'
}

measure nginx nginx -p "$run/px/" -c "$run/px/nginx.conf"
for bin in "$@"; do
  extra=()
  "$bin" proxy --help 2>/dev/null | grep -q -- '--access-log' \
    && extra+=(--access-log "${IR_ACCESS_LOG:-off}")
  # shellcheck disable=SC2206 # IR_ARGS is split on purpose
  extra+=(${IR_ARGS:-})
  measure "sluice $("$bin" --version | awk '{print $2, $3}')" \
    "$bin" proxy --config "$run/manifests" \
    --listen "127.0.0.1:$PROXY" --admin "127.0.0.1:$ADMIN" "${extra[@]}"
done
