"""What the monitoring files in containers/ reference, and which metric names exist to reference."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from policy.metrics import RuleCounterCollector

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "containers" / "prometheus" / "tortie-rules.yml"
RULES_TEST = Path(__file__).resolve().parent / "tortie-rules.test.yml"
PROMETHEUS_CONFIG = REPO / "containers" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "containers" / "grafana" / "tortie-node.json"

# Referenced by the rules and the dashboard, exported by no code yet (forward-looking: policy apply
# instrumentation and the datastore).
ASSUMED = frozenset({
    "tortie_policy_apply_duration_seconds_bucket", "tortie_policy_apply_duration_seconds_sum",
    "tortie_policy_apply_duration_seconds_count", "tortie_policy_apply_failures_total",
    "tortie_datastore_connected",
})
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def series_names(exposition: str) -> set[str]:
    """The series names a Prometheus text exposition defines, including families without samples."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in HISTOGRAM_SERIES)
        else:
            names.add(family.name)
    return names


def policy_series() -> set[str]:
    registry = CollectorRegistry()
    registry.register(RuleCounterCollector(lambda: []))
    return series_names(generate_latest(registry).decode())


def readme_series() -> set[str]:
    """The daemon's series as README.md's "Metrics" section lists them."""
    section = (REPO / "README.md").read_text().split("### Metrics", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for m in re.finditer(r"`(tortie_\w+)(?:\{[^}`]*\})?`( \(histogram)?", section):
        names.update(m[1] + s for s in HISTOGRAM_SERIES) if m[2] else names.add(m[1])
    return names


def metric_names(expr: str) -> set[str]:
    """Tortie metric and recording-rule names an expression selects (label values do not count)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\btortie[_:][A-Za-z0-9_:]*", unquoted))


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict] | None = None) -> list[dict]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for p in dashboard()["panels"] if panels is None else panels:
        if p["type"] == "row":
            out += dashboard_panels(p.get("panels", []))
        else:
            out.append(p)
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so Prometheus can run it."""
    for var, value in (("$__rate_interval", "1m"), ("$__range", "1h"), ("$instance", ".*"), ("$peer", ".*")):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr
