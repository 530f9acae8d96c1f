#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests: no helm binary, no cluster, no network.
#
#   python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
#   scripts/validate-manifests.sh            # or PYTHON=/path/to/python scripts/validate-manifests.sh
#
# 1. lints charts/sluice (Helm v4 SDK, PyPI helm-python-sdk) with its default values,
#    with mode=controller and with each charts/sluice/ci/*-values.yaml;
# 2. renders the same sets of values (scripts/render_chart.py) and validates every
#    rendered object, every CRD in crds/ and charts/sluice/crds/, and every manifest in
#    deploy/kubernetes/ and deploy/examples/ (when present) against the Kubernetes
#    $KUBE_VERSION schemas with kubernetes-validate (strict: unknown fields fail).
#    Sluice custom resources (AgentPool, RatePolicy), including the route manifests
#    inside the chart's routes ConfigMap, are validated against the CRDs' own schemas;
#    rendered objects are also checked for names, standard labels, pod security and
#    the references between them (Service selectors and ports, ConfigMaps, the
#    controller URL); with SLUICE_BIN=path/to/sluice, the routes of every render are
#    also compiled with `sluice compile` (semantic checks beyond the CRD schemas);
# 3. checks that invalid values (mode=bogus and others) make rendering FAIL;
# 4. checks that crds/ and charts/sluice/crds/ hold the same generated files, and that
#    deploy/kubernetes/sluice.yaml is the chart rendered with its defaults
#    (`scripts/validate-manifests.sh --update` regenerates it).
# Exits non-zero, with the reason, on the first failing step.
set -euo pipefail

update=false
case "${1:-}" in
  "") ;;
  --update) update=true ;;
  *)
    echo "usage: $0 [--update]   (--update regenerates deploy/kubernetes/sluice.yaml first)" >&2
    exit 2
    ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
KUBE_VERSION=${KUBE_VERSION:-1.33}
CHART=charts/sluice
RENDER=(scripts/render_chart.py)
started=$SECONDS

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }

if ! "$PYTHON" -c 'import helm_python, kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
  fail "$PYTHON cannot import helm_python and kubernetes_validate; set up the venv with:
  python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
