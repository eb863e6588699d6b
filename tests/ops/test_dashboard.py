"""The Grafana dashboard in containers/grafana: structure, variables, and PromQL that Prometheus accepts."""
import subprocess

import pytest
import yaml

from tests.ops.promql import (ASSUMED, REPO, dashboard, dashboard_exprs, dashboard_panels, grafana_to_promql,
                              metric_names, policy_series, readme_series, recorded_names)

pytestmark = pytest.mark.timeout(60)


def test_dashboard_has_datasource_node_and_peer_variables():
    d = dashboard()
    assert d["uid"] and 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "peer"):
        assert variables[name]["type"] == "query"
        assert variables[name]["query"]["query"].startswith("label_values(")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert "$instance" in variables["peer"]["query"]["query"]  # peers of the selected nodes only


def test_every_panel_uses_the_datasource_variable_and_every_variable_is_used():
    exprs = dashboard_exprs()
    for p in dashboard_panels():
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert all("$instance" in t["expr"] for t in p["targets"]), p["title"]
    assert any("$peer" in e for e in exprs)


def test_panels_cover_sessions_prefixes_programming_policy_and_drops():
    used = set().union(*map(metric_names, dashboard_exprs()))
    for metric in ("tortie_bgp_session_up", "tortie_bgp_prefixes_accepted", "tortie_bgp_prefixes_rejected_total",
                   "tortie_route_programming_latency_seconds_bucket", "tortie_route_programming_errors_total",
                   "tortie_policy_apply_duration_seconds_bucket", "tortie_policy_apply_failures_total",
                   "tortie_policy_rule_packets_total", "tortie:bgp_sessions_up:sum"):
        assert metric in used, metric
    assert any('action="deny"' in e for e in dashboard_exprs())  # drops


def test_panels_reference_only_existing_metrics():
    known = readme_series() | policy_series() | ASSUMED | recorded_names()
    for p in dashboard_panels():
        for t in p["targets"]:
            assert metric_names(t["expr"]) <= known, (p["title"], t["expr"])


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, p["title"]
        taken |= cells


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query (Grafana variables substituted) as the expression of a recording rule."""
    group = {"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": grafana_to_promql(e)}
                                            for i, e in enumerate(dashboard_exprs())]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_operations_guide_explains_every_panel():
    guide = " ".join((REPO / "docs" / "operations.md").read_text().split())  # line breaks as spaces
    for p in dashboard_panels():
        assert f"*{p['title']}*" in guide, p["title"]
