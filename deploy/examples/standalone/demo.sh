#!/usr/bin/env bash
# Starts three demo agents and the Sluice proxy from this folder, prints what to try,
# and stops everything on Ctrl-C. Run through `make demo` from the repository root.
#
# Ports, all on 127.0.0.1 (environment variables, or `make demo PORT=8081 ...`):
#   PORT         agent traffic through the proxy            (default 8080)
#   ADMIN_PORT   the proxy's admin listener                 (default 9901)
#   AGENT_PORTS  the three demo agents, comma-separated     (default 9001,9002,9003)
# A port that is already taken stops the demo before anything starts. With other agent
# ports than the default, the proxy serves a copy of this folder with the ports
# rewritten (the banner says where it is, to edit it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${SLUICE_BIN_DIR:?set SLUICE_BIN_DIR to the folder holding sluice and sluice-demo-agent}
port=${PORT:-8080}
admin_port=${ADMIN_PORT:-9901}
agent_ports=${AGENT_PORTS:-9001,9002,9003}

die() {
  echo "demo: $*" >&2
  exit 1
}

IFS=, read -r -a agents <<<"$agent_ports"
[ "${#agents[@]}" -eq 3 ] || die "AGENT_PORTS must be three ports, comma-separated (e.g. 9001,9002,9003), not '$agent_ports'"
all=("$port" "$admin_port" "${agents[@]}")
for p in "${all[@]}"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "'$p' is not a TCP port"
done
[ "$(printf '%s\n' "${all[@]}" | sort -u | wc -l)" -eq 5 ] || die "PORT, ADMIN_PORT and AGENT_PORTS must be five different ports"

# Something answers on 127.0.0.1:PORT: another `make demo`, or any other server.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The first port from $1 up that nothing answers on and that is not in $2...
free_from() {
  local p=$1
  shift
  while in_use "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}
taken=()
names=("PORT (proxy traffic)" "ADMIN_PORT (proxy admin)" "AGENT_PORTS (agent-1)" "AGENT_PORTS (agent-2)" "AGENT_PORTS (agent-3)")
for i in "${!all[@]}"; do
  in_use "${all[i]}" && taken+=("127.0.0.1:${all[i]} for ${names[i]}")
done
if [ "${#taken[@]}" -gt 0 ]; then
  # Suggest free ports, keeping the ones that are free.
  suggested=()
  for p in "${all[@]}"; do
    if in_use "$p"; then p=$(free_from $((p + 1)) "${all[@]}" "${suggested[@]}"); fi
    suggested+=("$p")
  done
  {
    echo "demo: cannot start: something already listens on"
    printf '  %s\n' "${taken[@]}"
    echo "Another 'make demo' may be running (stop it with Ctrl-C), or another server holds these ports."
    echo "Choose free ones, for example:"
    echo "  make demo PORT=${suggested[0]} ADMIN_PORT=${suggested[1]} AGENT_PORTS=${suggested[2]},${suggested[3]},${suggested[4]}"
  } >&2
  exit 1
fi

pids=()
names_of=()
copy=
cleanup() {
  trap - EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$copy" ] || rm -rf "$copy"
  [ "${#pids[@]}" -eq 0 ] || echo "demo stopped"
}
# Ctrl-C (or SIGTERM) is how the demo is meant to end: a normal exit.
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

# The manifests: this folder, or a copy whose endpoints name the chosen agent ports.
config=$here
if [ "$agent_ports" != 9001,9002,9003 ]; then
  copy=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo.XXXXXX")
  for f in "$here"/*.yaml; do
    # Through placeholders, so that 9001->9002 does not then become 9003.
    sed -e 's/"127\.0\.0\.1:9001"/"@AGENT1@"/g' -e 's/"127\.0\.0\.1:9002"/"@AGENT2@"/g' -e 's/"127\.0\.0\.1:9003"/"@AGENT3@"/g' "$f" |
      sed -e "s/@AGENT1@/127.0.0.1:${agents[0]}/g" -e "s/@AGENT2@/127.0.0.1:${agents[1]}/g" \
        -e "s/@AGENT3@/127.0.0.1:${agents[2]}/g" >"$copy/$(basename "$f")"
  done
  config=$copy
fi

export RUST_LOG=${RUST_LOG:-info}
start() {
  local name=$1
  shift
  "$@" &
  pids+=($!)
  names_of+=("$name")
}
start agent-1 "$bin/sluice-demo-agent" --listen "127.0.0.1:${agents[0]}" --name agent-1 --latency-p50 20ms --latency-p99 120ms --capabilities echo,chat
start agent-2 "$bin/sluice-demo-agent" --listen "127.0.0.1:${agents[1]}" --name agent-2 --latency-p50 40ms --latency-p99 250ms --capabilities echo,chat
start agent-3 "$bin/sluice-demo-agent" --listen "127.0.0.1:${agents[2]}" --name agent-3 --latency-p50 80ms --latency-p99 600ms --capabilities echo,chat,summarize
start proxy "$bin/sluice" proxy --config "$config" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin_port"

# Ready: every process is alive, every agent accepts connections and the proxy's
# /readyz says a table is loaded. A process that could not bind its port exits, and
# its error is printed above.
alive() {
  for i in "${!pids[@]}"; do
    kill -0 "${pids[i]}" 2>/dev/null || die "${names_of[i]} exited (its error is above); nothing else is listening on the demo's ports"
  done
}
ready=false
for _ in $(seq 1 300); do
  alive
  if in_use "${agents[0]}" && in_use "${agents[1]}" && in_use "${agents[2]}" &&
    curl -fsS -o /dev/null "127.0.0.1:$admin_port/readyz" 2>/dev/null; then
    ready=true
    break
  fi
  sleep 0.1
done
alive
$ready || die "the proxy did not load its routes within 30 s (see its log above)"

s=127.0.0.1:$port
a=127.0.0.1:$admin_port
cat <<TRY

Sluice is up on $s (admin on $a), routes from $config. Try:

  curl -i $s/agents/echo/hello
  for i in \$(seq 20); do curl -s -D - -o /dev/null $s/agents/echo/ | grep -i '^x-demo-agent:'; done | sort | uniq -c
  for i in \$(seq 300); do curl -s -D - -o /dev/null $s/agents/weighted/ | grep -i '^x-demo-agent:'; done | sort | uniq -c
  curl -s $s/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model":"demo","messages":[{"role":"user","content":"hello agents"}]}'
  curl -N $s/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"stream these words one by one please"}]}'
  curl -s $a/routes
  curl -s $a/metrics | grep '^sluice_'

Edit $config/pools.yaml and the proxy reloads it (a bad edit is
logged and the last good table stays). Ctrl-C stops everything.
TRY

# Until Ctrl-C, or until one of the processes exits.
while sleep 1; do
  for i in "${!pids[@]}"; do
    kill -0 "${pids[i]}" 2>/dev/null || die "${names_of[i]} exited; stopping the demo"
  done
done
