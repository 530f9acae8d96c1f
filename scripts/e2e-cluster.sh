#!/usr/bin/env bash
# `make e2e`: checks Sluice against a real cluster from KUBECONFIG. Skipped (exit 0 with
# a message) when there is no cluster to talk to.
#
# What it checks: the API server accepts the CRDs, validates AgentPools with their
# schema (a valid one is accepted; invalid ones, out-of-range numbers and invalid
# combinations included, refused), `kubectl get agentpools`
# shows the printer columns, and `sluice controller`, run here against the cluster,
# watches the objects and writes their status conditions (Accepted=True on a valid
# pool, Accepted=False with the diagnostic on a pool the compile step refuses).
# The RBAC it needs is the one `sluice controller --print-rbac` prints; your kubeconfig
# user must have at least that.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1; then
  echo "e2e: skipped: kubectl is not installed"; exit 0
fi
if [ -z "${KUBECONFIG:-}" ] && [ ! -f "$HOME/.kube/config" ]; then
  echo "e2e: skipped: no KUBECONFIG and no ~/.kube/config"; exit 0
fi
if ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  echo "e2e: skipped: the cluster in KUBECONFIG does not answer"; exit 0
fi

ns="sluice-e2e-$$"
cleanup() { kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

kubectl apply --server-side -f crds/
kubectl wait --for condition=Established --timeout=60s crd/agentpools.sluice.dev crd/ratepolicies.sluice.dev
kubectl create namespace "$ns"
# The demo's pools, moved from their namespace (demo) into this one: kubectl refuses
# `-n NS` with objects that name another namespace.
pools() { sed "s/namespace: demo$/namespace: $ns/" deploy/examples/standalone/pools.yaml; }
pools | kubectl apply --server-side --dry-run=server -o name -f -
pools | kubectl apply --server-side -f -
kubectl -n "$ns" get agentpools
# What the API server stored is what the file says (its schema kept the field).
want=$(grep -A1 '^  loadBalancing:' deploy/examples/standalone/pools.yaml | sed -n 's/^ *algorithm: *//p' | head -n 1)
kubectl -n "$ns" get ap echo -o jsonpath='{.spec.loadBalancing.algorithm}' | grep -qx "$want"

# The schema refuses what the Rust types refuse: a bad prefix and weight, a number
# beyond its type (the API server ignores `format: uint32`: only `maximum` bounds it), a
# port out of range (a CEL rule), a backend with both a Service and endpoints.
for spec in \
  '{matches: [{pathPrefix: no-slash}], backends: [{endpoints: ["127.0.0.1:1"], weight: 0}]}' \
  '{matches: [{pathPrefix: /}], backends: [{endpoints: ["127.0.0.1:1"]}], queue: {defaultPriority: 5000000000}}' \
  '{matches: [{pathPrefix: /}], backends: [{service: {name: a, port: 70000}}]}' \
  '{matches: [{pathPrefix: /}], backends: [{service: {name: a, port: http}, endpoints: ["127.0.0.1:1"]}]}'; do
  if kubectl -n "$ns" apply --server-side -f - >/dev/null 2>&1 <<YAML
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: bad}
spec: $spec
YAML
  then
    echo "e2e: FAILED: the API server accepted an invalid AgentPool: $spec"; exit 1
  fi
done
# The controller against the cluster: status conditions on the objects.
bin=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/debug/sluice}
[ -x "$bin" ] || { echo "e2e: FAILED: $bin is missing (run make e2e, which builds it)"; exit 1; }
kubectl -n "$ns" apply --server-side -f - <<YAML
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: refused}
spec:
  matches: [{pathPrefix: /refused}]
  backends: [{endpoints: ["127.0.0.1:1"]}]
  fallback: {name: refused}
YAML
"$bin" controller --namespace "$ns" --listen 127.0.0.1:0 --identity "e2e-$$" \
  --lease-namespace "$ns" >"/tmp/sluice-e2e-controller-$$.log" 2>&1 &
controller=$!
trap 'kill $controller 2>/dev/null || true; cleanup' EXIT
condition() { kubectl -n "$ns" get ap "$1" -o jsonpath="{.status.conditions[?(@.type==\"Accepted\")].status}" 2>/dev/null; }
for _ in $(seq 1 60); do
  [ "$(condition echo)" = True ] && [ "$(condition refused)" = False ] && break
  sleep 1
done
if [ "$(condition echo)" != True ] || [ "$(condition refused)" != False ]; then
  echo "e2e: FAILED: status conditions not written; controller log:"
  cat "/tmp/sluice-e2e-controller-$$.log"
  exit 1
fi
kubectl -n "$ns" get ap refused -o jsonpath='{.status.conditions[?(@.type=="Accepted")].message}'; echo
echo "e2e: passed"
