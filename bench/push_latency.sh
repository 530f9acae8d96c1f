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
# Settings (environment): POLL_INTERVAL (20ms), CHANGES (100), POOLS (1000),
# ENDPOINTS (10), HEARTBEAT (1s), OBSERVE (readyz: poll each proxy's /readyz every
# 1 ms; logs: take the proxies' apply times from their logs, poll nothing but the
# controller's /v1/proxies), CARGO_TARGET_DIR (/var/tmp/sluice-target),
# SKIP_BUILD=1 to use the binary already built, WORK (a new temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sluice-target}
POLL_INTERVAL=${POLL_INTERVAL:-20ms}
CHANGES=${CHANGES:-100}
POOLS=${POOLS:-1000}
ENDPOINTS=${ENDPOINTS:-10}
HEARTBEAT=${HEARTBEAT:-1s}
WORK=${WORK:-$(mktemp -d /tmp/sluice-push.XXXXXX)}
BIN=$CARGO_TARGET_DIR/release/sluice
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
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }

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

"$BIN" controller --from-dir "$WORK/manifests" --listen 127.0.0.1:0 \
  --poll-interval "$POLL_INTERVAL" --heartbeat "$HEARTBEAT" \
  >"$WORK/controller.log" 2>&1 &
CTL_PID=$!
PIDS+=("$CTL_PID")
CTL_ADDR=$(addr_from_log "$CTL_PID" "$WORK/controller.log" 'listen=127\.0\.0\.1:[0-9]+')
echo "== controller pid $CTL_PID on $CTL_ADDR (--poll-interval $POLL_INTERVAL)"

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
  --controller "http://$CTL_ADDR" --controller-pid "$CTL_PID" \
  --controller-log "$WORK/controller.log" "${PROXY_ARGS[@]}" \
  --changes "$CHANGES" --poll-interval "$POLL_INTERVAL" --observe "${OBSERVE:-readyz}" --out "$WORK/results.json" || rc=$?

for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "process $pid exited early; see $WORK/*.log" >&2; rc=1; }
done
echo "== results: $WORK/results.json, logs: $WORK/*.log"
exit "$rc"
