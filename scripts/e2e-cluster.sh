#!/usr/bin/env bash
# `make e2e`: checks Sluice against a real cluster from KUBECONFIG. Skipped (exit 0 with
# a message) when there is no cluster to talk to.
#
# What it checks today: the API server accepts the CRDs, validates AgentPools and
# RatePolicies with their schema (a valid one is accepted, an invalid one refused), and
# `kubectl get agentpools` shows the printer columns. The controller's own watching of
# the API arrives with the controller work; this script grows with it.
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
kubectl -n "$ns" apply -f deploy/examples/standalone/pools.yaml --dry-run=server -o name
sed "s/namespace: demo/namespace: $ns/" deploy/examples/standalone/pools.yaml | kubectl apply -f -
kubectl -n "$ns" get agentpools
kubectl -n "$ns" get ap echo -o jsonpath='{.spec.loadBalancing.algorithm}' | grep -qx RoundRobin

# The schema refuses what the Rust types refuse.
if kubectl -n "$ns" apply -f - >/dev/null 2>&1 <<YAML
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: bad}
spec:
  matches: [{pathPrefix: no-slash}]
  backends: [{endpoints: ["127.0.0.1:1"], weight: 0}]
YAML
then
  echo "e2e: FAILED: the API server accepted an invalid AgentPool"; exit 1
fi
echo "e2e: passed"
