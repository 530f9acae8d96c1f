#!/usr/bin/env python3
"""Dry-checks, offline, the cluster commands that Sluice tells its users to run.

    .venv/bin/python scripts/check_commands.py [--notes NOTES.txt RENDERED.yaml NAMESPACE]...

Reads the `kubectl`, `helm`, `curl`, `make`, `bash` and `python` commands of the shell
blocks of README.md, charts/sluice/README.md, deploy/examples/*/README.md and docs/*.md,
of scripts/e2e-cluster.sh, and of each rendered NOTES.txt given (with the objects of the
same render and its namespace), and checks what can be checked without a cluster, as
kubectl and helm would:

* every file or folder given to `-f` exists (commands run from the repository root),
  and its objects parse; `-f -` reads the heredoc, or the `sed 's/A/B/' FILE` (or the
  shell function around one) piped into it;
* kubectl refuses `-n NS` with an object whose metadata.namespace is another: so must we;
* Sluice objects and CRDs are applied with `--server-side` (strict field validation, no
  last-applied annotation), as the READMEs ask;
* `helm install|upgrade` of charts/sluice renders with the command's values, release name
  and namespace, on a cluster with the Prometheus Operator's PrometheusRule and
  ServiceMonitor CRDs (which the chart's alerts and ServiceMonitor need); a chart from a repository needs a `helm repo add` of it first, and
  its `-f` files must exist; a `--set-file KEY=FILE` reads FILE, and a `my-*` FILE that
  is not in the repository stands for the user's own (a PEM placeholder is rendered);
* in NOTES.txt, every object named by `kubectl get|describe|rollout|port-forward` in the
  release namespace is one the same render creates (or an existing Secret of the values);
  so in a page, after its `helm install|upgrade` of charts/sluice: one that render creates
  or an earlier command of the page applied;
* a `curl $SLUICE/PATH` after such a render goes to a path that a pool of the render, or
  an AgentPool the page applied, matches (whole path segments);
* `make` names targets of the Makefile; `bash FILE` and `python FILE` name files that exist.

Exits 1 with one ERROR line per problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "charts/sluice/README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("deploy/examples/*/README.md")),
        *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]
SCRIPTS = ["scripts/e2e-cluster.sh"]
# The values of shell variables the commands use.
SHELL_VARS = {"ns": "sluice-e2e-1", "$": "1"}
KINDS = {"deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
         "svc": "Service", "service": "Service", "services": "Service",
         "statefulset": "StatefulSet", "sts": "StatefulSet", "secret": "Secret", "secrets": "Secret",
         "configmap": "ConfigMap", "cm": "ConfigMap", "hpa": "HorizontalPodAutoscaler",
         "pdb": "PodDisruptionBudget", "sa": "ServiceAccount", "serviceaccount": "ServiceAccount",
         "agentpool": "AgentPool", "agentpools": "AgentPool", "ap": "AgentPool",
         "ratepolicy": "RatePolicy", "ratepolicies": "RatePolicy", "rp": "RatePolicy"}

errors = 0
checked = 0


def error(where: str, message: str) -> None:
    global errors
    errors += 1
    print(f"ERROR {where}: {message}")


class Render:
    """What one render of the chart creates in its namespace, and what a page applied since."""

    def __init__(self, rendered: str, namespace: str):
        docs = [d for d in yaml.safe_load_all(open(rendered)) if isinstance(d, dict)]
        self.namespace = namespace
        self.objects = {(d["kind"], d["metadata"]["name"]) for d in docs
                        if (d.get("metadata") or {}).get("namespace") == namespace}
        # Secrets the values name instead of creating them (admin.existingSecret).
        self.external = {("Secret", ref["name"]) for d in docs if d.get("kind") == "Deployment"
                         for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env") or []
                         for ref in [((e.get("valueFrom") or {}).get("secretKeyRef") or {})] if ref.get("name")}
        self.demo_prefixes = {m.get("pathPrefix") for d in docs if d.get("kind") == "AgentPool"
                              for m in (d.get("spec") or {}).get("matches") or []}
        for d in docs:
            if d.get("kind") == "ConfigMap" and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "routes":
                for text in (d.get("data") or {}).values():
                    self.demo_prefixes |= {m.get("pathPrefix") for r in yaml.safe_load_all(text) if isinstance(r, dict)
                                           and r.get("kind") == "AgentPool" for m in (r.get("spec") or {}).get("matches") or []}
        # Path prefixes served: the release's pools, and AgentPools applied since.
        self.served = set(self.demo_prefixes)


class Command:
    """One shell command, with where it comes from and what it reads on stdin."""

    def __init__(self, where: str, words: list[str], stdin: str | None, piped_from: list[str] | None):
        self.where, self.words, self.stdin, self.piped_from = where, words, stdin, piped_from


def expand(text: str) -> str:
    return re.sub(r"\$\{?(\w+|\$)\}?", lambda m: SHELL_VARS.get(m.group(1), m.group(0)), text)


def split_pipeline(line: str) -> list[list[str]]:
    """The commands of a pipeline, as words (comments dropped)."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
    except ValueError:
        return []
    parts, current = [], []
    for t in tokens:
        if t in ("|", "||", "&&", ";", "&"):
            parts.append(current)
            current = []
        else:
            current.append(t)
    parts.append(current)
    return [p for p in parts if p]


