#!/usr/bin/env python3
"""Lint and render a Helm chart offline with the Helm v4 SDK (PyPI: helm-python-sdk).

No helm binary and no cluster: helm_python binds Helm's Go SDK through a shared library
shipped in its wheel. Used by scripts/validate-manifests.sh; also handy by hand:

    .venv/bin/python scripts/render_chart.py render charts/sluice --set mode=controller
    .venv/bin/python scripts/render_chart.py lint charts/sluice -f my-values.yaml

Values are merged like helm's: chart defaults, then each -f file, then each --set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `over` into `base` (maps merge, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()))
    for expression in args.set:
        values = merge(values, helm.parse_set_string(expression))
    for expression in args.set_json:
        values = merge(values, helm.parse_set_json(expression))
    return values


def lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart,
        user_values(args),
        strict=args.strict,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    failed = False
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        # With --strict, warnings fail too, as with `helm lint --strict`.
        if severity >= 3 or (args.strict and severity == 2):
            failed = True
        print(f"[{SEVERITY.get(severity, severity)}] {message.get('path')}: {message.get('error')}".rstrip())
    for error in report.get("errors") or []:
        failed = True
        print(f"[ERROR] {error}".rstrip())
    charts = report.get("total_charts_linted", 0)
    if charts < 1:
        print(f"[ERROR] no chart linted at {args.chart}")
        failed = True
    print(f"{charts} chart(s) linted, {'failed' if failed else 'no failures'}")
    return 1 if failed else 0


def render(args: argparse.Namespace) -> int:
    values = user_values(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            chart_path = args.chart
            if args.without_schema:
                # Like --skip-schema-validation, which Chart.render lacks: tests the
                # templates' own checks (lint cannot: in lint mode `fail` only logs).
                chart_path = os.path.join(tmp, os.path.basename(os.path.abspath(args.chart)))
                shutil.copytree(args.chart, chart_path)
                os.remove(os.path.join(chart_path, "values.schema.json"))
            with helm.Chart.load(chart_path) as chart:
                if args.api_versions:
                    # Like `helm template --api-versions`, which Chart.render lacks: the
                    # SDK's render call takes them (helm-python-sdk is pinned).
                    from helm_python import _native
                    opts = {"name": args.name, "namespace": args.namespace, "is_install": True,
                            "api_versions": args.api_versions}
                    manifests = json.loads(_native.call_string(
                        "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
                else:
                    manifests = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        if args.expect_failure:
            print(f"failed as expected: {str(e).strip()}")
            return 0
        print(f"render failed: {str(e).strip()}", file=sys.stderr)
        return 1
    if args.expect_failure:
        print(f"rendered, but values {values} were expected to fail", file=sys.stderr)
        return 1
    # The multi-document stream `helm template` prints (NOTES.txt excluded).
    out = []
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        out.append(f"---\n# Source: {path}\n{text.strip()}\n")
    stream = "".join(out)
    if args.header:
        stream = "".join(f"# {line}".rstrip() + "\n" for line in args.header.splitlines()) + stream
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(stream)
    else:
        sys.stdout.write(stream)
    if args.notes:
        notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")
        with open(args.notes, "w", encoding="utf-8") as f:
            f.write(notes)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("lint", "lint the chart like `helm lint`"), ("render", "render like `helm template`")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("chart", help="chart directory or .tgz")
        p.add_argument("-f", "--values", action="append", default=[], help="a values YAML file (repeatable)")
        p.add_argument("--set", action="append", default=[], help="a --set expression (repeatable)")
        p.add_argument("--set-json", action="append", default=[], help="a --set-json expression (repeatable)")
        p.add_argument("--namespace", default="sluice")
    sub.choices["lint"].add_argument("--strict", action="store_true", help="warnings fail too")
    sub.choices["lint"].add_argument("--kube-version", default=None, help="e.g. v1.33.0")
    r = sub.choices["render"]
    r.add_argument("--name", default="sluice", help="release name")
    r.add_argument("-o", "--output", help="write the manifests here instead of stdout")
    r.add_argument("--notes", help="write the rendered NOTES.txt here")
    r.add_argument("--header", help="comment lines to put at the top of the output")
    r.add_argument("--api-versions", action="append", default=[], metavar="GROUP/VERSION[/KIND]",
                   help="an API the cluster serves, for .Capabilities.APIVersions (repeatable), "
                        "e.g. monitoring.coreos.com/v1/PrometheusRule")
    r.add_argument("--without-schema", action="store_true",
                   help="render without values.schema.json (test the templates' own checks)")
    r.add_argument("--expect-failure", action="store_true",
                   help="succeed only if the values are rejected (schema or template `fail`)")
    args = parser.parse_args()
    return lint(args) if args.command == "lint" else render(args)


if __name__ == "__main__":
    sys.exit(main())
