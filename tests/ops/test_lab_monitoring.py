"""The mesh3 lab watched as in production: its metrics pass promtool, and a real Prometheus server
inside node1 scrapes the three nodes, evaluates the recording rules, runs every dashboard query and
raises the alerts when a node goes away."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bgpd.agent.metrics import SESSION_STATES
from bgpd.bgp.rib import Reject
from tests.netns import Lab, requires_root, running_lab, wait_for
from tests.ops.promql import (ASSUMED, PROMETHEUS_CONFIG, RULES, dashboard_exprs, grafana_to_promql, metric_names,
                              policy_series, readme_series, recorded_names, rules, series_names)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

NODES = {"node1": "10.99.0.1", "node2": "10.99.0.2", "node3": "10.99.0.3"}
METRICS_PORT = 9473
FETCH = ("import json, sys, urllib.request\n"
         "print(json.dumps([urllib.request.urlopen(u, timeout=5).read().decode() for u in sys.argv[1:]]))")
FREE_PORT = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
# the only labels Tortie's series may have, each with a bounded set of values
LABEL_VALUES = {"peer": set(NODES.values()), "state": set(SESSION_STATES), "reason": {r.value for r in Reject},
                "name": set(NODES), "asn": {"64512"}, "version": None, "python": None, "le": None,
                "family": {"ipv4", "ipv6"}}


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3.clab.yml", "o")


def fetch(lab: Lab, node: str, *urls: str) -> list[str]:
    """GETs each URL from inside the node (one process for all of them); the bodies in order."""
    return json.loads(lab.exec(node, "python3", "-c", FETCH, *urls, timeout=30).stdout)


def scrape(lab: Lab, node: str) -> str:
    return fetch(lab, node, f"http://127.0.0.1:{METRICS_PORT}/metrics")[0]


class Prometheus:
    """A Prometheus server in a lab node, queried through its HTTP API from inside that node."""

    def __init__(self, lab: Lab, node: str, port: int):
        self.lab, self.node, self.base = lab, node, f"http://127.0.0.1:{port}"

    def api(self, path: str, *queries: dict[str, str]) -> list[dict]:
        """GET /api/v1/PATH once per parameter set (once without parameters if none); the data of each."""
        urls = [f"{self.base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(q)}" if q else "") for q in queries or [{}]]
        replies = [json.loads(body) for body in fetch(self.lab, self.node, *urls)]
        assert all(r["status"] == "success" for r in replies), replies
        return [r["data"] for r in replies]

    def query(self, *exprs: str) -> list[dict[tuple, str]]:
        """Instant queries: for each, labels (without __name__, sorted) -> value."""
        return [{tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): s["value"][1]
                 for s in data["result"]} for data in self.api("query", *({"query": e} for e in exprs))]


@pytest.fixture(scope="module")
def prometheus(lab):
    # /tmp is private to each node: keep config, data and pid file where both sides see them
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="tortie-prometheus-") as tmp:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = int(lab.exec("node1", "python3", "-c", FREE_PORT).stdout)
        pidfile = Path(tmp) / "pid"
        proc = lab.popen("node1", "sh", "-c", f"echo $$ > {pidfile}; exec prometheus --config.file={tmp}/prometheus.yml"
                         f" --storage.tsdb.path={tmp}/data --web.listen-address=127.0.0.1:{port} --log.level=warn")
        pid = None
        try:
            pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="prometheus pid"))
            wait_for(lambda: lab.exec("node1", "python3", "-c", FETCH, f"http://127.0.0.1:{port}/-/ready",
                                      check=False).returncode == 0 or proc.poll() is not None, 30,
                     interval=0.5, what="prometheus ready")
            assert proc.poll() is None, proc.communicate(timeout=5)
            yield Prometheus(lab, "node1", port)
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_metrics_pass_promtool_and_have_bounded_labels(lab):
    for node in NODES:
        text = scrape(lab, node)
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), f"{node}: {r.stdout}{r.stderr}"
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("tortie_"):
                continue
            for sample in family.samples:
                for label, value in sample.labels.items():
                    assert label in LABEL_VALUES, (sample.name, label)
                    assert LABEL_VALUES[label] is None or value in LABEL_VALUES[label], (sample.name, label, value)
        assert not readme_series() - series_names(text), "README.md lists metrics the daemon does not export"


def test_rules_and_dashboard_reference_only_exported_metrics(lab):
    exported = series_names(scrape(lab, "node1")) | policy_series() | ASSUMED | recorded_names()
    for expr in dashboard_exprs() + [r["expr"] for r in rules()]:
        assert metric_names(expr) <= exported, expr


def test_prometheus_scrapes_every_session_and_records_rules(prometheus):
    up = wait_for(lambda: len(r := prometheus.query("tortie_bgp_session_up")[0]) == 6 and r, 30, interval=0.5,
                  what="6 session series in Prometheus")
    assert set(up.values()) == {"1"}
    assert {dict(k)["instance"] for k in up} == {f"{a}:{METRICS_PORT}" for a in NODES.values()}
    recorded = wait_for(lambda: len(r := prometheus.query("tortie:bgp_sessions_up:sum")[0]) == 3 and r, 30,
                        interval=0.5, what="the recording rule")
    assert set(recorded.values()) == {"2"}
    groups = prometheus.api("rules")[0]["groups"]
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


def test_every_dashboard_query_runs(prometheus):
    """Queries on daemon metrics return series from the lab; the policy and datastore ones run, empty."""
    exprs = dashboard_exprs()
    for expr, result in zip(exprs, prometheus.query(*map(grafana_to_promql, exprs))):
        if not metric_names(expr) & (ASSUMED | policy_series()) and "> 0" not in expr:
            assert result, expr


def test_alerts_fire_when_a_node_stops(lab, prometheus):
    """node3's daemon stops: its peers' sessions with it go down and its endpoint stops answering."""
    pid = lab.exec("node3", "cat", "/run/tortie/tortie.pid").stdout.strip()
    lab.exec("node3", "kill", "-TERM", pid)

    def pending() -> set[tuple[str, str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["instance"], a["labels"].get("peer", ""))
                for a in prometheus.api("alerts")[0]["alerts"] if a["state"] == "pending"}

    expected = {("TortieBGPPeerDown", "10.99.0.1:9473", "10.99.0.3"),
                ("TortieBGPPeerDown", "10.99.0.2:9473", "10.99.0.3"),
                ("TortieMetricsDown", "10.99.0.3:9473", "")}
    wait_for(lambda: pending() == expected, 30, interval=0.5, what=f"pending alerts {expected}")