def commands_of(where: str, lines: list[str], functions: dict[str, list[str]], first: int = 1) -> list[Command]:
    """Joins continuation lines, reads heredocs, and returns the kubectl/helm commands."""
    out = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        start = i + 1
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        heredoc = None
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            body = []
            while i < len(lines) and lines[i].strip() != m.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            heredoc = expand("\n".join(body))
            line = line[:m.start()] + line[m.end():]
        line = expand(line.strip())
        # `if kubectl ...; then` and friends: the command is what follows the keyword.
        line = re.sub(r"^(if|while|until|then|do|!)\s+", "", line)
        m = re.match(r"^(\w+)\(\)\s*\{(.*)\}$", line)
        if m:
            functions[m.group(1)] = split_pipeline(m.group(2).strip().rstrip(";"))[0]
            continue
        pipeline = split_pipeline(line)
        for n, words in enumerate(pipeline):
            words = [w for w in words if w not in ("if", "then", "!")]
            # `VAR=value command ...`: the command.
            while words and re.match(r"^\w+=", words[0]):
                words = words[1:]
            if words and (words[0] in ("kubectl", "helm", "curl", "make", "bash") or words[0].endswith(("/python", "python3"))):
                upstream = pipeline[n - 1] if n else None
                if upstream and upstream[0] in functions:
                    upstream = functions[upstream[0]]
                out.append(Command(f"{where}:{first + start - 1}", words, heredoc, upstream))
    return out


