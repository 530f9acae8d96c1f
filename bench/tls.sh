#!/usr/bin/env bash
# TLS termination side by side: nginx and Sluice, each terminating TLS with the same
# certificate (ECDSA P-256) and the same suite and group (TLS 1.3, AES-256-GCM, X25519:
# what both pick for wrk's OpenSSL client), proxying to the same static upstream (nginx
# answering `return 200`). Two measures, rounds interleaved, one proxy at a time:
#
#   handshakes/s  wrk with `Connection: close`: every request is a new connection and a
#                 full handshake (wrk does not resume sessions; nginx's cache and
#                 tickets are off, as Sluice issues no tickets)
#   requests/s    wrk on kept-alive TLS connections
#
#   bash bench/tls.sh [SLUICE_BINARY]    (default: builds target/release/sluice)
#
# Knobs (environment): TLS_ROUNDS (3), TLS_DURATION (s, 8), TLS_CONNECTIONS (64 kept
# alive; 16 for handshakes), TLS_THREADS (wrk threads, 2), TLS_PORT_BASE (19500).
# Needs nginx, wrk and openssl (Debian). Every process shares the machine's cores with
# the load generator: read the ratios. nginx runs one worker per core, Sluice one
# runtime thread per core.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [[ $# -ge 1 ]]; then
  BIN=$(realpath "$1")
else
  target_dir=${CARGO_TARGET_DIR:-$root/target}
  (cd "$root" && cargo build --release -q -p sluice)
  BIN="$target_dir/release/sluice"
fi
[[ -x $BIN ]] || { echo "not executable: $BIN" >&2; exit 2; }
for tool in nginx wrk openssl; do
  command -v "$tool" >/dev/null || { echo "needs nginx, wrk and openssl: apt-get install nginx wrk openssl" >&2; exit 2; }
done

ROUNDS=${TLS_ROUNDS:-3}
DURATION=${TLS_DURATION:-8}
CONNECTIONS=${TLS_CONNECTIONS:-64}
HS_CONNECTIONS=16
THREADS=${TLS_THREADS:-2}
base=${TLS_PORT_BASE:-19500}
UP=$((base + 1)) NGINX=$((base + 43)) SLUICE=$((base + 44)) ADMIN=$((base + 90))
CORES=$(nproc)
run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

# One certificate for both: ECDSA P-256, for the name bench.local.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.local -addext subjectAltName=DNS:bench.local \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null

mkdir -p "$run/up" "$run/edge" "$run/manifests"
cat > "$run/up/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } }
}
EOF
cat > "$run/edge/nginx.conf" <<EOF
daemon off;
worker_processes $CORES;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX ssl;
    http2 on;
    server_name bench.local;
    ssl_certificate $run/cert.pem;
    ssl_certificate_key $run/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat > "$run/manifests/pool.yaml" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: bench, namespace: bench}
spec:
  matches: [{pathPrefix: /}]
  backends: [{endpoints: ["127.0.0.1:$UP"]}]
  timeouts: {connect: 1s, request: 60s}
EOF

nginx -p "$run/up/" -c "$run/up/nginx.conf" & pids+=($!)
nginx -p "$run/edge/" -c "$run/edge/nginx.conf" & pids+=($!)
RUST_LOG=warn "$BIN" proxy --config "$run/manifests" --listen off \
  --tls-listen "127.0.0.1:$SLUICE" --tls-cert "$run/cert.pem" --tls-key "$run/key.pem" \
  --admin "127.0.0.1:$ADMIN" --access-log off > "$run/sluice.log" 2>&1 & pids+=($!)
sluice_pid=$!

curl_ok() { curl -fsk -o /dev/null --resolve "bench.local:$1:127.0.0.1" "https://bench.local:$1/"; }
for port in $NGINX $SLUICE; do
  for _ in $(seq 100); do curl_ok "$port" && break; sleep 0.05; done
  curl_ok "$port" || { cat "$run/sluice.log" >&2; echo "nothing answers on $port" >&2; exit 1; }
done
for port in $NGINX $SLUICE; do
  printf 'port %s negotiates: ' "$port"
  openssl s_client -connect "127.0.0.1:$port" -servername bench.local -alpn http/1.1 </dev/null 2>/dev/null \
    | awk -F': ' '/^(Protocol|Cipher|Negotiated TLS1.3 group|Server Temp Key) *:/ {printf "%s; ", $2} END {print ""}'
done

cpu_ticks() { # user+system ticks of a process and its children (nginx workers)
  local total=0 p
  for p in "$@" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

measure() { # what port pid mode seconds -> "rate cpu_us_per_request"
  local port=$2 pid=$3 mode=$4 secs=$5 t0 t1 out rate requests
  local args=(-c"$CONNECTIONS")
  [[ $mode == handshakes ]] && args=(-c"$HS_CONNECTIONS" -H "Connection: close")
  t0=$(cpu_ticks "$pid")
  # By address: wrk sends no ALPN (HTTP/1.1 on both) and verifies no certificate.
  out=$(wrk -t"$THREADS" -d"${secs}s" "${args[@]}" "https://127.0.0.1:$port/")
  t1=$(cpu_ticks "$pid")
  grep -q "Non-2xx" <<<"$out" && { echo "$1: non-2xx responses" >&2; echo "$out" >&2; exit 1; }
  rate=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$rate" -v n="$requests" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.0f %.1f\n", r, t / hz * 1e6 / (n > 0 ? n : 1) }'
}

nginx_pid=$(cat "$run/edge/nginx.pid")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $CORES cores; wrk -t$THREADS; ${DURATION}s x $ROUNDS rounds"
for mode in handshakes requests; do
  measure nginx "$NGINX" "$nginx_pid" "$mode" 2 > /dev/null
  measure sluice "$SLUICE" "$sluice_pid" "$mode" 2 > /dev/null
done
: > "$run/results"
for r in $(seq "$ROUNDS"); do
  for mode in handshakes requests; do
    for who in nginx sluice; do
      if [[ $who == nginx ]]; then port=$NGINX pid=$nginx_pid; else port=$SLUICE pid=$sluice_pid; fi
      read -r rate cpu < <(measure "$who" "$port" "$pid" "$mode" "$DURATION")
      printf '%s %s %s %s %s\n' "$mode" "$who" "$r" "$rate" "$cpu" | tee -a "$run/results"
    done
  done
done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$sluice_pid/status")
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); Sluice RSS ${rss} KiB"
python3 - "$run/results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print("| measure | nginx | Sluice | Sluice / nginx | CPU µs per request, nginx / Sluice |")
print("|---|---:|---:|---:|---|")
for mode, unit in (("handshakes", "handshakes/s"), ("requests", "requests/s (kept alive)")):
    med = {}
    for who in ("nginx", "sluice"):
        sel = [r for r in rows if r[0] == mode and r[1] == who]
        med[who] = (statistics.median(float(r[3]) for r in sel), statistics.median(float(r[4]) for r in sel))
    print(f"| {unit} | {med['nginx'][0]:.0f} | {med['sluice'][0]:.0f} | {med['sluice'][0] / med['nginx'][0]:.2f} "
          f"| {med['nginx'][1]:.0f} / {med['sluice'][1]:.0f} |")
EOF
