#!/usr/bin/env bash
# Starts three demo agents and the Sluice proxy from this folder, prints what to try,
# and stops everything on Ctrl-C. Run through `make demo` from the repository root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${SLUICE_BIN_DIR:?set SLUICE_BIN_DIR to the folder holding sluice and sluice-demo-agent}

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped"
}
trap cleanup INT TERM EXIT

"$bin/sluice-demo-agent" --listen 127.0.0.1:9001 --name agent-1 --latency-p50 20ms --latency-p99 120ms --capabilities echo,chat &
pids+=($!)
"$bin/sluice-demo-agent" --listen 127.0.0.1:9002 --name agent-2 --latency-p50 40ms --latency-p99 250ms --capabilities echo,chat &
pids+=($!)
"$bin/sluice-demo-agent" --listen 127.0.0.1:9003 --name agent-3 --latency-p50 80ms --latency-p99 600ms --capabilities echo,chat,summarize &
pids+=($!)
RUST_LOG=${RUST_LOG:-info} "$bin/sluice" proxy --config "$here" --listen 127.0.0.1:8080 --admin 127.0.0.1:9901 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null 127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.1
done

cat <<'TRY'

Sluice is up on 127.0.0.1:8080 (admin on 127.0.0.1:9901). Try:

  curl -i 127.0.0.1:8080/agents/echo/hello
  for i in $(seq 20); do curl -s -D - -o /dev/null 127.0.0.1:8080/agents/echo/ | grep -i '^x-demo-agent:'; done | sort | uniq -c
  for i in $(seq 300); do curl -s -D - -o /dev/null 127.0.0.1:8080/agents/weighted/ | grep -i '^x-demo-agent:'; done | sort | uniq -c
  curl -s 127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
       -d '{"model":"demo","messages":[{"role":"user","content":"hello agents"}]}'
  curl -N 127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
       -d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"stream these words one by one please"}]}'
  curl -s 127.0.0.1:9901/routes
  curl -s 127.0.0.1:9901/metrics | grep '^sluice_'

Edit deploy/examples/standalone/pools.yaml and the proxy reloads it (a bad edit is
logged and the last good table stays). Ctrl-C stops everything.
TRY
wait
