#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests: no helm binary, no cluster, no network.
#
#   python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
#   scripts/validate-manifests.sh            # or PYTHON=/path/to/python scripts/validate-manifests.sh
#
# 1. lints charts/sluice (Helm v4 SDK, PyPI helm-python-sdk) with its default values,
#    with mode=controller (also with a ServiceMonitor and an existing admin Secret) and
#    with each charts/sluice/ci/*-values.yaml;
# 2. renders the same sets of values (scripts/render_chart.py) and validates every
#    rendered object, every CRD in crds/ and charts/sluice/crds/, and every manifest in
#    deploy/kubernetes/ and deploy/examples/ (when present) against the Kubernetes
#    $KUBE_VERSION schemas with kubernetes-validate (strict: unknown fields fail).
#    Sluice custom resources (AgentPool, RatePolicy), including the route manifests
#    inside the chart's routes ConfigMap, are validated against the CRDs' own schemas;
#    rendered objects are also checked for names, standard labels, pod security and
#    the references between them (Service selectors and ports, ConfigMaps, the
#    controller URL, the admin token's Secret, ServiceMonitor ports and credentials).
#    A proxy whose admin listener is not on loopback must get SLUICE_ADMIN_TOKEN (it
#    refuses to start without). Only a controller that watches the Kubernetes API mounts a
#    ServiceAccount token; it must get POD_NAME and POD_NAMESPACE from the downward API,
#    and its ServiceAccount must be bound to one ClusterRole (cluster-wide, or in each
#    --namespace it watches), to one Role on its Lease, and to a Role in each
#    --consumer-namespace and each --upstream-secret-namespace (its ClusterRole may read
#    no Secret unless it is given neither flag); with SLUICE_BIN, the rules
#    of each must be exactly `sluice controller --print-rbac` (the rules declared next to
#    the code, which crates/controller/tests/rbac.rs checks against the calls it makes). ServiceMonitors (monitoring.coreos.com/v1), for which
#    kubernetes-validate has no schema, are checked structurally instead. The
#    prometheus-adapter rules (the chart's adapter ConfigMap, and the values file
#    deploy/examples/hpa/prometheus-adapter-values.yaml, which must hold the same rules)
#    are checked against the adapter's config format and the labels the ServiceMonitor's
#    relabelings make; HPAs (deploy/examples/hpa/) are validated with kubernetes-validate,
#    and their metrics must be ones the rules serve, with valid label selectors. The
#    Grafana dashboard's ConfigMap (its JSON: panels, variables, layout) and the
#    PrometheusRule (monitoring.coreos.com/v1, checked structurally against the fields of
#    its CRD; each alert with a severity, a summary, a description and a runbook_url to a
#    section of docs/monitoring.md; no series it reads dropped by the ServiceMonitor's
#    metricRelabelings) are checked too. With SLUICE_BIN, every metric that
#    the dashboard, the alerts and the adapter rules name (scripts/promql_names.py reads
#    the PromQL), after `_bucket`, `_sum` and `_count`, must be one that
#    `sluice metrics` lists (what the binaries register), with the labels it has. With
#    SLUICE_BIN=path/to/sluice, the routes of every render are also compiled with
#    `sluice compile` (semantic checks beyond the CRD schemas), and the flags and
#    SLUICE_* variables given to sluice containers must be ones the binary knows;
# 3. checks that invalid values (mode=bogus, a short admin.token and others) make
#    rendering FAIL; that every value of values.yaml is declared and described in
#    values.schema.json and listed in the chart's README (scripts/values_reference.py);
#    and that the kubectl and helm commands of the READMEs and docs/, of NOTES.txt (each
#    render) and of scripts/e2e-cluster.sh name files, charts and objects that exist, in
#    namespaces kubectl accepts, and that their `curl $SLUICE/...` paths reach a pool
#    (scripts/check_commands.py);
# 4. checks that crds/ and charts/sluice/crds/ hold the same generated files, and that
#    deploy/kubernetes/sluice.yaml is the chart rendered with its defaults, except the
#    admin token: it names the Secret sluice-admin, which the user creates, since a
#    random token cannot be checked in (`scripts/validate-manifests.sh --update`
#    regenerates it).
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
  "controller-monitoring|--set mode=controller --set serviceMonitor.enabled=true --set admin.existingSecret=ops-sluice-admin --set admin.existingSecretKey=bearer --set monitoring.dashboard.enabled=true --set monitoring.alerts.enabled=true --name edge"
)
# The renders see a cluster with the Prometheus Operator's PrometheusRule and
# ServiceMonitor CRDs (the chart refuses to render its alerts or its ServiceMonitor
# without them; `reject` below checks that).
OPERATOR_APIS=(--api-versions monitoring.coreos.com/v1/PrometheusRule --api-versions monitoring.coreos.com/v1/ServiceMonitor)
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
  if ! "$PYTHON" "${RENDER[@]}" render "$CHART" "${args[@]}" "${OPERATOR_APIS[@]}" -o "$out" --notes "$tmp/notes-$label.txt"; then
    fail "rendering $CHART failed with values: $label"
  fi
  [ -s "$tmp/notes-$label.txt" ] || fail "NOTES.txt rendered empty with values: $label"
  echo "ok   render $label: $(grep -c '^kind:' "$out") objects"
  rendered+=("$out")
done

step "values: schema and README"
"$PYTHON" scripts/values_reference.py || fail "values.yaml, values.schema.json and the chart's README disagree (see ERROR lines above)"

step "cluster commands of the READMEs, NOTES.txt and scripts/e2e-cluster.sh (dry check)"
notes_args=()
for s in "${scenarios[@]}"; do
  label=${s%%|*}
  notes_args+=(--notes "$tmp/notes-$label.txt" "$tmp/rendered-$label.yaml" sluice)
done
"$PYTHON" scripts/check_commands.py "${notes_args[@]}" || fail "a documented command would fail (see ERROR lines above)"

step "plain manifests"
GENERATED=deploy/kubernetes/sluice.yaml
header="Generated from $CHART with its default values (standalone proxy and demo agents),
release \"sluice\" in namespace \"sluice\", by \`scripts/validate-manifests.sh --update\`,
except admin.existingSecret=sluice-admin: a random admin token cannot be checked in.
Do not edit: change the chart and regenerate. For clusters without Helm:
  kubectl apply -f deploy/kubernetes/namespace.yaml
  kubectl create secret generic sluice-admin -n sluice --from-literal=token=\"\$(openssl rand -hex 24)\"
  kubectl apply -f $GENERATED
