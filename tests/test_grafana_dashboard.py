"""docs/grafana-dashboard.json only queries series that a running `apikeyrouter serve` exposes on /metrics.

The dashboard's PromQL is read with a small tokenizer (metric names are the identifiers that are not
functions, keywords, label names in `{...}` / `by (...)`, strings, durations or Grafana variables), then
checked against the sample names of a real scrape: `_bucket`/`_sum`/`_count` exist only for histograms and
`_total` only for counters, so a name with the wrong suffix for its type is reported like an unknown one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_env import ROOT, serve_env

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

# Words that may stand where a metric name could, and are not one.
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "limitk", "limit_ratio",
}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _AGGREGATIONS | _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(?:[smhdwy]|ms)*")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_group(expr: str, i: int, close: str) -> int:
    """From the opening bracket at i to just past its `close`, stepping over strings."""
    while i < len(expr) and expr[i] != close:
        i = _skip_string(expr, i) if expr[i] in "\"'`" else i + 1
    return i + 1


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "{":  # label matchers
            i = _skip_group(expr, i, "}")
        elif c == "[":  # range or subquery
            i = _skip_group(expr, i, "]")
        elif c == "$" and (variable := _VARIABLE.match(expr, i)):
            i = variable.end()
        elif (number := _NUMBER.match(expr, i)) and not _IDENT.match(expr, i):
            i = number.end()
        elif ident := _IDENT.match(expr, i):
            word, i = ident.group(), ident.end()
            rest = expr[i:].lstrip()
            if word.lower() in _LABEL_LISTS and rest.startswith("("):
                i = _skip_group(expr, expr.index("(", i), ")")
            elif word.lower() not in _KEYWORDS and not rest.startswith("("):
                names.add(word)
        else:
            i += 1
    return names


def variable_query_names(query: str) -> set[str]:
    """A Grafana Prometheus variable query: `label_values(selector, label)` names the selector's metric;
    `label_values(label)` names none; `query_result(expr)` is plain PromQL."""
    if match := re.fullmatch(r"\s*label_values\((.*)\)\s*", query, re.DOTALL):
        selector, comma, _label = match.group(1).rpartition(",")
        return metric_names(selector) if comma else set()
    if match := re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL):
        return metric_names(match.group(1))
    return metric_names(query)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a row's panels (collapsed rows hold them)


def dashboard_metrics(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Every metric name the dashboard queries -> where (panel title or variable name)."""
    uses: dict[str, list[str]] = {}
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            for name in metric_names(target.get("expr", "")):
                uses.setdefault(name, []).append(panel.get("title", "?"))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query", "")
        text = query.get("query", "") if isinstance(query, dict) else query
        for name in variable_query_names(text):
            uses.setdefault(name, []).append(f"${variable['name']}")
    return uses


def exposed_series(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def unknown_metrics(dashboard: dict[str, Any], exposition: str) -> dict[str, list[str]]:
    exposed = exposed_series(exposition)
    return {name: where for name, where in dashboard_metrics(dashboard).items() if name not in exposed}


def test_the_tokenizer_names_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_seconds_bucket{route=~"/v1/.*", x="}"}[$__rate_interval'
        "])))"
        " / ignoring(status) group_left sum without (key) (b_total offset 5m) > bool 1e3"
        ' or label_replace(c{k="v"} == 1, "aspect", "${1}xx", "", "") unless on (key) d[5m:1m]'
        " and count_values('v', e) * topk(3, f) + max(g) - $var - ${other}"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d", "e", "f", "g"}
    assert variable_query_names('label_values(apikeyrouter_key_lifecycle{provider="x"}, key)') == {
        "apikeyrouter_key_lifecycle"
    }
    assert variable_query_names("label_values(key)") == set()


def test_the_dashboard_imports_with_a_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    queried = [p for p in _panels(dashboard["panels"]) if p.get("type") != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert metric_names(target["expr"]), (panel["title"], target["expr"])


async def test_every_metric_the_dashboard_queries_is_exposed_by_serve(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    async with (
        serve_env(
            tmp_path,
            [("bad", "K_BAD", 'metadata = { quality = "premium" }'), ("good", "K_GOOD", "")],
            secrets={"K_BAD": "sk-sim-invalid", "K_GOOD": "sk-sim-good"},
            sim_keys=[{"key": "sk-sim-invalid", "behavior": "invalid"}, {"key": "sk-sim-good", "cut_stream_after": 2}],
        ) as served,
        httpx.AsyncClient(base_url=served.url, headers=served.client_headers, timeout=10) as http,
    ):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        answered = await http.post("/v1/chat/completions", json=body)  # bad fails, good serves
        assert answered.headers["x-apikeyrouter-attempts"] == "2"
        cut = await http.post("/v1/chat/completions", json={**body, "stream": True})  # cut mid-stream
        assert cut.status_code == 200 and "error" in cut.text
        exposition = (await http.get("/metrics")).text
    assert unknown_metrics(dashboard, exposition) == {}
    # A dashboard that asks for more than the process exposes is caught, by name and panel.
    planted = {
        **dashboard,
        "panels": [
            *dashboard["panels"],
            {
                "type": "row",
                "title": "planted",
                "collapsed": True,
                "panels": [
                    {"title": "typo", "targets": [{"expr": "sum(rate(apikeyrouter_http_request_total[5m]))"}]},
                    {"title": "gauge as counter", "targets": [{"expr": "rate(apikeyrouter_key_spend_total[1h])"}]},
                ],
            },
        ],
    }
    assert unknown_metrics(planted, exposition) == {
        "apikeyrouter_http_request_total": ["typo"],
        "apikeyrouter_key_spend_total": ["gauge as counter"],
    }