def markdown_blocks(path: str) -> list[tuple[int, list[str]]]:
    blocks, current, first = [], None, 0
    for n, line in enumerate((ROOT / path).read_text().splitlines(), 1):
        if current is None and re.match(r"^\s*```(sh|bash|shell|console)\s*$", line):
            current, first = [], n + 1
        elif current is not None and line.strip() == "```":
            blocks.append((first, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def flag_values(words: list[str], *names: str) -> list[str]:
    values = []
    for i, w in enumerate(words):
        for name in names:
            if w == name and i + 1 < len(words):
                values.append(words[i + 1])
            elif name.startswith("--") and w.startswith(name + "="):
                values.append(w[len(name) + 1:])
    return values


def load_docs(where: str, text: str, what: str) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        error(where, f"{what} is not YAML: {e}")
        return []


def files_of(where: str, target: str) -> list[Path] | None:
    path = ROOT / target
    if not path.exists():
        error(where, f"-f {target}: no such file or folder (commands run from the repository root)")
        return None
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    return [path]


def stdin_docs(cmd: Command) -> list[dict] | None:
    if cmd.stdin is not None:
        return load_docs(cmd.where, cmd.stdin, "the heredoc")
    up = cmd.piped_from
    if up and up[0] == "sed" and len(up) == 3:
        m = re.match(r"^s/(.*)/(.*)/(g?)$", up[1])
        files = files_of(cmd.where, up[2])
        if m and files:
            pattern = m.group(1).replace("\\.", r"\.")
            text = re.sub(pattern, m.group(2), files[0].read_text(), flags=re.M, count=0 if m.group(3) else 0)
            return load_docs(cmd.where, text, f"sed's output of {up[2]}")
    return None


def check_kubectl(cmd: Command, render: Render | None, for_users: bool = True) -> None:
    global checked
    words = cmd.words[1:]
    namespace = (flag_values(words, "-n", "--namespace") or [None])[0]
    positional = []
    skip = False
    for i, w in enumerate(words):
        if skip:
            skip = False
            continue
        if w in ("-n", "--namespace", "-f", "--filename", "-o", "--output", "-l", "--selector", "--for", "--timeout",
                 "--type", "--from-literal", "--request-timeout"):
            skip = True
            continue
        if not w.startswith("-"):
            positional.append(w)
    verb = positional[0] if positional else ""
    if verb in ("apply", "create", "delete", "diff", "replace") and flag_values(words, "-f", "--filename"):
        checked += 1
        docs = []
        for target in flag_values(words, "-f", "--filename"):
            if target == "-":
                got = stdin_docs(cmd)
                if got is None:
                    print(f"note {cmd.where}: cannot tell what `{' '.join(cmd.words)}` reads on stdin")
                    continue
                docs += got
            else:
                for f in files_of(cmd.where, target) or []:
                    docs += load_docs(cmd.where, f.read_text(), str(f.relative_to(ROOT)))
        for d in docs:
            meta = d.get("metadata") or {}
            what = f"{d.get('kind')} {meta.get('name')}"
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                error(cmd.where, f"`{' '.join(cmd.words)}`: {what} says namespace {meta['namespace']!r}; "
                                 f"kubectl refuses it with -n {namespace}")
            sluice = str(d.get("apiVersion", "")).startswith("sluice.dev/") or d.get("kind") == "CustomResourceDefinition"
            if for_users and verb == "apply" and d.get("kind") == "AgentPool":
                spec = d.get("spec") or {}
                loopback = [e for b in spec.get("backends") or [] for e in b.get("endpoints") or []
                            if str(e).startswith(("127.", "localhost", "[::1]"))]
                if loopback:
                    error(cmd.where, f"`{' '.join(cmd.words)}`: {what} sends to {loopback[0]}: in a cluster that is the "
                                     "proxy's own pod (these manifests are for the local demo)")
                prefixes = {m.get("pathPrefix") for m in spec.get("matches") or []} & (render.demo_prefixes if render else set())
                if prefixes:
                    error(cmd.where, f"`{' '.join(cmd.words)}`: {what} matches {sorted(prefixes)}, "
                                     "which the release's demo pools already serve")
            if render is not None:
                if (meta.get("namespace") or namespace) == render.namespace:
                    render.objects.add((d.get("kind"), meta.get("name")))
                if d.get("kind") == "AgentPool":
                    render.served |= {m.get("pathPrefix") for m in (d.get("spec") or {}).get("matches") or []}
            if verb == "apply" and sluice and "--server-side" not in words:
                error(cmd.where, f"`{' '.join(cmd.words)}`: apply {what} with --server-side (strict field validation)")
        return
    if render is None or verb not in ("get", "describe", "rollout", "port-forward"):
        return
    objects, release_ns, external = render.objects, render.namespace, render.external
    names = positional[2:] if verb == "rollout" else positional[1:]
    refs = []
    for i, n in enumerate(names):
        if "/" in n:
            kind, name = n.split("/", 1)
            refs.append((kind, name))
        elif i == 0 and len(names) > 1 and "/" not in names[1]:
            refs.append((n, names[1]))
            break
    for kind, name in refs:
        kind_name = KINDS.get(kind.lower())
        if kind_name is None or (namespace or release_ns) != release_ns:
            continue
        checked += 1
        if (kind_name, name) not in objects and (kind_name, name) not in external:
            error(cmd.where, f"`{' '.join(cmd.words)}`: the release creates no {kind_name} {name} in {release_ns}")


def check_helm(cmd: Command, repos: set[str]) -> Render | None:
    """Checks a helm command; returns what it renders, for a charts/ install or upgrade."""
    global checked
    words = cmd.words[1:]
    if words[:2] == ["repo", "add"] and len(words) >= 3:
        repos.add(words[2])
        return
    if not words or words[0] not in ("install", "upgrade", "template"):
        return None
    checked += 1
    positional, i = [], 1
    value_flags = ("-n", "--namespace", "--set", "--set-json", "--set-string", "--set-file", "-f", "--values",
                   "--version", "--timeout")
    while i < len(words):
        if words[i] in value_flags:
            i += 2
            continue
        if not words[i].startswith("-"):
            positional.append(words[i])
        i += 1
    if len(positional) < 2:
        error(cmd.where, f"`{' '.join(cmd.words)}`: expected a release name and a chart")
        return None
    name, chart = positional[:2]
    for f in flag_values(words, "-f", "--values"):
        # my-values.yaml and the like stand for the user's own file.
        if not Path(f).name.startswith("my-") and not (ROOT / f).is_file():
            error(cmd.where, f"`{' '.join(cmd.words)}`: values file {f} does not exist")
    if not chart.startswith("charts/"):
        repo = chart.split("/")[0]
        if "/" in chart and repo not in repos:
            error(cmd.where, f"`{' '.join(cmd.words)}`: chart {chart} needs `helm repo add {repo} ...` first")
        return None
    if not (ROOT / chart / "Chart.yaml").is_file():
        error(cmd.where, f"`{' '.join(cmd.words)}`: no chart at {chart}")
        return None
    namespace = (flag_values(words, "-n", "--namespace") or ["default"])[0]
    rendered = tempfile.NamedTemporaryFile(suffix=".yaml", delete=False)
    rendered.close()
    args = [sys.executable, str(ROOT / "scripts/render_chart.py"), "render", str(ROOT / chart), "--name", name,
            "--namespace", namespace, "-o", rendered.name,
            "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
            "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]
    for flag in ("--set", "--set-json"):
        for v in flag_values(words, flag):
            args += [flag, v]
    for f in flag_values(words, "-f", "--values"):
        if (ROOT / f).is_file():
            args += ["-f", str(ROOT / f)]
    for v in flag_values(words, "--set-file"):
        key, _, f = v.partition("=")
        if (ROOT / f).is_file():
            content = (ROOT / f).read_text()
        elif Path(f).name.startswith("my-"):
            # The user's own file, written by an earlier command of the page.
            content = f"-----BEGIN CERTIFICATE-----\n(the contents of {f})\n-----END CERTIFICATE-----\n"
        else:
            error(cmd.where, f"`{' '.join(cmd.words)}`: --set-file {f} does not exist")
            continue
        args += ["--set-json", f"{key}={json.dumps(content)}"]
    out = subprocess.run(args, capture_output=True, text=True)
    try:
        if out.returncode != 0:
            error(cmd.where, f"`{' '.join(cmd.words)}` does not render: {out.stderr.strip()}")
            return None
        return Render(rendered.name, namespace)
    finally:
        os.unlink(rendered.name)


def check_curl(cmd: Command, render: Render | None) -> None:
    """A `curl $SLUICE/PATH` goes to a path some pool serves (whole segments)."""
    global checked
    if render is None:
        return
    for w in cmd.words[1:]:
        if "$SLUICE/" not in w:
            continue
        path = "/" + w.split("$SLUICE/", 1)[1].split("?", 1)[0]
        if "<" in path:
            continue  # a placeholder: `$SLUICE/<the pathPrefix of one of your pools>`
        checked += 1
        if not any(p and (path == p or p == "/" or path.startswith(p if p.endswith("/") else p + "/"))
                   for p in render.served):
            error(cmd.where, f"`{' '.join(cmd.words)}`: no pool of the release or applied before serves {path} "
                             f"(served: {sorted(p for p in render.served if p)})")


def check_local(cmd: Command) -> None:
    """`make TARGET...` names targets of the Makefile; `bash FILE` and `python FILE` run a
    file of the repository."""
    global checked
    words = cmd.words
    if words[0] == "make":
        targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        for w in words[1:]:
            if w.startswith("-") or "=" in w:
                continue
            checked += 1
            if w not in targets:
                error(cmd.where, f"`{' '.join(words)}`: the Makefile has no target {w}")
        return
    script = next((w for w in words[1:] if not w.startswith("-")), None)
    if script is None or script.startswith("$") or "/" not in script:
        return
    checked += 1
    if not (ROOT / script).is_file():
        error(cmd.where, f"`{' '.join(words)}`: no file {script} (commands run from the repository root)")


def check(cmd: Command, render: Render | None, repos: set[str], for_users: bool = True) -> Render | None:
    """Checks one command; returns the render in force after it."""
    if cmd.words[0] == "kubectl":
        check_kubectl(cmd, render, for_users)
    elif cmd.words[0] == "helm":
        return check_helm(cmd, repos) or render
    elif cmd.words[0] == "curl":
        check_curl(cmd, render)
    else:
        check_local(cmd)
    return render


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", nargs=3, action="append", default=[], metavar=("NOTES", "RENDERED", "NAMESPACE"))
    args = parser.parse_args()
    sources = 0
    for doc in DOCS:
        repos: set[str] = set()
        render = None
        for first, block in markdown_blocks(doc):
            functions: dict[str, list[str]] = {}
            for cmd in commands_of(doc, block, functions, first):
                sources += 1
                render = check(cmd, render, repos)
    for script in SCRIPTS:
        functions = {}
        for cmd in commands_of(script, (ROOT / script).read_text().splitlines(), functions):
            sources += 1
            check(cmd, None, set(), for_users=False)
    for notes, rendered, namespace in args.notes:
        render = Render(rendered, namespace)
        lines, continued = [], False
        for line in open(notes).read().splitlines():
            if continued or line.strip().startswith(("kubectl ", "helm ", "curl ")):
                lines.append(line)
                continued = line.rstrip().endswith("\\")
        for cmd in commands_of(Path(notes).name, lines, {}):
            sources += 1
            check(cmd, render, set())
    if errors == 0:
        print(f"ok   {sources} kubectl, helm, curl, make, bash and python commands of the READMEs, docs/, NOTES.txt ({len(args.notes)} render(s)) and "
              f"{', '.join(SCRIPTS)}; {checked} checked against the files, charts and objects they name")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