The proxies read the token (for /metrics and /routes) from that Secret.
The objects keep the chart's labels (app.kubernetes.io/managed-by: Helm)."
"$PYTHON" "${RENDER[@]}" render "$CHART" --name sluice --namespace sluice --set admin.existingSecret=sluice-admin \
  --header "$header" -o "$tmp/plain.yaml" || fail "rendering $GENERATED failed"
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
adapter_values=()
for f in crds/*.yaml "$CHART"/crds/*.yaml; do
  [ -e "$f" ] && plain+=("$f")
done
for dir in deploy/kubernetes deploy/examples; do
  [ -d "$dir" ] || continue
  while IFS= read -r -d '' f; do
    # *-values.yaml files are Helm values, not manifests: prometheus-adapter's.
    case "$f" in
      *-values.yaml) adapter_values+=("$f") ;;
      *) plain+=("$f") ;;
    esac
  done < <(find "$dir" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
done
[ ${#plain[@]} -gt 0 ] || fail "no CRDs found in crds/ or $CHART/crds/"
# The chart's prometheus-adapter rules with default values: what the values files must hold.
"$PYTHON" "${RENDER[@]}" render "$CHART" --set adapter.enabled=true -o "$tmp/adapter-reference.yaml" \
  || fail "rendering $CHART with adapter.enabled=true failed"

# Arguments: the Kubernetes version, then `--rendered` and the chart's rendered streams,
# `--plain` and the checked-in files, `--adapter-values` and the prometheus-adapter
# values files, `--adapter-reference` and the render they must agree with.
"$PYTHON" - "$KUBE_VERSION" --rendered "${rendered[@]}" --plain "${plain[@]}" \
  --adapter-values "${adapter_values[@]}" --adapter-reference "$tmp/adapter-reference.yaml" \
  <<'PY' || fail "manifest validation failed (see ERROR lines above)"
import base64
import glob
import json
import os
import re
import subprocess
import sys
from collections import Counter

import jsonschema
import kubernetes_validate
import yaml

version, *rest = sys.argv[1:]
lists = {"--rendered": [], "--plain": [], "--adapter-values": [], "--adapter-reference": []}
target = None
for arg in rest:
    if arg in lists:
        target = lists[arg]
    else:
        target.append(arg)
rendered, plain, adapter_values_files = lists["--rendered"], lists["--plain"], lists["--adapter-values"]
adapter_reference = lists["--adapter-reference"][0]

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
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

# Kinds that kubernetes-validate has no schema for, as their CRDs are not part of
# Kubernetes: each is checked against the part of its CRD's schema that Sluice uses, with
# unknown fields refused, and kubernetes-validate is skipped for it.
RELABEL_ACTIONS = [a for name in ("replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                                  "lowercase", "uppercase", "keepequal", "dropequal")
                   for a in (name, {"hashmod": "HashMod", "labelmap": "LabelMap", "labeldrop": "LabelDrop",
                                    "labelkeep": "LabelKeep", "keepequal": "KeepEqual",
                                    "dropequal": "DropEqual"}.get(name, name.capitalize()))]
RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "modulus": {"type": "integer"}, "replacement": {"type": "string"}, "action": {"enum": RELABEL_ACTIONS}}}
PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
OBJECT_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN.pattern},
    "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
SERVICE_MONITOR = {  # monitoring.coreos.com/v1 (Prometheus Operator >= 0.50)
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": OBJECT_META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
            "targetLimit": {"type": "integer", "minimum": 0},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string", "minLength": 1},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": PROM_DURATION, "scrapeTimeout": PROM_DURATION,
                    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                    "followRedirects": {"type": "boolean"}, "enableHttp2": {"type": "boolean"},
                    "params": {"type": "object"}, "tlsConfig": {"type": "object"},
                    "authorization": {"type": "object", "additionalProperties": False, "required": ["credentials"],
                                      "properties": {"type": {"type": "string"},
                                                     "credentials": {"type": "object", "additionalProperties": False,
                                                                     "required": ["name", "key"],
                                                                     "properties": {"name": {"type": "string", "minLength": 1},
                                                                                    "key": {"type": "string", "minLength": 1},
                                                                                    "optional": {"type": "boolean"}}}}},
                    "metricRelabelings": {"type": "array", "items": RELABEL},
                    "relabelings": {"type": "array", "items": RELABEL}}}}}}}}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE = {  # monitoring.coreos.com/v1 (Prometheus Operator >= 0.82)
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": OBJECT_META,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": PROM_DURATION,
                    "labels": STRING_MAP, "limit": {"type": "integer"}, "query_offset": PROM_DURATION,
                    "partial_response_strategy": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
                    "rules": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"], "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": ["string", "integer"]}, "for": PROM_DURATION,
                            "keep_firing_for": {**PROM_DURATION, "minLength": 1},
                            "labels": STRING_MAP, "annotations": STRING_MAP}}}}}}}}}}
STRUCTURAL = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
              ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE}

# prometheus-adapter's configuration (pkg/config/config.go; it is read with
# yaml.UnmarshalStrict, so an unknown field stops the adapter).
ADAPTER_GROUP_RESOURCE = {"type": "object", "additionalProperties": False, "required": ["resource"],
                          "properties": {"group": {"type": "string"}, "resource": {"type": "string", "minLength": 1}}}
ADAPTER_RULE = {"type": "object", "additionalProperties": False,
                "required": ["seriesQuery", "resources", "name", "metricsQuery"], "properties": {
    "seriesQuery": {"type": "string", "minLength": 1},
    "seriesFilters": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                  "properties": {"is": {"type": "string"}, "isNot": {"type": "string"}}}},
    "resources": {"type": "object", "additionalProperties": False, "properties": {
        "template": {"type": "string"}, "namespaced": {"type": "boolean"},
        "overrides": {"type": "object", "additionalProperties": ADAPTER_GROUP_RESOURCE}}},
    "name": {"type": "object", "additionalProperties": False, "required": ["matches", "as"],
             "properties": {"matches": {"type": "string"}, "as": {"type": "string", "minLength": 1}}},
    "metricsQuery": {"type": "string", "minLength": 1}}}
ADAPTER_CONFIG = {"type": "object", "additionalProperties": False, "properties": {
    "rules": {"type": "array", "items": ADAPTER_RULE},
    "externalRules": {"type": "array", "items": ADAPTER_RULE},
    "resourceRules": {"type": "object"}}}
ADAPTER_TEMPLATE_FIELDS = {"Series", "LabelMatchers", "LabelValuesByName", "GroupBy", "GroupBySlice"}
# Target labels that a ServiceMonitor scrape gives every series.
OPERATOR_TARGET_LABELS = {"namespace", "pod", "service", "container", "endpoint", "job", "instance"}
sys.path.insert(0, "scripts")
import promql_names  # noqa: E402

promql_names.self_test()
# The metrics the binaries can export, with their labels: `sluice metrics` lists what the
# proxy and the controller register. Every metric the dashboard, the alerts and the
# adapter rules name must be one of them (None: no SLUICE_BIN, not checked).
EXPORTED = None
if os.environ.get("SLUICE_BIN"):
    out = subprocess.run([os.environ["SLUICE_BIN"], "metrics"], capture_output=True, text=True)
    if out.returncode != 0:
        error("sluice metrics", out.stderr.strip() or f"exit code {out.returncode}")
    else:
        listed = json.loads(out.stdout)
        EXPORTED = {m["name"]: set(m["labels"]) for part in ("proxy", "controller") for m in listed[part]}
        EXPORTED_COUNTS = {part: len(listed[part]) for part in ("proxy", "controller")}
metric_refs = {}  # what names metrics -> the metrics it names


def check_promql(where, expr, source, series=None):
    """Checks that `expr` names metrics the binaries export, with labels they have (or that
    the scrape adds), and counts them under `source` for the summary; returns what it
    names, or None."""
    if EXPORTED is None:
        return None
    problems, used, found = promql_names.check(expr, EXPORTED, OPERATOR_TARGET_LABELS | {"pool_namespace", "pool_name"},
                                               series)
    for p in problems:
        error(where, p)
    metric_refs.setdefault(source, set()).update(used)
    return found


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


DOCS_PAGE = "docs/monitoring.md"
DOC_ANCHORS = {github_anchor(line.lstrip("#")) for line in open(DOCS_PAGE).read().splitlines()
               if re.match(r"^#{1,6} ", line)} if os.path.exists(DOCS_PAGE) else set()


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
    structural = STRUCTURAL.get((doc["apiVersion"], doc["kind"]))
    if structural is not None:
        # Not in kubernetes-validate's schemas (a CRD of another project): skipped there.
        structural_checked[doc["kind"]] += 1
        for e in sorted(jsonschema.Draft7Validator(structural).iter_errors(doc), key=lambda e: list(e.path)):
            error(what, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
        if doc["kind"] == "PrometheusRule" and errors == before:
            check_rules(what, doc)
        for i, ep in enumerate(((doc.get("spec") or {}).get("endpoints") or []) if errors == before else []):
            interval, timeout = seconds(ep.get("interval")), seconds(ep.get("scrapeTimeout"))
            if interval is not None and timeout is not None and timeout > interval:
                error(what, f"endpoints[{i}]: scrapeTimeout {ep['scrapeTimeout']} exceeds interval {ep['interval']} (Prometheus refuses that)")
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
    # The Grafana dashboard's ConfigMap holds its JSON.
    if doc["kind"] == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "dashboard":
        for key, text in (doc.get("data") or {}).items():
            if not key.endswith(".json"):
                error(f"{what} data.{key}", "the Grafana sidecar loads only keys ending in .json")
                continue
            check_dashboard(f"{what} data.{key}", text)
    # The prometheus-adapter rules ConfigMap holds the adapter's config.yaml.
    if doc["kind"] == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "adapter-rules":
        try:
            config = yaml.safe_load((doc.get("data") or {}).get("config.yaml", ""))
        except yaml.YAMLError as e:
            error(f"{what} data.config.yaml", f"not YAML: {e}")
        else:
            check_adapter_config(f"{what} data.config.yaml", config)
    if doc["kind"] == "HorizontalPodAutoscaler":
        hpas.append((what, doc))
    return errors == before


structural_checked = Counter()  # objects checked structurally, by kind


def seconds(duration):
    """A Prometheus duration such as 1m30s in seconds, or None."""
    if not duration:
        return None
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", duration))


hpas = []  # (where, HPA) of every HPA seen
dashboards = []  # (where, uid, panels, queries) of every dashboard checked
alert_rules = {}  # alert name -> number of rules rendered with it


def check_rules(what, doc):
    """Each alerting rule: a name, a severity, a summary, a description that only uses
    labels its expression keeps, a runbook_url to a section of docs/monitoring.md, and an
    expression over metrics the binaries export."""
    for g, group in enumerate(doc["spec"].get("groups") or []):
        for r, rule in enumerate(group.get("rules") or []):
            rw = f"{what} groups[{g}].rules[{r}] {rule.get('alert') or rule.get('record')}"
            if bool(rule.get("alert")) == bool(rule.get("record")):
                error(rw, "a rule has exactly one of alert and record")
                continue
            found = check_promql(f"{rw} expr", str(rule["expr"]), "the alerts")
            if rule.get("record"):
                continue
            name = rule["alert"]
            alert_rules[name] = alert_rules.get(name, 0) + 1
            if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", name):
                error(rw, f"alert name {name!r} is not a valid metric-style name")
            if not (rule.get("labels") or {}).get("severity"):
                error(rw, "no severity label")
            notes = rule.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    error(rw, f"no {key} annotation")
            url = notes.get("runbook_url", "")
            anchor = url.partition("#")[2]
            if not re.match(r"^https?://\S+#\S+$", url):
                error(rw, f"runbook_url {url!r} is not a link to a section")
            elif url.partition("#")[0].endswith(DOCS_PAGE) and anchor not in DOC_ANCHORS:
                error(rw, f"runbook_url points to #{anchor}, which is no heading of {DOCS_PAGE}")
            if found is not None:
                kept = found.grouping | (OPERATOR_TARGET_LABELS if not found.grouping else set())
                for key, text in notes.items():
                    for label in re.findall(r"\$labels\.(\w+)", text):
                        if label not in kept:
                            error(rw, f"annotation {key} uses $labels.{label}, which the expression does not keep ({sorted(kept)})")


PANEL_TYPES = {"row", "timeseries", "stat", "table", "gauge", "bargauge", "heatmap", "text", "piechart"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__dashboard"}


def check_dashboard(where, text):
    """A Grafana dashboard (classic JSON model) for provisioning: parses, has a uid, a data
    source variable that its panels use, distinct panel ids, panels that fit the 24-column
    grid without overlapping, variables that exist, and queries over exported metrics."""
    try:
        dash = json.loads(text)
    except ValueError as e:
        error(where, f"not JSON: {e}")
        return
    for key, kind in (("uid", str), ("title", str), ("panels", list), ("schemaVersion", int), ("templating", dict)):
        if not isinstance(dash.get(key), kind):
            error(where, f"{key} missing or not a {kind.__name__}")
            return
    if not re.match(r"^[a-zA-Z0-9_-]{1,40}$", dash["uid"]):
        error(where, f"uid {dash['uid']!r}: at most 40 letters, digits, - and _")
    if "__inputs" in dash:
        error(where, "__inputs: an exported dashboard's inputs are not filled in by provisioning; use a datasource variable")
    variables = {v.get("name"): v for v in dash["templating"].get("list") or []}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        error(where, "no variable `datasource` of type datasource for prometheus")
    queries = 0
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        query = v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.match(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$", query or "")
        if not m:
            error(where, f"variable {name}: query {query!r} is not label_values(selector, label)")
            continue
        found = check_promql(f"{where} variable {name}", m.group(1), "the dashboard")
        if found and EXPORTED is not None:
            have = set().union(*(EXPORTED.get(s.metric, set()) for s in found.selectors)) | OPERATOR_TARGET_LABELS
            if m.group(2) not in have:
                error(where, f"variable {name}: {m.group(2)} is no label of {sorted(found.metrics)}")
        queries += 1
    ids, boxes = set(), []
    panels = list(dash["panels"])
    for p in list(panels):
        panels += p.get("panels") or []  # collapsed rows hold their panels
    for p in panels:
        pw = f"{where} panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            error(pw, "panel ids must be distinct integers")
        ids.add(p.get("id"))
        if p.get("type") not in PANEL_TYPES:
            error(pw, f"unknown panel type {p.get('type')!r}")
        pos = p.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) and pos[k] >= 0 for k in "hwxy") or pos["x"] + pos["w"] > 24 or not pos["w"]:
            error(pw, f"gridPos {pos} does not fit the 24-column grid")
            continue
        for other, ob in boxes:
            if pos["x"] < ob["x"] + ob["w"] and ob["x"] < pos["x"] + pos["w"] and pos["y"] < ob["y"] + ob["h"] and ob["y"] < pos["y"] + pos["h"]:
                error(pw, f"overlaps panel {other}")
        boxes.append((p.get("id"), pos))
        if p.get("type") in ("row", "text"):
            continue
        if p.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            error(pw, "datasource must be {type: prometheus, uid: ${datasource}}")
        targets = p.get("targets") or []
        if not targets:
            error(pw, "no query")
        if len({t.get("refId") for t in targets}) != len(targets):
            error(pw, "refIds must be distinct")
        for t in targets:
            tw = f"{pw} {t.get('refId')}"
            expr = t.get("expr") or ""
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and var not in GRAFANA_BUILTINS:
                    error(tw, f"uses ${var}, which is no variable of the dashboard")
            check_promql(tw, expr, "the dashboard")
            queries += 1
    dashboards.append((where, dash["uid"], len(panels), queries))


def check_adapter_config(where, config):
    """A prometheus-adapter config: its format, its templates, and metric names the proxy has."""
    before = errors
    for e in sorted(jsonschema.Draft7Validator(ADAPTER_CONFIG).iter_errors(config), key=lambda e: list(e.path)):
        error(where, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
    if errors != before:
        return
    if not config.get("externalRules"):
        error(where, "no externalRules: the per-pool metrics of agent HPAs")
    for kind in ("rules", "externalRules"):
        for i, rule in enumerate(config.get(kind) or []):
            rw = f"{where} {kind}[{i}]"
            query = rule["metricsQuery"]
            fields = re.findall(r"<<\s*\.(\w+)\s*>>", query)
            if query.count("<<") != len(fields) or query.count(">>") != len(fields):
                error(rw, f"metricsQuery {query!r} has a template action that is not <<.Field>>")
            for f in set(fields) - ADAPTER_TEMPLATE_FIELDS:
                error(rw, f"metricsQuery uses <<.{f}>>, which prometheus-adapter does not define")
            if "LabelMatchers" not in fields:
                error(rw, "metricsQuery ignores <<.LabelMatchers>>: the HPA's selector and namespace would be dropped")
            if kind == "rules" and "GroupBy" not in fields:
                error(rw, "metricsQuery of a custom rule must group by <<.GroupBy>> (the object label)")
            # Brackets must balance once the template is filled in.
            filled = re.sub(r"<<[^>]*>>", "x", query)
            depth = []
            for c in filled:
                if c in "([{":
                    depth.append(")]}"["([{".index(c)])
                elif c in ")]}" and (not depth or depth.pop() != c):
                    error(rw, f"metricsQuery {query!r} has unbalanced brackets")
                    break
            else:
                if depth:
                    error(rw, f"metricsQuery {query!r} has unbalanced brackets")
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$", rule["seriesQuery"])
            if not m:
                error(rw, f"seriesQuery {rule['seriesQuery']!r} is not metric{{label!=\"\",...}}")
                continue
            metric, matchers = m.groups()
            check_promql(f"{rw} seriesQuery", rule["seriesQuery"], "the adapter rules")
            check_promql(f"{rw} metricsQuery", query, "the adapter rules", series=metric)
            if not re.search(rule["name"]["matches"], metric):
                error(rw, f"name.matches {rule['name']['matches']!r} does not match the series {metric}")
            labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*!=\s*\"\"", matchers))
            for label in rule["resources"].get("overrides") or {}:
                if label not in labels and label not in OPERATOR_TARGET_LABELS:
                    error(rw, f"resources.overrides maps {label}, which the seriesQuery does not require")
            if kind == "externalRules" and rule["resources"].get("namespaced", True):
                ns_labels = [l for l, gr in (rule["resources"].get("overrides") or {}).items()
                             if gr["resource"] in ("namespace", "namespaces") and not gr.get("group")]
                if not ns_labels:
                    error(rw, "a namespaced external rule must map a label to the namespace resource")
                by = re.search(r"\bby\s*\(([^)]*)\)", query)
                if not by or not set(ns_labels) <= {l.strip() for l in by.group(1).split(",")}:
                    error(rw, f"metricsQuery must keep the namespace label {ns_labels} in its `by (...)`")
            rule_labels.setdefault(kind, set()).update(labels)


rule_labels = {}  # labels the adapter rules expect on the series, by rule kind


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
    if api_controller(spec):
        if spec.get("automountServiceAccountToken") is not True:
            error(what, "the controller watches the Kubernetes API but does not mount its ServiceAccount token")
    elif spec.get("automountServiceAccountToken") is not False:
        error(what, "pod mounts a ServiceAccount token, but only the controller watching the API talks to it")
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
        args = c.get("args") or []
        if not c.get("command") and args[:1] in (["proxy"], ["controller"]):
            # Probes on the admin endpoints: liveness /healthz, readiness /readyz (a table).
            port = "admin" if args[0] == "proxy" else "push"
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != path or get.get("port") != port:
                    error(cw, f"{probe} must GET {path} on port {port}, not {get}")
    seen = Counter((t.get("topologyKey"), t.get("whenUnsatisfiable")) for t in spec.get("topologySpreadConstraints") or [])
    for (key, when), n in seen.items():
        if n > 1:
            error(what, f"{n} topologySpreadConstraints on {key} with {when}: the API server refuses duplicates")


def api_controller(spec):
    """The `sluice controller` container of a pod spec that watches the Kubernetes API (no
    --from-dir), or None."""
    for c in spec.get("containers", []):
        args = c.get("args") or []
        env = {e["name"] for e in c.get("env") or []}
        if not c.get("command") and args[:1] == ["controller"] and flag_value(args, "--from-dir") is None \
                and "SLUICE_FROM_DIR" not in env:
            return c
    return None


def rule_triples(rules):
    """(group, resource, verb) of every PolicyRule."""
    return {(g, r, v) for rule in rules or [] for g in rule.get("apiGroups") or []
            for r in rule.get("resources") or [] for v in rule.get("verbs") or []}


# The rules the controller needs, from the binary: `sluice controller --print-rbac`.
printed_rbac = None
if os.environ.get("SLUICE_BIN"):
    out = subprocess.run([os.environ["SLUICE_BIN"], "controller", "--print-rbac"], capture_output=True, text=True)
    if out.returncode != 0:
        error("sluice controller --print-rbac", out.stderr.strip() or f"exit code {out.returncode}")
    else:
        printed_rbac = {k: rule_triples(v) for k, v in json.loads(out.stdout).items()}
rbac_compared = []  # renders whose controller RBAC matched the printed rules


def check_controller_rbac(where, w, container, by_kind, docs):
    """A controller that watches the API: its identity from the downward API, and RBAC that
    binds exactly the rules the binary prints to its ServiceAccount, where it needs them."""
    cw = f"{describe(w)} container {container['name']}"
    args = container.get("args") or []
    if os.environ.get("SLUICE_BIN"):
        # Every flag the chart renders must be one the binary takes (--print-rbac
        # parses them all, then prints and exits).
        out = subprocess.run([os.environ["SLUICE_BIN"], *args, "--print-rbac"], capture_output=True, text=True)
        if out.returncode != 0:
            error(where, f"{cw}: `sluice {' '.join(args)}` is refused: {out.stderr.strip()}")
    env = {e["name"]: e for e in container.get("env") or []}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        ref = ((env.get(name) or {}).get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") != path:
            error(where, f"{cw}: {name} must come from the downward API ({path}): the Lease identity and namespace")
    ns = w["metadata"].get("namespace")
    sa = pod_spec(w)["spec"].get("serviceAccountName")
    lease = flag_value(args, "--lease-name") or "sluice-controller"
    lease_ns = flag_value(args, "--lease-namespace") or ns
    watched = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--namespace"]
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    if not roles:
        print(f"note {where}: {cw} watches the API, but the release binds it no RBAC (controller.rbac.create=false)")
        return
    if sa not in by_kind.get("ServiceAccount", {}):
        print(f"note {where}: {cw} runs as ServiceAccount {sa}, which the release does not create")

    def bound(binding):
        return any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == ns
                   for s in binding.get("subjects") or [])

    def role_of(binding):
        ref = binding.get("roleRef") or {}
        kind = ref.get("kind")
        key = ref.get("name")
        if kind == "ClusterRole":
            return by_kind.get("ClusterRole", {}).get(key)
        role = by_kind.get("Role", {}).get(key)
        return role if role and role["metadata"].get("namespace") == binding["metadata"].get("namespace") else None

    # Where each bound role applies: None for the whole cluster, else a namespace. (Bindings
    # of one name in several namespaces: from docs, not by_kind.)
    grants = []
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding") or not bound(b):
            continue
        role = role_of(b)
        if role is None:
            error(where, f"{describe(b)} binds {b.get('roleRef')}, which the release does not render")
            continue
        grants.append((None if b["kind"] == "ClusterRoleBinding" else b["metadata"].get("namespace"), role))
    # The TokenReview role (authentication of the push port's callers) is bound on its
    # own, cluster-wide: a TokenReview belongs to no namespace.
    token_review = printed_rbac.get("tokenReviewRole") if printed_rbac else {("authentication.k8s.io", "tokenreviews", "create")}
    reviews = [(s, r) for s, r in grants if r["kind"] == "ClusterRole" and rule_triples(r.get("rules")) == token_review]
    if len(reviews) != 1 or reviews[0][0] is not None:
        error(where, f"{cw}: expected one ClusterRole of exactly {sorted(token_review)} bound cluster-wide to {sa} (push API authentication), found {[(s or '*') for s, _ in reviews]}")
    cluster_roles = {id(r): r for scope, r in grants if r["kind"] == "ClusterRole" and all(r is not t for _, t in reviews)}
    if len(cluster_roles) != 1:
        error(where, f"{cw}: expected one ClusterRole bound to ServiceAccount {sa}, found {len(cluster_roles)}")
        return
    cluster_role = next(iter(cluster_roles.values()))
    scopes = sorted((s or "*") for s, r in grants if r is cluster_role)
    if watched:
        if sorted(watched) != scopes:
            error(where, f"{cw} watches {sorted(watched)}, but its ClusterRole is bound in {scopes}")
    elif scopes != ["*"]:
        error(where, f"{cw} watches every namespace, but its ClusterRole is bound in {scopes}, not cluster-wide")
    def about(role, resource):
        return any(r == resource for _, r, _ in rule_triples(role.get("rules")))

    lease_roles = [r for s, r in grants if r["kind"] == "Role" and s == lease_ns and about(r, "leases")]
    # Consumer Secrets: a Role in each --consumer-namespace (without one, where it watches:
    # then the ClusterRole holds the rules).
    consumer_ns = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--consumer-namespace"]
    consumer_roles = {}
    for s, r in grants:
        if (r["kind"] == "Role" and s in consumer_ns and s not in consumer_roles
                and about(r, "secrets")):
            consumer_roles[s] = r
    for cns in consumer_ns:
        if cns not in consumer_roles:
            error(where, f"{cw} reads consumer Secrets in {cns} (--consumer-namespace), but no Role there lets it")
    # The Secrets backends name: a Role in each --upstream-secret-namespace (without one,
    # where it watches: then the ClusterRole holds the rules).
    upstream_ns = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--upstream-secret-namespace"]
    upstream_roles = {}
    for s, r in grants:
        if r["kind"] == "Role" and s in upstream_ns and s not in upstream_roles and about(r, "secrets"):
            upstream_roles[s] = r
    for uns in upstream_ns:
        if uns not in upstream_roles:
            error(where, f"{cw} reads the Secrets backends name in {uns} (--upstream-secret-namespace), but no Role there lets it")
    if consumer_ns and upstream_ns and about(cluster_role, "secrets"):
        error(where, f"{describe(cluster_role)} grants Secrets, but {cw} reads them only in its consumer and upstream Secret namespaces")
    if len(lease_roles) != 1:
        error(where, f"{cw}: expected one Role in the Lease's namespace {lease_ns} bound to {sa}, found {len(lease_roles)}")
        return
    for rule in lease_roles[0].get("rules") or []:
        names = rule.get("resourceNames")
        if names is not None and names != [lease]:
            error(where, f"{describe(lease_roles[0])} names {names}, not the Lease {lease} (--lease-name)")
    if printed_rbac is None:
        return
    compared = [("ClusterRole", cluster_role, "clusterRole"), ("Lease Role", lease_roles[0], "leaseRole")]
    compared += [("consumer Role", r, "consumerRole") for r in consumer_roles.values()]
    compared += [("upstream Secret Role", r, "upstreamSecretRole") for r in upstream_roles.values()]
    for label, role, key in compared:
        have, want = rule_triples(role.get("rules")), printed_rbac.get(key, set())
        if key == "clusterRole" and not consumer_ns:
            want = want | printed_rbac.get("consumerRole", set())
        if key == "clusterRole" and not upstream_ns:
            want = want | printed_rbac.get("upstreamSecretRole", set())
        for g, r, v in sorted(want - have):
            error(where, f"{describe(role)} lacks {v} on {r} ({g or 'core'}), which `sluice controller --print-rbac` lists: the controller would be refused")
        for g, r, v in sorted(have - want):
            error(where, f"{describe(role)} grants {v} on {r} ({g or 'core'}), which the controller does not use (`sluice controller --print-rbac`)")
    rbac_compared.append(where)


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
        controller = api_controller(spec)
        if controller is not None:
            check_controller_rbac(where, w, controller, by_kind, docs)
        elif sa not in by_kind.get("ServiceAccount", {}):
            print(f"note {where}: {describe(w)} runs as ServiceAccount {sa}, which the release does not create")
        for c in spec["containers"]:
            args = c.get("args") or []
            cw = f"{describe(w)} container {c['name']}"
            env = c.get("env") or []
            for name, n in Counter(e["name"] for e in env).items():
                if n > 1:
                    error(where, f"{cw}: environment variable {name} is set {n} times (the last one wins)")
            if args[:1] == ["proxy"]:
                check_admin_token(where, cw, args, env, by_kind)
            if "--controller" in args:
                url = args[args.index("--controller") + 1]
                # http://NAME:PORT, or https://NAME.NAMESPACE.svc:PORT (the name in the
                # controller's certificate).
                m = re.match(r"^(?:http://([^:/.]+)|https://([^:/.]+)\.[^:/.]+\.svc):(\d+)$", url)
                name, port = ((m.group(1) or m.group(2)), m.group(3)) if m else (None, None)
                svc = by_kind.get("Service", {}).get(name) if name else None
                if not svc or not any(str(p["port"]) == port for p in svc["spec"]["ports"]):
                    error(where, f"{describe(w)}: --controller {url} names no Service port of the release")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        check_service_monitor(where, sm, by_kind)
        check_dropped(where, sm, by_kind)
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_kind.get(ref.get("kind"), {}).get(ref.get("name"))
        if target is None:
            error(where, f"HPA {hpa['metadata']['name']} scales {ref}, which the release does not render")
        elif "replicas" in target["spec"]:
            error(where, f"{describe(target)} sets replicas although HPA {hpa['metadata']['name']} scales it: every upgrade would reset them")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        selector = pdb["spec"].get("selector", {}).get("matchLabels") or {}
        if not any(all((pod_spec(w)["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items()) for w in workloads):
            error(where, f"PodDisruptionBudget {pdb['metadata']['name']} selects no pods of the release")
    dupes = [k for k, n in Counter((d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs).items() if n > 1]
    for kind, ns, name in dupes:
        error(where, f"{kind} {ns}/{name} is rendered more than once")


def flag_value(args, flag):
    """The value of --flag VALUE or --flag=VALUE in args, or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def secret_key(where, what, ref, by_kind):
    """Checks that a {name, key} reference names a key of a Secret of the release (or notes
    that the Secret comes from outside); returns the decoded value, or None."""
    secret = by_kind.get("Secret", {}).get(ref.get("name"))
    if secret is None:
        print(f"note {where}: {what} reads Secret {ref.get('name')} (key {ref.get('key')}), which the release does not create")
        return None
    data = secret.get("data") or {}
    if ref.get("key") not in data:
        error(where, f"{what}: Secret {ref.get('name')} has no key {ref.get('key')}")
        return None
    try:
        return base64.b64decode(data[ref["key"]], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        error(where, f"{what}: Secret {ref.get('name')} key {ref.get('key')} is not base64 of UTF-8 text")
        return None


def check_admin_token(where, what, args, env, by_kind):
    """`sluice proxy` refuses to start when --admin is not loopback and it has no token."""
    admin = flag_value(args, "--admin") or next((e.get("value") for e in env if e["name"] == "SLUICE_ADMIN_LISTEN"), None) \
        or "127.0.0.1:9901"
    host = admin.rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
        return
    if flag_value(args, "--admin-token"):
        return
    token = next((e for e in env if e["name"] == "SLUICE_ADMIN_TOKEN"), None)
    if token is None:
        error(where, f"{what}: --admin {admin} is not loopback but no SLUICE_ADMIN_TOKEN is set: the proxy would refuse to start")
        return
    ref = (token.get("valueFrom") or {}).get("secretKeyRef")
    if ref is None:
        error(where, f"{what}: SLUICE_ADMIN_TOKEN must come from a Secret (valueFrom.secretKeyRef), not a literal")
        return
    if ref.get("optional"):
        error(where, f"{what}: SLUICE_ADMIN_TOKEN must not be optional: without it the proxy refuses to start")
    value = secret_key(where, f"{what} SLUICE_ADMIN_TOKEN", ref, by_kind)
    if value is not None and (len(value) < 16 or not re.match(r"^[!-~]+$", value)):
        error(where, f"{what}: the admin token in Secret {ref['name']} is shorter than 16 characters or holds spaces")
    admin_refs.setdefault(where, set()).add((ref.get("name"), ref.get("key")))


admin_refs = {}  # the admin token Secret keys that the proxies of each render read


def check_service_monitor(where, sm, by_kind):
    """A ServiceMonitor must select Services of the release, by port names they have, and
    scrape the proxies with the proxies' own admin token."""
    what = f"ServiceMonitor {sm['metadata']['name']}"
    selector = sm["spec"]["selector"]
    services = []
    for svc in by_kind.get("Service", {}).values():
        labels = svc["metadata"].get("labels") or {}
        ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
        for expr in selector.get("matchExpressions") or []:
            has, value = expr["key"] in labels, labels.get(expr["key"])
            ok = ok and {"In": has and value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
                         "Exists": has, "DoesNotExist": not has}[expr["operator"]]
        if ok:
            services.append(svc)
    if not services:
        error(where, f"{what} selects no Service of the release")
        return
    proxies = [svc for svc in services if (svc["spec"].get("selector") or {}).get("app.kubernetes.io/component") == "proxy"]
    for i, ep in enumerate(sm["spec"]["endpoints"]):
        targets = [svc for svc in services if any(p.get("name") == ep["port"] for p in svc["spec"].get("ports", []))]
        if not targets:
            error(where, f"{what} endpoints[{i}]: no selected Service has a port named {ep['port']}")
        # Two selected Services in front of the same pods would scrape each pod twice
        # (and double every sum over them).
        seen_pods = {}
        for svc in targets:
            pods = tuple(sorted((svc["spec"].get("selector") or {}).items()))
            if pods in seen_pods:
                error(where, f"{what} endpoints[{i}]: Services {seen_pods[pods]} and {svc['metadata']['name']} select the same pods: each would be scraped twice")
            seen_pods[pods] = svc["metadata"]["name"]
        if any(svc in proxies for svc in targets):
            creds = (ep.get("authorization") or {}).get("credentials")
            if not creds:
                error(where, f"{what} endpoints[{i}] scrapes the proxies' admin port without the admin token (401)")
                continue
            secret_key(where, f"{what} endpoints[{i}] authorization", creds, by_kind)
            if (creds.get("name"), creds.get("key")) not in admin_refs.get(where, set()):
                error(where, f"{what} endpoints[{i}]: credentials {creds} are not the proxies' SLUICE_ADMIN_TOKEN {admin_refs.get(where)}")
            made = {r.get("targetLabel") for r in ep.get("metricRelabelings") or []}
            relabeled.setdefault(where, set()).update(made)


relabeled = {}  # labels the ServiceMonitor's metricRelabelings make, by render


def check_dropped(where, sm, by_kind):
    """The ServiceMonitor's metricRelabelings must not drop a series that the release's
    alerts read: an alert on a dropped series is silent, or fires for the wrong reason."""
    drops = [re.compile(r.get("regex", "(.*)")) for ep in sm["spec"]["endpoints"] for r in ep.get("metricRelabelings") or []
             if r.get("sourceLabels") == ["__name__"] and r.get("action", "replace").lower() == "drop"]
    for rule_doc in by_kind.get("PrometheusRule", {}).values():
        for group in rule_doc["spec"].get("groups") or []:
            for rule in group.get("rules") or []:
                try:
                    series = promql_names.names(str(rule["expr"])).metrics
                except promql_names.PromQLError:
                    continue  # reported by check_rules
                for name in sorted(series):
                    if any(d.fullmatch(name) for d in drops):
                        error(where, f"ServiceMonitor {sm['metadata']['name']} drops {name}, which alert "
                                     f"{rule.get('alert')} reads: keep it (serviceMonitor.metricRelabelings)")


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

if printed_rbac is None:
    print("skip set SLUICE_BIN to compare the controller's ClusterRole and Role with `sluice controller --print-rbac`")
elif rbac_compared:
    print(f"ok   controller RBAC of {len(rbac_compared)} render(s) is exactly `sluice controller --print-rbac` "
          f"({len(printed_rbac.get('clusterRole', ()))} cluster-wide, {len(printed_rbac.get('leaseRole', ()))} on the Lease, "
          f"{len(printed_rbac.get('tokenReviewRole', ()))} for TokenReviews, {len(printed_rbac.get('consumerRole', ()))} in each consumer namespace, "
          f"{len(printed_rbac.get('upstreamSecretRole', ()))} in each upstream Secret namespace)")
else:
    error("controller RBAC", "no render has a controller watching the API with RBAC: nothing was compared")

if not dashboards:
    error("dashboard", "no render has the Grafana dashboard (monitoring.dashboard.enabled): nothing was checked")
for where, uid, n, q in dashboards:
    print(f"ok   {where}: dashboard {uid}, {n} panels, {q} queries")
if not alert_rules:
    error("alerts", "no render has the PrometheusRule (monitoring.alerts.enabled): nothing was checked")
else:
    print(f"ok   alerts, each with a severity, a summary, a description and a runbook section in {DOCS_PAGE}: "
          f"{', '.join(sorted(alert_rules))}")
for kind, n in sorted(structural_checked.items()):
    print(f"ok   {n} {kind} object(s) checked structurally, against the fields of its CRD that the chart uses (kubernetes-validate has no {kind} schema)")

# The prometheus-adapter rules: the chart's (with default values), the values files that
# must repeat them, the ServiceMonitor relabelings that make their labels, and the HPAs
# that use their metrics.
before = errors
reference = [d for d in load(adapter_reference) if (d.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/component") == "adapter-rules"]
if len(reference) != 1:
    error(adapter_reference, "adapter.enabled=true renders no adapter rules ConfigMap")
    reference_config = {}
else:
    reference_config = yaml.safe_load(reference[0]["data"]["config.yaml"])
    check_adapter_config("adapter.enabled=true: config.yaml", reference_config)
custom_names = {r["name"]["as"] for r in reference_config.get("rules") or []}
external_names = {r["name"]["as"] for r in reference_config.get("externalRules") or []}
for path in adapter_values_files:
    values = (load(path) or [{}])[0]
    rules = values.get("rules") or {}
    check_adapter_config(path, {"rules": rules.get("custom") or [], "externalRules": rules.get("external") or []})
    if rules.get("default") is not False:
        error(path, "rules.default must be false: the adapter chart's default rules also publish sluice_* series")
    for theirs, ours in (("custom", "rules"), ("external", "externalRules")):
        if (rules.get(theirs) or []) != (reference_config.get(ours) or []):
            error(path, f"rules.{theirs} differs from the chart's {ours} (templates/_helpers.tpl, sluice.adapterRules)")
needed = set().union(*rule_labels.values()) - OPERATOR_TARGET_LABELS if rule_labels else set()
for where, made in sorted(relabeled.items()):
    if needed - made:
        error(where, f"the ServiceMonitor's metricRelabelings do not make {sorted(needed - made)}, which the adapter rules select on")
for what, hpa in hpas:
    for i, metric in enumerate(hpa["spec"].get("metrics") or []):
        mw = f"{what} metrics[{i}]"
        source = metric.get({"External": "external", "Pods": "pods", "Object": "object"}.get(metric.get("type"), ""), {})
        ident = source.get("metric") or {}
        names = external_names if metric.get("type") == "External" else custom_names
        if ident and ident.get("name", "").startswith("sluice_") and ident["name"] not in names:
            error(mw, f"{metric['type']} metric {ident['name']} is not served by the chart's adapter rules ({sorted(names)})")
        selector = ident.get("selector") or {}
        pairs = list((selector.get("matchLabels") or {}).items()) + [
            (e.get("key"), v) for e in selector.get("matchExpressions") or [] for v in e.get("values") or []]
        for key, value in pairs:
            # The HPA turns the selector into a labels.Selector, which refuses these.
            if not (LABEL_KEY.match(key or "") and len(key.split("/")[-1]) <= 63):
                error(mw, f"selector key {key!r} is not a valid label key")
            if not (isinstance(value, str) and len(value) <= 63 and LABEL_VALUE.match(value)):
                error(mw, f"selector value {value!r} is not a valid label value (a pool's \"namespace/name\" is not: select pool_name)")
        if ident.get("name") in external_names and metric.get("type") == "External" and \
                not {"pool_name", "pool"} & {k for k, _ in pairs}:
            print(f"note {mw}: {ident['name']} without a pool_name selector sums every pool of the namespace")
if errors == before:
    print(f"ok   prometheus-adapter rules: {len(custom_names)} custom ({', '.join(sorted(custom_names))}), "
          f"{len(external_names)} external ({', '.join(sorted(external_names))}); "
          f"{len(adapter_values_files)} values file(s) agree; {len(relabeled)} ServiceMonitor(s) make "
          f"{', '.join(sorted(needed)) or 'no extra labels'}; {len(hpas)} HPA(s) use served metrics")

if EXPORTED is None:
    print("skip set SLUICE_BIN to check the metrics the dashboard, the alerts and the adapter rules name against `sluice metrics`")
else:
    named = set().union(*metric_refs.values()) if metric_refs else set()
    sources = [f"{k} ({len(v)})" for k, v in sorted(metric_refs.items())]
    print(f"ok   every metric named by {' and '.join([', '.join(sources[:-1]), sources[-1]] if len(sources) > 1 else sources)} "
          f"is one the binaries export, with the labels used ({len(named)} of {EXPORTED_COUNTS['proxy']} proxy and "
          f"{EXPORTED_COUNTS['controller']} controller metrics; `sluice metrics`)")

sys.exit(1 if errors else 0)
PY

step "compile the rendered routes with sluice"
if [ -n "${SLUICE_BIN:-}" ]; then
  [ -x "$SLUICE_BIN" ] || fail "SLUICE_BIN=$SLUICE_BIN is not an executable"
  for out in "${rendered[@]}"; do
    label=$(basename "$out" .yaml)
    dir="$tmp/routes-$label"
    # Write the routes ConfigMap's files as the pods see them in /etc/sluice/routes, and
    # the Sluice objects the release creates (the demo pools with controller.source=kubernetes).
    "$PYTHON" - "$out" "$dir" <<'PY' || fail "cannot extract the routes of $label"
import os, sys, yaml
src, dst = sys.argv[1:]
os.makedirs(dst)
objects = []
for doc in yaml.safe_load_all(open(src)):
    if doc and doc.get("kind") == "ConfigMap" and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "routes":
        for key, text in (doc.get("data") or {}).items():
            with open(os.path.join(dst, key), "w") as f:
                f.write(text)
    elif doc and str(doc.get("apiVersion", "")).startswith("sluice.dev/"):
        objects.append(doc)
if objects:
    with open(os.path.join(dst, "release-objects.yaml"), "w") as f:
        yaml.safe_dump_all(objects, f)
PY
    if [ -z "$(ls -A "$dir")" ]; then
      echo "skip $label: no routes ConfigMap (existingRoutesConfigMap) and no Sluice objects"
      continue
    fi
    if ! diags=$("$SLUICE_BIN" compile -f "$dir" 2>&1 >/dev/null); then
      echo "$diags" >&2
      fail "the routes rendered with values $label do not compile"
    fi
    echo "ok   $label: routes compile${diags:+ (with warnings: $diags)}"
  done
  # The flags and SLUICE_* variables the chart gives the binaries must be ones they know
  # (`--help`): sluice proxy and controller, and sluice-demo-agent when it is beside sluice.
  "$PYTHON" - "$SLUICE_BIN" "${rendered[@]}" <<'PY' || fail "the chart gives the binaries flags or variables they do not know (see ERROR lines above)"
import os, re, subprocess, sys, yaml
sluice, *paths = sys.argv[1:]
demo_agent = os.path.join(os.path.dirname(sluice), "sluice-demo-agent")
helps, errors, checked = {}, 0, set()
for path in paths:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            args = c.get("args") or []
            if c.get("command") == ["sluice-demo-agent"]:
                if not os.access(demo_agent, os.X_OK):
                    continue
                command = (demo_agent,)
            elif not c.get("command") and args[:1] in (["proxy"], ["controller"]):
                command = (sluice, args[0])
                args = args[1:]
            else:
                continue
            if command not in helps:
                helps[command] = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout
            flags = set(re.findall(r"--[a-z0-9-]+", helps[command]))
            env = set(re.findall(r"\[env: ([A-Z0-9_]+)", helps[command]))
            what = f"{os.path.basename(path)}: {doc['kind']} {doc['metadata']['name']} container {c['name']}"
            for a in args:
                if a.startswith("--") and a.split("=", 1)[0] not in flags:
                    errors += 1
                    print(f"ERROR {what}: {' '.join(os.path.basename(p) for p in command)} has no flag {a.split('=', 1)[0]}")
            for e in c.get("env") or []:
                if e["name"].startswith("SLUICE_") and e["name"] not in env:
                    errors += 1
                    print(f"ERROR {what}: {' '.join(os.path.basename(p) for p in command)} reads no variable {e['name']}")
            checked.add(" ".join(os.path.basename(p) for p in command))
sys.exit(1) if errors else print(f"ok   flags and SLUICE_* variables known to: {', '.join(sorted(checked))}")
PY
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
reject "routes with controller.source=kubernetes" --set mode=controller \
  --set-json 'routes=[{"apiVersion":"sluice.dev/v1alpha1","kind":"AgentPool","metadata":{"name":"a"},"spec":{}}]'
reject "existingRoutesConfigMap with controller.source=kubernetes" --set mode=controller --set existingRoutesConfigMap=mine
reject "unknown controller.source" --set mode=controller --set controller.source=api
reject "unknown controller.source, no schema (template check)" --set mode=controller --set controller.source=api --without-schema
reject "controller.leaseDuration under 3s" --set controller.leaseDuration=2s
reject "controller.leaseDuration not whole seconds" --set controller.leaseDuration=1500ms
reject "controller.namespaces entry not a namespace name" --set-json 'controller.namespaces=["Agents"]'
reject "controller.endpointSliceLabels entry not a label" --set-json 'controller.endpointSliceLabels=["a b"]'
reject "controller ServiceAccount neither created nor named" --set mode=controller --set controller.serviceAccount.create=false
reject "controller ServiceAccount neither created nor named, no schema (template check)" --set mode=controller \
  --set controller.serviceAccount.create=false --without-schema
reject "admin.token shorter than 16 characters" --set admin.token=short-token
reject "admin.token shorter than 16 characters, no schema (template check)" --set admin.token=short-token --without-schema
reject "admin.token with spaces" --set-json 'admin.token="a token with some spaces"'
reject "admin.token and admin.existingSecret" --set admin.token=0123456789abcdef0123 --set admin.existingSecret=mine
reject "admin.existingSecret not a Secret name" --set admin.existingSecret=My_Secret
reject "trusted proxy not a CIDR" --set-json 'proxy.trustedProxies=["10.0.0.0/8,192.168.0.0/16"]'
reject "trusted proxy a host name" --set-json 'proxy.trustedProxies=["ingress.example.com"]'
reject "capability header not a header name" --set-json 'proxy.capabilityHeader="x-agent capability:"'
reject "serviceMonitor without the ServiceMonitor CRD in the cluster" --set serviceMonitor.enabled=true
reject "serviceMonitor without the admin Service port" "${OPERATOR_APIS[@]}" --set serviceMonitor.enabled=true --set service.exposeAdmin=false
reject "serviceMonitor relabeling in snake_case" "${OPERATOR_APIS[@]}" --set serviceMonitor.enabled=true \
  --set-json 'serviceMonitor.metricRelabelings=[{"source_labels":["pool"],"action":"drop"}]'
reject "serviceMonitor bad interval" "${OPERATOR_APIS[@]}" --set serviceMonitor.enabled=true --set serviceMonitor.interval=often
reject "adapter bad rate window" --set adapter.enabled=true --set-json 'adapter.rateWindow="2 minutes"'
reject "adapter namespace not a namespace name" --set adapter.enabled=true --set adapter.namespace=Monitoring
reject "alerts without the PrometheusRule CRD in the cluster" --set monitoring.alerts.enabled=true
reject "alerts: errorRate.ratio above 1" "${OPERATOR_APIS[@]}" --set monitoring.alerts.enabled=true \
  --set monitoring.alerts.errorRate.ratio=5
reject "alerts: a latency target of a pool not named namespace/name" "${OPERATOR_APIS[@]}" --set monitoring.alerts.enabled=true \
  --set-json 'monitoring.alerts.latency.p99SecondsByPool={"classify":0.5}'
reject "alerts: seriesSelector with braces" "${OPERATOR_APIS[@]}" --set monitoring.alerts.enabled=true \
  --set-json 'monitoring.alerts.seriesSelector="{namespace=\"gw\"}"'
reject "alerts: bad duration" "${OPERATOR_APIS[@]}" --set monitoring.alerts.enabled=true --set monitoring.alerts.latency.for=long
reject "dashboard namespace not a namespace name" --set monitoring.dashboard.enabled=true --set monitoring.dashboard.namespace=Grafana
reject "one proxy with the PodDisruptionBudget (no drain could evict it)" --set proxy.replicas=1
reject "one proxy with the PodDisruptionBudget, no schema (template check)" --set proxy.replicas=1 --without-schema
reject "PodDisruptionBudget maxUnavailable 0" --set proxy.podDisruptionBudget.maxUnavailable=0
reject "autoscaling minReplicas 1 with the PodDisruptionBudget" --set proxy.autoscaling.enabled=true --set proxy.autoscaling.minReplicas=1
reject "autoscaling maxReplicas under minReplicas" --set proxy.autoscaling.enabled=true --set proxy.autoscaling.maxReplicas=1
reject "autoscaling without a target" --set proxy.autoscaling.enabled=true \
  --set proxy.autoscaling.targetCPUUtilizationPercentage=0 --set proxy.autoscaling.targetInFlightPerPod=0
reject "terminationGracePeriodSeconds shorter than the drain" --set proxy.terminationGracePeriodSeconds=30
reject "topologySpread whenUnsatisfiable unknown" --set proxy.topologySpread.whenUnsatisfiable=Never
reject "redis.url and redis.existingSecret" --set redis.url=redis://r:6379 --set redis.existingSecret=mine
reject "redis.url not a redis URL" --set redis.url=r:6379
reject "redis.url over TLS (the proxy has no TLS to Redis)" --set redis.url=rediss://r:6380
reject "priorityClass.value above the user range" --set priorityClass.value=2000000000
reject "proxy TLS without Secrets" --set proxy.tls.enabled=true
reject "proxy TLS without Secrets, no schema (template check)" --set proxy.tls.enabled=true --without-schema
reject "proxy with neither cleartext nor TLS" --set proxy.tls.plaintext=false
reject "proxy TLS Secret not a Secret name" --set proxy.tls.enabled=true --set-json 'proxy.tls.secrets=["My_Cert"]'
reject "push token Secret with source kubernetes" --set mode=controller --set controller.auth.existingSecret=mine
reject "projected token lifetime under 10 minutes" --set controller.auth.tokenExpirationSeconds=60

step "generated CRDs in sync"
for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/crds/$(basename "$f")" || fail "$CHART/crds/$(basename "$f") differs from $f: regenerate both with \`sluice crds --out crds --out $CHART/crds\`"
done
for f in "$CHART"/crds/*.yaml; do
  [ -e "crds/$(basename "$f")" ] || fail "$f has no counterpart in crds/"
done
echo "ok   crds/ and $CHART/crds/ hold the same $(find crds -name '*.yaml' | wc -l) files"

printf '\nmanifests OK in %ss\n' "$((SECONDS - started))"
