#!/usr/bin/env python3
"""The metric and label names a PromQL expression uses, without a PromQL parser.

    .venv/bin/python scripts/promql_names.py --self-test
    .venv/bin/python scripts/promql_names.py 'sum by (pool) (rate(sluice_requests_total[5m]))'

scripts/validate-manifests.sh checks with it that the Grafana dashboard, the alert rules
and the prometheus-adapter rules name only metrics and labels that the binaries export
(`sluice metrics`). It reads expressions as Prometheus, Grafana and prometheus-adapter
write them: Grafana's variables (`$pool`, `${datasource}`, `$__rate_interval`) and the
adapter's templates (`<<.Series>>`, `<<.LabelMatchers>>`, `<<.GroupBy>>`) are allowed.

A name is a metric unless it is a function or aggregation (followed by `(`, or one of the
aggregation operators, which may take `by (...)` first), a keyword (`and`, `offset`,
`bool`...), a label inside `{...}` or in the list of `by`, `without`, `on`, `ignoring`,
`group_left` or `group_right`, or inside a string, a duration or a `[...]` range.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "start", "end"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)([a-zA-Z0-9]*)")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*")


class PromQLError(ValueError):
    """An expression this reader cannot follow (unbalanced brackets, a bad matcher)."""


@dataclass
class Selector:
    """One vector selector: its metric name and the labels its matchers name."""

    metric: str
    labels: set[str] = field(default_factory=set)


@dataclass
class Names:
    """What an expression refers to."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels of by/without/on/ignoring/group_*

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def base_name(metric: str, histograms: set[str] | None = None) -> str:
    """The metric a series belongs to: `x_bucket`, `x_sum` and `x_count` are series of
    histogram `x` (when `histograms` is given, only if `x` is in it)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            base = metric[: -len(suffix)]
            if histograms is None or base in histograms:
                return base
    return metric


def fill_templates(expr: str, series: str | None = None) -> str:
    """Replaces Grafana's variables and prometheus-adapter's templates by what PromQL allows there."""
    if series is not None:
        expr = re.sub(r"<<\s*\.Series\s*>>", series, expr)
    expr = re.sub(r"<<\s*\.(LabelMatchers|GroupBy|GroupBySlice|LabelValuesByName)\s*>>", "", expr)
    # $__rate_interval, ${var:format}, $var: in a range they stand for a duration, elsewhere
    # for a number (inside strings they are left alone by the tokenizer anyway).
    return re.sub(r"\$(__\w+|\{\w+(:\w+)?\}|\w+)", "1m", expr)


def _string_end(expr: str, i: int) -> int:
    quote = expr[i]
    j = i + 1
    while j < len(expr):
        if expr[j] == "\\" and quote != "`":
            j += 2
            continue
        if expr[j] == quote:
            return j + 1
        j += 1
    raise PromQLError(f"unterminated string at {i}: {expr[i:i + 30]!r}")


def _matchers(block: str) -> list[tuple[str, str, str]]:
    """The matchers of the inside of `{...}`: (label, operator, quoted value)."""
    # A leading comma is what an empty <<.LabelMatchers>> leaves before further matchers.
    out, rest = [], block.strip().removeprefix(",").strip()
    while rest:
        m = MATCHER.match(rest)
        if not m:
            raise PromQLError(f"cannot read the label matchers {{{block}}} at {rest!r}")
        out.append((m.group(1), m.group(2), m.group(3)))
        rest = rest[m.end():]
        if rest.startswith(","):
            rest = rest[1:].strip()
        elif rest:
            raise PromQLError(f"cannot read the label matchers {{{block}}} at {rest!r}")
    return out


def _tokens(expr: str):
    """(kind, text, position): ident, number, string, matchers, range, punct."""
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "\"'`":
            j = _string_end(expr, i)
            yield "string", expr[i:j], i
            i = j
        elif c == "{":
            j = i + 1
            while j < len(expr) and expr[j] != "}":
                j = _string_end(expr, j) if expr[j] in "\"'`" else j + 1
            if j >= len(expr):
                raise PromQLError(f"unclosed {{ at {i}: {expr[i:i + 30]!r}")
            yield "matchers", expr[i + 1:j], i
            i = j + 1
        elif c == "[":
            j = expr.find("]", i)
            if j < 0:
                raise PromQLError(f"unclosed [ at {i}")
            yield "range", expr[i + 1:j], i
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            m = NUMBER.match(expr, i)
            yield "number", m.group(0), i
            i = m.end()
        elif IDENT.match(expr, i):
            m = IDENT.match(expr, i)
            yield "ident", m.group(0), i
            i = m.end()
        else:
            yield "punct", c, i
            i += 1


def names(expr: str, series: str | None = None) -> Names:
    """The selectors and grouping labels of `expr` (after fill_templates)."""
    tokens = list(_tokens(fill_templates(expr, series)))
    depth = 0
    for kind, text, _ in tokens:
        if kind == "punct" and text == "(":
            depth += 1
        elif kind == "punct" and text == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError(f"unbalanced parentheses in {expr!r}")
    if depth:
        raise PromQLError(f"unbalanced parentheses in {expr!r}")
    out = Names()
    i = 0
    while i < len(tokens):
        kind, text, _ = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, None, None)
        if kind == "ident" and text in GROUPING and nxt[:2] == ("punct", "("):
            j = i + 2
            while j < len(tokens) and tokens[j][:2] != ("punct", ")"):
                if tokens[j][0] == "ident":
                    out.grouping.add(tokens[j][1])
                elif tokens[j][:2] != ("punct", ","):
                    raise PromQLError(f"{text} (...) holds {tokens[j][1]!r}, not a label name, in {expr!r}")
                j += 1
            i = j + 1
            continue
        if kind == "ident":
            lower = text.lower()
            if lower in KEYWORDS or lower in GROUPING or text in AGGREGATIONS or nxt[:2] == ("punct", "("):
                i += 1
                continue
            selector = Selector(text)
            if nxt[0] == "matchers":
                selector.labels = {label for label, _, _ in _matchers(nxt[1])}
                i += 1
            out.selectors.append(selector)
        elif kind == "matchers":
            # A selector without a metric name before it: {__name__="x", ...}.
            matchers = _matchers(text)
            metric = next((v[1:-1] for label, op, v in matchers if label == "__name__" and op == "="), None)
            if metric is None:
                raise PromQLError(f"a selector without a metric name in {expr!r}")
            out.selectors.append(Selector(metric, {label for label, _, _ in matchers} - {"__name__"}))
        i += 1
    return out


def check(expr: str, exported: dict[str, set[str]], extra_labels: set[str],
          series: str | None = None) -> tuple[list[str], set[str], Names | None]:
    """Problems of `expr`: metrics that `exported` (name -> its labels) lacks, and labels
    neither its metrics nor `extra_labels` (target labels, relabeled ones) have. Returns
    the problems, the metrics it uses (histogram series reduced to their metric) and what
    it names (None when it cannot be read)."""
    problems = []
    try:
        found = names(expr, series)
    except PromQLError as e:
        return [str(e)], set(), None
    used, labels = set(), set(extra_labels)
    for s in found.selectors:
        metric = base_name(s.metric, set(exported))
        if metric not in exported:
            problems.append(f"{s.metric} is not a metric the binaries export (`sluice metrics`)")
            continue
        used.add(metric)
        have = exported[metric] | extra_labels | ({"le"} if s.metric.endswith("_bucket") else set())
        labels |= have
        for label in sorted(s.labels - have):
            problems.append(f"{s.metric} has no label {label} (it has {sorted(exported[metric])})")
    if not found.selectors:
        problems.append(f"no metric in {expr!r}")
    if used != {base_name(s.metric, set(exported)) for s in found.selectors}:
        return problems, used, found  # the labels of an unknown metric are unknown too
    for label in sorted(found.grouping - labels):
        problems.append(f"groups by {label}, which none of {sorted(found.metrics)} has")
    return problems, used, found


def self_test() -> None:
    """The cases the reader must get right (run by scripts/validate-manifests.sh)."""
    cases = {
        'sum by (pool) (rate(sluice_requests_total{namespace=~"$namespace", pool=~"$pool"}[$__rate_interval]))':
            ({"sluice_requests_total"}, {"pool"}),
        'histogram_quantile(0.99, sum by (namespace, pool, le) (rate(x_seconds_bucket{a="1", b!~"p|q\\\\.r"}[5m]))) > 30':
            ({"x_seconds_bucket"}, {"namespace", "pool", "le"}),
        'a_total > clamp_min(3 * (sum by (p) (rate(b_total{r="denied"}[1h] offset 5m)) or 0 * c), 1)':
            ({"a_total", "b_total", "c"}, {"p"}),
        'count by (namespace) (v) > (sum by (namespace) (w) or 0 * count by (namespace) (v))':
            ({"v", "w"}, {"namespace"}),
        'x unless on (namespace, pool) y{q="}"} # a comment with z_total\n':
            ({"x", "y"}, {"namespace", "pool"}),
        'topk(10, max without (pod) ({__name__="n_total", job="j"})) / ignoring (code) group_left (k) m':
            ({"n_total", "m"}, {"pod", "code", "k"}),
        "histogram_quantile(0.95, sum by (pool_namespace, pool_name, le) (rate(<<.Series>>{<<.LabelMatchers>>}[2m]))) >= 0 "
        "or 0 * sum by (pool_namespace, pool_name) (rate(<<.Series>>{<<.LabelMatchers>>,le=\"+Inf\"}[2m]))":
            ({"s_bucket"}, {"pool_namespace", "pool_name", "le"}),
        "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>}) + 1e3 - .5 * Inf":
            ({"s_bucket"}, set()),
    }
    for expr, (metrics, grouping) in cases.items():
        got = names(expr, series="s_bucket")
        assert (got.metrics, got.grouping) == (metrics, grouping), f"{expr!r}: {got}"
    assert names('sum(a{b="1"})').selectors[0].labels == {"b"}
    for bad in ["sum(rate(x[5m])", 'x{a="1"', "x{a=1}", "sum by (1) (x)"]:
        try:
            names(bad)
        except PromQLError:
            continue
        raise AssertionError(f"{bad!r} was read without an error")
    exported = {"sluice_requests_total": {"pool", "code"}, "sluice_d_seconds": {"pool"}}
    problems, used, _ = check('sum by (pool, le) (rate(sluice_d_seconds_bucket{pool="a"}[5m])) / sluice_nope_total',
                              exported, {"namespace"})
    assert used == {"sluice_d_seconds"} and len(problems) == 1 and "sluice_nope_total" in problems[0], problems
    problems, _, _ = check('sum by (tier) (sluice_requests_total{kind="x"})', exported, {"namespace"})
    assert len(problems) == 2 and "no label kind" in problems[0] and "groups by tier" in problems[1], problems


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        print("ok   promql_names self-test")
    elif len(sys.argv) == 2:
        n = names(sys.argv[1])
        print("metrics:", ", ".join(sorted(n.metrics)) or "-")
        print("labels in matchers:", ", ".join(sorted({l for s in n.selectors for l in s.labels})) or "-")
        print("grouping labels:", ", ".join(sorted(n.grouping)) or "-")
    else:
        print(__doc__.strip().splitlines()[0], "\nusage: promql_names.py --self-test | EXPR", file=sys.stderr)
        sys.exit(2)
