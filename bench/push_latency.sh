#!/usr/bin/env bash
# Push latency at the size of issue 7: 1 000 AgentPools, 10 000 endpoints, three proxies.
#
#   bash bench/push_latency.sh
#
# Builds the release binary, generates the manifests (one file per EndpointSlice), runs
# `sluice controller --from-dir` and three `sluice proxy --controller`, then changes one
# endpoint address 100 times and measures, per change, file write -> all three proxies
# serving the new table, and the controller's own publish -> ack. Loopback only; every
# wait is bounded; every process started here is stopped on exit. Results and logs stay
# in $WORK (printed at the end). See bench/PUSH_RESULTS.md.
#
# SOURCE=kube runs the controller in Kubernetes mode instead: it watches
# sluice-fake-apiserver (tests/fake_apiserver, an in-memory API server) through a
# kubeconfig, and a change is a PUT of one EndpointSlice to that API server.
#
# Settings (environment): SOURCE (dir or kube), POLL_INTERVAL (20ms, dir), DEBOUNCE
# (50ms, kube), CHANGES (100), POOLS (1000),
# ENDPOINTS (10), HEARTBEAT (1s), OBSERVE (readyz: poll each proxy's /readyz every
# 1 ms; logs: take the proxies' apply times from their logs, poll nothing but the
# controller's /v1/proxies), CARGO_TARGET_DIR (/var/tmp/sluice-target),
# SKIP_BUILD=1 to use the binary already built, WORK (a new temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sluice-target}
SOURCE=${SOURCE:-dir}
POLL_INTERVAL=${POLL_INTERVAL:-20ms}
DEBOUNCE=${DEBOUNCE:-50ms}
CHANGES=${CHANGES:-100}
POOLS=${POOLS:-1000}
ENDPOINTS=${ENDPOINTS:-10}
HEARTBEAT=${HEARTBEAT:-1s}
WORK=${WORK:-$(mktemp -d /tmp/sluice-push.XXXXXX)}
BIN=$CARGO_TARGET_DIR/release/sluice
FAKE_API=$CARGO_TARGET_DIR/release/sluice-fake-apiserver
case $SOURCE in dir | kube) ;; *) echo "SOURCE must be dir or kube" >&2; exit 2 ;; esac
HELPER=$ROOT/bench/push_latency.py

PIDS=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    # bounded: at most ~5 s per process, then SIGKILL
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  echo "== building $BIN (release)"
  (cd "$ROOT" && timeout 3600 cargo build --release -p sluice)
  if [[ $SOURCE == kube ]]; then
    (cd "$ROOT" && timeout 3600 cargo build --release -p sluice-fake-apiserver)
  fi
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }
[[ $SOURCE == dir || -x $FAKE_API ]] || { echo "no binary at $FAKE_API" >&2; exit 1; }

echo "== manifests in $WORK/manifests"
python3 "$HELPER" gen "$WORK/manifests" --pools "$POOLS" --endpoints "$ENDPOINTS"

export RUST_LOG=${RUST_LOG:-info}

# Every listener binds 127.0.0.1:0 and the address is read back from the log line
# that reports it (ports chosen ahead of time can be taken by the proxies' own
# outgoing connections). Bounded: 30 s, and stop early if the process exited.
addr_from_log() { # PID LOG PATTERN
  local _
  for _ in $(seq 300); do
    if grep -qE "$3" "$2" 2>/dev/null; then
      grep -m1 -oE "$3" "$2" | grep -oE '127\.0\.0\.1:[0-9]+'
      return 0
    fi
    kill -0 "$1" 2>/dev/null || { echo "process $1 exited; see $2" >&2; tail -5 "$2" >&2; return 1; }
    sleep 0.1
  done
  echo "no address in $2 after 30 s" >&2
  return 1
}

API_ARGS=()
if [[ $SOURCE == kube ]]; then
  "$FAKE_API" --listen 127.0.0.1:0 >"$WORK/apiserver.log" 2>&1 &
  API_PID=$!
  PIDS+=("$API_PID")
  API_ADDR=$(addr_from_log "$API_PID" "$WORK/apiserver.log" 'addr=127\.0\.0\.1:[0-9]+')
  echo "== fake API server pid $API_PID on $API_ADDR"
  python3 "$HELPER" load --api "http://$API_ADDR" --pools "$POOLS" --endpoints "$ENDPOINTS"
  cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
current-context: fake
clusters: [{name: fake, cluster: {server: "http://$API_ADDR"}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake}}]
EOF
  KUBECONFIG="$WORK/kubeconfig" "$BIN" controller --listen 127.0.0.1:0 --identity bench \
    --lease-namespace bench --debounce "$DEBOUNCE" --heartbeat "$HEARTBEAT" \
    >"$WORK/controller.log" 2>&1 &
  API_ARGS=(--api "http://$API_ADDR")
else
  "$BIN" controller --from-dir "$WORK/manifests" --listen 127.0.0.1:0 \
    --poll-interval "$POLL_INTERVAL" --heartbeat "$HEARTBEAT" \
    >"$WORK/controller.log" 2>&1 &
fi
CTL_PID=$!
PIDS+=("$CTL_PID")
CTL_ADDR=$(addr_from_log "$CTL_PID" "$WORK/controller.log" 'listen=127\.0\.0\.1:[0-9]+')
echo "== controller pid $CTL_PID on $CTL_ADDR ($([[ $SOURCE == kube ]] && echo "Kubernetes mode, --debounce $DEBOUNCE" || echo "--poll-interval $POLL_INTERVAL"))"

PROXY_ARGS=()
for i in 1 2 3; do
  id=bench-proxy-$i
  "$BIN" proxy --controller "http://$CTL_ADDR" --proxy-id "$id" \
    --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    >"$WORK/$id.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  admin=$(addr_from_log "$pid" "$WORK/$id.log" 'admin=127\.0\.0\.1:[0-9]+')
  PROXY_ARGS+=(--proxy "$id=http://$admin" --proxy-pid "$id=$pid" --proxy-log "$id=$WORK/$id.log")
  echo "== proxy $id pid $pid admin $admin"
done

echo "== measuring ($CHANGES changes)"
rc=0
timeout 600 python3 "$HELPER" measure --dir "$WORK/manifests" --pools "$POOLS" --endpoints "$ENDPOINTS" \
  "${API_ARGS[@]}" --controller "http://$CTL_ADDR" --controller-pid "$CTL_PID" \
  --controller-log "$WORK/controller.log" "${PROXY_ARGS[@]}" \
  --changes "$CHANGES" --poll-interval "$POLL_INTERVAL" --observe "${OBSERVE:-readyz}" --out "$WORK/results.json" || rc=$?

for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "process $pid exited early; see $WORK/*.log" >&2; rc=1; }
done
echo "== results: $WORK/results.json, logs: $WORK/*.log"
exit "$rc"