(or point PYTHON at an interpreter that has scripts/requirements.txt installed)"
fi
[ -f "$CHART/Chart.yaml" ] || fail "no chart at $CHART"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The value sets: a label, then the arguments that select them.
scenarios=(
  "default|"
  "controller|--set mode=controller --name edge"
  "long-name|--set mode=controller --name a-release-name-that-is-fifty-three-characters-long-x"
)
for f in "$CHART"/ci/*-values.yaml; do
  [ -e "$f" ] || continue
  name=$(basename "$f" -values.yaml)
  scenarios+=("ci-$name|-f $f")
done

step "lint $CHART (Helm $("$PYTHON" -c 'import helm_python as h; print(h.helm_sdk_version())'), kube v$KUBE_VERSION, strict)"
for s in "${scenarios[@]}"; do
  label=${s%%|*}
  read -r -a args <<<"${s#*|}"
  lint_args=()
  for ((i = 0; i < ${#args[@]}; i++)); do
    # lint has no release name; drop --name NAME.
    if [ "${args[i]}" = --name ]; then i=$((i + 1)); continue; fi
    lint_args+=("${args[i]}")
  done
  if ! out=$("$PYTHON" "${RENDER[@]}" lint "$CHART" --strict --kube-version "v$KUBE_VERSION.0" "${lint_args[@]}" 2>&1); then
    echo "$out" >&2
    fail "helm lint of $CHART failed with values: $label"
  fi
  echo "ok   lint $label: $(echo "$out" | tail -n 1)"
done

step "render $CHART"
rendered=()
for s in "${scenarios[@]}"; do
  label=${s%%|*}
  read -r -a args <<<"${s#*|}"
  out="$tmp/rendered-$label.yaml"
  if ! "$PYTHON" "${RENDER[@]}" render "$CHART" "${args[@]}" -o "$out" --notes "$tmp/notes-$label.txt"; then
    fail "rendering $CHART failed with values: $label"
  fi
  [ -s "$tmp/notes-$label.txt" ] || fail "NOTES.txt rendered empty with values: $label"
  echo "ok   render $label: $(grep -c '^kind:' "$out") objects"
  rendered+=("$out")
done

step "plain manifests"
GENERATED=deploy/kubernetes/sluice.yaml
header="Generated from $CHART with its default values (standalone proxy and demo agents),
release \"sluice\" in namespace \"sluice\", by \`scripts/validate-manifests.sh --update\`.
Do not edit: change the chart and regenerate. For clusters without Helm:
  kubectl apply -f deploy/kubernetes/namespace.yaml -f $GENERATED
The objects keep the chart's labels (app.kubernetes.io/managed-by: Helm)."
"$PYTHON" "${RENDER[@]}" render "$CHART" --name sluice --namespace sluice --header "$header" -o "$tmp/plain.yaml" \
  || fail "rendering $GENERATED failed"
if $update; then
  mkdir -p "$(dirname "$GENERATED")"
  cp "$tmp/plain.yaml" "$GENERATED"
  echo "ok   wrote $GENERATED"
elif [ -e "$GENERATED" ]; then
  if ! diff -u "$GENERATED" "$tmp/plain.yaml" >"$tmp/plain.diff"; then
    head -n 40 "$tmp/plain.diff" >&2
    fail "$GENERATED is not the chart's current default render: run scripts/validate-manifests.sh --update"
  fi
  echo "ok   $GENERATED is the chart's default render"
else
  echo "skip $GENERATED does not exist"
fi

step "validate against Kubernetes $KUBE_VERSION (kubernetes-validate $("$PYTHON" -c 'import kubernetes_validate as k; print(k.__version__)'), strict)"
plain=()
for f in crds/*.yaml "$CHART"/crds/*.yaml; do
  [ -e "$f" ] && plain+=("$f")
done
for dir in deploy/kubernetes deploy/examples; do
  [ -d "$dir" ] || continue
  while IFS= read -r -d '' f; do plain+=("$f"); done \
    < <(find "$dir" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
done
[ ${#plain[@]} -gt 0 ] || fail "no CRDs found in crds/ or $CHART/crds/"

# Arguments: the Kubernetes version, then `--rendered` and the chart's rendered streams,
# then `--plain` and the checked-in files.
"$PYTHON" - "$KUBE_VERSION" --rendered "${rendered[@]}" --plain "${plain[@]}" <<'PY' || fail "manifest validation failed (see ERROR lines above)"
import glob
import re
import sys
from collections import Counter

import jsonschema
import kubernetes_validate
import yaml

version, *rest = sys.argv[1:]
rendered, plain, target = [], [], None
for arg in rest:
    if arg in ("--rendered", "--plain"):
        target = rendered if arg == "--rendered" else plain
    else:
        target.append(arg)

errors = 0


def error(where, message):
    global errors
    errors += 1
    print(f"ERROR {where}: {message}")


DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart")


def openapi_to_jsonschema(node):
    """A CRD's structural OpenAPI v3 schema as JSON schema: `nullable` and
    `x-kubernetes-int-or-string` become what they mean."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


# The Sluice CRDs, by (apiVersion, kind): validate custom resources with their own schemas.
crd_schemas = {}
for path in sorted(glob.glob("crds/*.yaml")):
    for crd in yaml.safe_load_all(open(path)):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for v in spec["versions"]:
            schema = openapi_to_jsonschema(v["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})
            schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{v['name']}"}
            schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
            schema["properties"]["metadata"] = {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN.pattern},
                               "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern}},
            }
            crd_schemas[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = schema
sluice_groups = {api.split("/")[0] for api, _ in crd_schemas}


def describe(doc):
    meta = doc.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{doc.get('kind')} {ns}{meta.get('name')}"


def validate_object(where, doc):
    """Validates one object; returns True when it passed."""
    before = errors
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        error(where, "not a Kubernetes object (no apiVersion/kind)")
        return False
    if not (doc.get("metadata") or {}).get("name"):
        error(where, f"{doc['kind']} has no metadata.name")
        return False
    what = f"{where}: {describe(doc)}"
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    if group in sluice_groups:
        schema = crd_schemas.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            error(what, f"no CRD in crds/ defines {doc['kind']} in {doc['apiVersion']}")
            return False
        validator = jsonschema.Draft7Validator(schema)
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            error(what, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
        return errors == before
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        error(what, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        error(what, e.message)
    # The routes ConfigMap holds manifests: validate them too.
    if doc["kind"] == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "routes":
        for key, text in (doc.get("data") or {}).items():
            if not key.endswith((".yaml", ".yml", ".json")):
                continue
            try:
                inner = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as e:
                error(f"{what} data.{key}", f"not YAML: {e}")
                continue
            for i, d in enumerate(inner):
                validate_object(f"{what} data.{key}[{i}]", d)
    return errors == before


def pod_spec(doc):
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return None


def check_chart_object(what, doc):
    """Conventions of everything the chart renders."""
    meta = doc["metadata"]
    name = meta["name"]
    if doc["kind"] == "Service":
        if not (DNS1035_LABEL.match(name) and len(name) <= 63):
            error(what, f"Service name {name!r} is not a DNS-1035 label of at most 63 characters")
    elif doc["kind"] == "StatefulSet" and len(name) > 52:
        error(what, f"StatefulSet name {name!r} is longer than 52 (its pods' controller-revision-hash label would be too long)")
    elif not (DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
        error(what, f"name {name!r} is not a DNS-1123 subdomain")
    labels = meta.get("labels") or {}
    for key in STANDARD_LABELS:
        if key not in labels:
            error(what, f"missing label {key}")
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            error(what, f"label {key}={value!r} is not a valid label value")
    template = pod_spec(doc)
    if template is None:
        return
    spec = template["spec"]
    if spec.get("automountServiceAccountToken") is not False:
        error(what, "pod mounts a ServiceAccount token (nothing in Sluice uses the API yet)")
    psc = spec.get("securityContext") or {}
    if not psc.get("runAsNonRoot") or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        error(what, "pod securityContext lacks runAsNonRoot or seccompProfile RuntimeDefault")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{what} container {c['name']}"
        sc = c.get("securityContext") or {}
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False \
                or "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            error(cw, "securityContext must set readOnlyRootFilesystem, allowPrivilegeEscalation: false and drop ALL capabilities")
        if not (c.get("resources") or {}).get("requests"):
            error(cw, "no resource requests")
        if "readinessProbe" not in c or "livenessProbe" not in c:
            error(cw, "no readiness or liveness probe")


def check_references(where, docs):
    """References between the objects of one rendered release."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = [d for d in docs if pod_spec(d) is not None]
    for svc in by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector") or {}
        matches = [w for w in workloads
                   if selector and all((pod_spec(w)["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
        if not matches:
            error(where, f"Service {svc['metadata']['name']} selects no workload of the release")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and not all(
                any(p.get("name") == target for c in pod_spec(w)["spec"]["containers"] for p in c.get("ports", []))
                for w in matches):
                error(where, f"Service {svc['metadata']['name']} port {port.get('name')}: no container port named {target}")
    for w in workloads:
        spec = pod_spec(w)["spec"]
        for vol in spec.get("volumes", []):
            cm = (vol.get("configMap") or {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                print(f"note {where}: {describe(w)} mounts ConfigMap {cm}, which the release does not create")
        sa = spec.get("serviceAccountName")
        if by_kind.get("ServiceAccount") and sa not in by_kind["ServiceAccount"]:
            error(where, f"{describe(w)} runs as ServiceAccount {sa}, not the one the release creates")
        for c in spec["containers"]:
            args = c.get("args") or []
            if "--controller" in args:
                url = args[args.index("--controller") + 1]
                m = re.match(r"^http://([^:/]+):(\d+)$", url)
                svc = by_kind.get("Service", {}).get(m.group(1)) if m else None
                if not svc or not any(str(p["port"]) == m.group(2) for p in svc["spec"]["ports"]):
                    error(where, f"{describe(w)}: --controller {url} names no Service port of the release")
    dupes = [k for k, n in Counter((d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs).items() if n > 1]
    for kind, ns, name in dupes:
        error(where, f"{kind} {ns}/{name} is rendered more than once")


def load(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        error(path, f"cannot read: {e}")
        return []


for path in rendered:
    docs = load(path)
    name = path.rsplit("/", 1)[-1]
    if not docs:
        error(name, "rendered no objects")
    ok = 0
    for i, doc in enumerate(docs):
        if validate_object(f"{name}[{i}]", doc):
            ok += 1
        if isinstance(doc, dict) and (doc.get("metadata") or {}).get("name"):
            check_chart_object(f"{name}: {describe(doc)}", doc)
    check_references(name, [d for d in docs if isinstance(d, dict) and (d.get("metadata") or {}).get("name")])
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(d.get("kind") for d in docs).items()))
    print(f"{'ok  ' if ok == len(docs) else 'FAIL'} {name}: {ok}/{len(docs)} valid ({kinds})")

for path in plain:
    docs = load(path)
    ok = sum(validate_object(f"{path}[{i}]", doc) for i, doc in enumerate(docs))
    kinds = ", ".join(sorted({str(d.get("kind")) for d in docs if isinstance(d, dict)}))
    print(f"{'ok  ' if ok == len(docs) else 'FAIL'} {path}: {ok}/{len(docs)} valid ({kinds or 'empty'})")

sys.exit(1 if errors else 0)
PY

step "compile the rendered routes with sluice"
if [ -n "${SLUICE_BIN:-}" ]; then
  [ -x "$SLUICE_BIN" ] || fail "SLUICE_BIN=$SLUICE_BIN is not an executable"
  for out in "${rendered[@]}"; do
    label=$(basename "$out" .yaml)
    dir="$tmp/routes-$label"
    # Write the routes ConfigMap's files as the pods see them in /etc/sluice/routes.
    "$PYTHON" - "$out" "$dir" <<'PY' || fail "cannot extract the routes of $label"
import os, sys, yaml
src, dst = sys.argv[1:]
os.makedirs(dst)
for doc in yaml.safe_load_all(open(src)):
    if doc and doc.get("kind") == "ConfigMap" and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "routes":
        for key, text in (doc.get("data") or {}).items():
            with open(os.path.join(dst, key), "w") as f:
                f.write(text)
PY
    if [ -z "$(ls -A "$dir")" ]; then
      echo "skip $label: no routes ConfigMap (existingRoutesConfigMap)"
      continue
    fi
    if ! diags=$("$SLUICE_BIN" compile -f "$dir" 2>&1 >/dev/null); then
      echo "$diags" >&2
      fail "the routes rendered with values $label do not compile"
    fi
    echo "ok   $label: routes compile${diags:+ (with warnings: $diags)}"
  done
else
  echo "skip set SLUICE_BIN (e.g. target/debug/sluice) to compile the routes of each render"
fi

step "invalid values must fail to render"
reject() {
  local why=$1
  shift
  local out
  if ! out=$("$PYTHON" "${RENDER[@]}" render "$CHART" "$@" --expect-failure 2>&1); then
    echo "$out" >&2
    fail "rendering with $* was expected to fail ($why)"
  fi
  local reason
  reason=$(echo "$out" | grep -m1 -o -E "at '.*|execution error.*" || echo "$out" | head -n 1)
  echo "ok   $why: $reason"
}
reject "unknown mode" --set mode=bogus
reject "unknown mode, no schema (template check)" --set mode=bogus --without-schema
reject "negative replicas" --set proxy.replicas=-1
reject "unknown key (typo)" --set proxy.replica=2
reject "bad duration" --set proxy.pollInterval=fast
reject "bad image pull policy" --set image.pullPolicy=Sometimes
reject "unknown Sluice API version in routes" \
  --set-json 'routes=[{"apiVersion":"sluice.dev/v1","kind":"AgentPool","metadata":{"name":"a"},"spec":{}}]'
reject "routes without metadata.name" --set-json 'routes=[{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}]'
reject "routes and existingRoutesConfigMap" \
  --set-json 'routes="kind: X"' --set existingRoutesConfigMap=mine

step "generated CRDs in sync"
for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/crds/$(basename "$f")" || fail "$CHART/crds/$(basename "$f") differs from $f: regenerate both with \`sluice crds --out crds --out $CHART/crds\`"
done
for f in "$CHART"/crds/*.yaml; do
  [ -e "crds/$(basename "$f")" ] || fail "$f has no counterpart in crds/"
done
echo "ok   crds/ and $CHART/crds/ hold the same $(find crds -name '*.yaml' | wc -l) files"

printf '\nmanifests OK in %ss\n' "$((SECONDS - started))"
