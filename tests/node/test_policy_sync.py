"""The daemon's policy path: datastore entries -> ruleset, one changed entry at a time (pure), and hostile entries."""
from __future__ import annotations

import json
import random
import select
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from policy.binding import bind_endpoints, compile_ruleset
from policy.compiler import compile_policies, needs_ipv6
from policy.sync_state import SyncState, entry_errors, remote_interface
from tests.netns import wait_for

NODE = "node1"
ROOT = Path(__file__).resolve().parents[2]


def endpoint(i: int, app: str, v6: bool = False) -> dict:
    return {"labels": {"app": app, "pod": f"p{i}"}, "ips": [f"10.244.{i // 200}.{i % 200 + 1}",
                                                          *([f"fd00::{i + 1}"] if v6 else [])],
            "interface": f"tt{i:011x}", "ports": [{"name": "http", "port": 8000 + i % 3}]}


def policy(i: int, app: str, peer: str, port: int) -> tuple[str, dict]:
    if i % 2:
        return f"policies/ns{i % 3}/k{i}", {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"k{i}", "namespace": f"ns{i % 3}"},
            "spec": {"podSelector": {"matchLabels": {"app": app}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}},
                                           {"namespaceSelector": {"matchLabels": {"team": "blue"}}}],
                                  "ports": [{"port": port}, {"port": "http"}]}]}}
    return f"globalpolicies/g{i}", {
        "apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": f"g{i}"},
        "spec": {"order": i, "selector": f"app == '{app}'",
                 "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": f"app == '{peer}'"},
                              "destination": {"ports": [port]}},
                             {"action": "Deny", "protocol": "UDP", "source": {"nets": ["10.9.0.0/16", "10.8.0.0/16"]}}]}}


def full_compile(entries: dict[str, dict], ipv6: bool | None = None):
    """The reference: every valid entry compiled from scratch by the plain compiler (IPv6 rules when `ipv6`,
    by default when needed: an endpoint that used IPv6 once leaves them in place, which changes nothing)."""
    state = SyncState(NODE)
    state.update(entries)
    policies, res = state._policies(), state.resolution
    if ipv6 is None:
        return compile_ruleset(policies, res.endpoints, res.isolated, state.enforced)
    assert ipv6 or not needs_ipv6(policies, res.endpoints)
    return bind_endpoints(compile_policies(policies, ipv6), res.endpoints, res.isolated, state.enforced)


@pytest.mark.parametrize("seed", range(12))
def test_incremental_updates_give_the_same_ruleset_as_a_full_compile(seed):
    rnd = random.Random(seed)
    apps = ["web", "db", "api", "cache"]
    entries: dict[str, dict] = {}
    state = SyncState(NODE)
    for step in range(40):
        changes: dict[str, dict | None] = {}
        for _ in range(rnd.choice([1, 1, 1, 3])):
            what = rnd.random()
            if what < 0.45:
                i = rnd.randrange(30)
                k = f"endpoints/{rnd.choice([NODE, 'node2'])}/ns{i % 3}/p{i}"
                v = endpoint(i, rnd.choice(apps), v6=seed % 2 == 1 and rnd.random() < 0.1)
                if rnd.random() < 0.1:  # another pod's address: a conflict
                    v["ips"] = endpoint(rnd.randrange(30), "x")["ips"]
                elif rnd.random() < 0.05:  # invalid: a local one is isolated
                    v["labels"] = {"app": "not valid"}
                changes[k] = None if k in entries and rnd.random() < 0.3 else v
            elif what < 0.85:
                k, v = policy(rnd.randrange(12), rnd.choice(apps), rnd.choice(apps), rnd.choice([80, 443]))
                changes[k] = None if k in entries and rnd.random() < 0.3 else v
            else:
                k = f"namespaces/ns{rnd.randrange(3)}"
                changes[k] = {"labels": {"team": rnd.choice(["blue", "green"])}}
        for k, v in changes.items():
            if v is None:
                entries.pop(k, None)
            elif k not in entries or not entry_errors(k, v, NODE)[1]:  # an invalid one keeps the last valid form
                entries[k] = v
        got = state.update(changes)
        assert got.ruleset == full_compile(entries, got.ruleset.ipv6), f"step {step}: {changes}"
        reference = SyncState(NODE)
        assert set(got.ignored) == set(reference.update(entries).ignored)


def test_remote_pods_feed_selectors_but_get_no_chains_here():
    """Another node's pod (a stand-in interface) is in the sets its labels select, but in no dispatch map: its
    packets never pass this node, and every chain reachable from a base chain costs kernel time per commit."""
    state = SyncState(NODE)
    out = state.update({"endpoints/node2/ns0/p1": endpoint(1, "db"), "endpoints/node1/ns0/p2": endpoint(2, "web"),
                        **dict([policy(0, "web", "db", 80), policy(2, "db", "web", 80)])})
    assert {i: list(d) for i, d in out.ruleset.dispatch.items() if d} == \
        {"workload_ingress": [endpoint(2, "web")["interface"]]}
    assert remote_interface("node2", "ns0", "p1") not in str(out.ruleset.endpoint_chains)
    assert {s.name for s in out.ruleset.sets.values() if endpoint(1, "db")["ips"][0] in s.elements}


def nested(depth: int) -> dict:
    v: dict = {}
    for _ in range(depth):
        v = {"a": [v]}
    return v


HOSTILE = {
    "globalpolicies/wrong-types": {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy",
                                   "metadata": {"name": "wrong-types"}, "spec": {"order": "first", "ingress": 7}},
    "globalpolicies/unhashable": {"apiVersion": ["tortie.io/v1"], "kind": {"a": 1}},
    "globalpolicies/deep": {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "deep"},
                            "spec": nested(5000)},
    "globalpolicies/huge": {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "huge"},
                            "spec": {"selector": "app == '" + "x" * 2_000_000 + "'"}},
    "globalpolicies/not-me": dict(policy(0, "web", "db", 80)[1], metadata={"name": "someone-else"}),
    "policies/ns1/g-in-ns": dict(policy(0, "web", "db", 80)[1], metadata={"name": "g-in-ns"}),
    "namespaces/ns2": {"labels": ["team"]},
    "endpoints/node2/ns0/bad-ip": {"labels": {}, "ips": ["10.0.0.300"]},
    "endpoints/node2/ns0/no-dict": ["not", "an", "object"],
    "endpoints/node1/ns0/nested-labels": {"labels": nested(50), "ips": ["10.244.9.9"], "interface": "tt1"},
}


def test_hostile_entries_are_reported_one_by_one_and_the_good_ones_applied():
    good = {"endpoints/node1/ns0/p1": endpoint(1, "web"), "endpoints/node1/ns0/p2": endpoint(2, "db"),
            **dict([policy(0, "web", "db", 80)])}
    state = SyncState(NODE)
    out = state.update({**HOSTILE, **good})
    assert out.ruleset == replace(full_compile(good), isolated=frozenset({"tt1"}))  # the local pod never valid
    assert sorted({line.split(":")[0] for line in out.problems}) == sorted(HOSTILE)
    assert all(len(line) < 1000 for line in out.problems)


def test_an_entry_that_turns_invalid_keeps_its_last_valid_form():
    k, v = policy(0, "web", "db", 80)
    state = SyncState(NODE)
    before = state.update({k: v, "endpoints/node1/ns0/p1": endpoint(1, "web")}).ruleset
    out = state.update({k: {**v, "spec": {"selector": "app == "}}})
    assert out.ruleset == before and [p.split(":")[0] for p in out.problems] == [k]
    out = state.update({k: None})
    assert not out.problems and not out.ruleset.policy_chains


def test_a_local_pod_that_cannot_be_compiled_is_isolated_and_refused_with_the_reason():
    state = SyncState(NODE, local_interface=lambda ns, pod: f"tt-{pod}")
    k = "endpoints/node1/ns0/p1"
    out = state.update({k: {**endpoint(1, "web"), "labels": {"app": "-bad-"}}, "endpoints/node1/ns0/p2": ["?"]})
    assert out.ruleset.isolated == {endpoint(1, "web")["interface"], "tt-p2"}
    assert "labels" in state.refusal(k) and state.refusal("endpoints/node1/ns0/p2")
    out = state.update({k: endpoint(1, "web")})
    assert out.ruleset.isolated == {"tt-p2"} and state.refusal(k) is None
    assert endpoint(1, "web")["interface"] in out.ruleset.dispatch["workload_ingress"] or \
        not out.ruleset.policy_chains  # policed as any pod: in the dispatch maps once a policy selects it


def test_address_conflicts_the_live_nodes_entry_wins_the_stale_one_is_reported():
    live = {"node1": True, "node2": False, "node3": True}
    state = SyncState(NODE, prefer=lambda node: live[node])
    k, v = policy(0, "web", "db", 80)
    stale, fresh = "endpoints/node2/ns0/p1", "endpoints/node3/ns0/p9"
    out = state.update({k: v, stale: endpoint(1, "db"), fresh: endpoint(1, "web")})
    assert set(out.ignored) == {stale} and "preferred" in out.ignored[stale]
    assert out.ruleset == full_compile({k: v, fresh: endpoint(1, "web")})
    live.update(node2=True, node3=False)  # liveness changed: decided again
    out = state.update({}, recheck=True)
    assert set(out.ignored) == {fresh}
    assert out.ruleset == full_compile({k: v, stale: endpoint(1, "db")})


def test_a_local_pod_that_loses_a_conflict_is_isolated_and_refused():
    state = SyncState(NODE, prefer=lambda node: node == "node2")
    mine = "endpoints/node1/ns0/p1"
    out = state.update({mine: endpoint(1, "web"), "endpoints/node2/ns0/p7": endpoint(1, "db")})
    assert out.ruleset.isolated == {endpoint(1, "web")["interface"]}
    assert "10.244.0.2" in state.refusal(mine)


def test_endpoints_outside_their_nodes_blocks_are_ignored():
    state = SyncState(NODE)
    claims = {"claims/10.244.0.0-24/node2": {"owned": True, "at": 1.0}}
    entries = {"endpoints/node2/ns0/p1": endpoint(1, "web"), "endpoints/node3/ns0/p2": endpoint(2, "web")}
    out = state.update(entries, endpoints=entries, claims=claims)
    assert out.ruleset == full_compile({"endpoints/node2/ns0/p1": endpoint(1, "web")})
    assert "not in a block" in state.refusal("endpoints/node3/ns0/p2")


def test_pods_of_one_name_on_several_nodes_are_distinct_endpoints():
    """Pods are named per node: node1, node2 and node3 may each run a default/web (the cluster lab does)."""
    state = SyncState(NODE)
    k, v = policy(0, "web", "db", 80)
    pods = {f"endpoints/{n}/ns0/web": endpoint(i, "db") for i, n in enumerate(("node1", "node2", "node3"))}
    out = state.update({k: v, **pods})
    assert out.ruleset == full_compile({k: v, **pods}) and not out.ignored
    assert sum(len(s.elements) for s in out.ruleset.sets.values() if s.kind == "addr") == 3
    out = state.update({"endpoints/node2/ns0/web": endpoint(1, "web")})
    assert out.ruleset == full_compile({k: v, **pods, "endpoints/node2/ns0/web": endpoint(1, "web")})
    out = state.update({"endpoints/node3/ns0/web": None})
    pods.pop("endpoints/node3/ns0/web")
    assert out.ruleset == full_compile({k: v, **pods, "endpoints/node2/ns0/web": endpoint(1, "web")})


# --- the daemon's policy task on a real datastore (files backend) and real nftables, in a network namespace --------


class Runner:
    """tests/node/policy_sync_runner.py in a network namespace, on the datastore directory `data`."""

    def __init__(self, ns: str, data: Path, state: Path):
        self.data = data
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.node.policy_sync_runner",
                                      str(data), str(state)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.ns = ns
        assert self._answer()["ready"]

    def _answer(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, "the policy task did not answer within 60 s"
        line = self.proc.stdout.readline()
        assert line, f"the policy task exited: {self.proc.stderr.read()[-3000:]}"
        return json.loads(line)

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def put(self, key: str, value: object) -> dict:
        """Writes an entry as the files backend does (any JSON, hostile too) and waits until it went through."""
        path = self.data / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        before = self.ask(op="wait", key=key)["rejected"]
        tmp.write_text(value if isinstance(value, str) else json.dumps(value))
        tmp.replace(path)
        # it arrives, or the datastore drops it on arrival (not an object, too large or too deep)
        return self.ask(op="wait", key=key, value=value if isinstance(value, dict) else None, rejected=before + 1)

    def nft(self, *args: str) -> dict:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-j", *args], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return json.loads(out)

    def dispatch(self) -> dict[str, str]:
        """workload_ingress: interface -> endpoint chain."""
        m = self.nft("list", "map", "inet", "tortie", "workload_ingress")["nftables"][1]["map"]
        return {k: next(iter(v.values()))["target"] for k, v in m.get("elem", [])}

    def stop(self) -> str:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
        return self.proc.stderr.read()


@pytest.fixture
def runner(make_netns, tmp_path):
    started = []

    def start(entries: dict[str, dict]) -> Runner:
        for k, v in entries.items():
            (tmp_path / "ds" / f"{k}.json").parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "ds" / f"{k}.json").write_text(json.dumps(v))
        started.append(Runner(make_netns("psync"), tmp_path / "ds", tmp_path / "state"))
        return started[-1]

    yield start
    for r in started:
        r.stop()


CLAIM = {"claims/10.244.0.0-24/node1": {"owned": True, "at": 1.0}}


@pytest.mark.timeout(180)
def test_hostile_datastore_entries_never_stop_the_policy_task_good_ones_still_apply(runner):
    k, v = policy(0, "web", "db", 80)
    r = runner({**CLAIM, k: v, "endpoints/node1/ns0/p1": endpoint(1, "web")})
    assert list(r.dispatch()) == [endpoint(1, "web")["interface"]]
    for bad_key, bad in HOSTILE.items():
        if not bad_key.startswith("endpoints/node1/") and bad_key != "globalpolicies/deep":  # (JSON text below)
            state = r.put(bad_key, bad)
            assert state["running"] and state["settled"], bad_key
    for bad_key, raw in {"globalpolicies/not-json": "{", "globalpolicies/list": "[1, 2]",
                         "globalpolicies/nested": "[" * 100_000 + "]" * 100_000}.items():
        state = r.put(bad_key, raw)
        assert state["running"] and state["settled"], bad_key
    # good entries still go through after all that, each at once
    k2, v2 = policy(2, "db", "web", 443)
    state = r.put(k2, v2)
    assert state["running"] and state["settled"] and not state["refusal"] and not state["failures"]
    state = r.put("endpoints/node1/ns0/p2", endpoint(2, "db"))
    assert not state["refusal"] and set(r.dispatch()) == {endpoint(1, "web")["interface"], endpoint(2, "db")["interface"]}
    rejected_on_arrival = {"globalpolicies/huge", "endpoints/node2/ns0/no-dict"}  # over 1 MiB, not an object
    assert set(state["problems"]) == {k for k in HOSTILE if not k.startswith("endpoints/node1/")} - \
        rejected_on_arrival - {"globalpolicies/deep", "endpoints/node2/ns0/bad-ip"}
    assert "block" in r.ask(op="wait", key="endpoints/node2/ns0/bad-ip")["refusal"]  # node2 owns no block
    assert state["rejected"] >= 5


@pytest.mark.timeout(180)
def test_cni_add_of_a_pod_that_cannot_be_compiled_is_refused_and_the_pod_isolated(runner):
    k, v = policy(0, "web", "db", 80)
    r = runner({**CLAIM, k: v, "endpoints/node1/ns0/p1": endpoint(1, "web")})
    bad = {**endpoint(3, "web"), "labels": {"app": "no spaces allowed"}}
    answer = r.ask(op="add", namespace="ns0", pod="p3", endpoint=bad)
    assert "labels" in answer["refused"] and answer["isolated"] == [bad["interface"]]
    isolated = r.nft("list", "ruleset")  # the interface's packets are dropped, whatever the policies
    assert bad["interface"] in json.dumps(isolated)
    taken = {**endpoint(4, "db"), "ips": endpoint(1, "web")["ips"]}  # p1's address
    answer = r.ask(op="add", namespace="ns0", pod="p4", endpoint=taken)
    assert "already used" in answer["refused"] and taken["interface"] in answer["isolated"]
    assert r.dispatch()[endpoint(1, "web")["interface"]]  # p1 keeps its policies
    answer = r.ask(op="add", namespace="ns0", pod="p5", endpoint=endpoint(5, "db"))
    assert answer["refused"] is None and answer["running"]


@pytest.mark.timeout(180)
def test_a_flushed_ruleset_is_restored_by_the_drift_check(runner):
    k, v = policy(0, "web", "db", 80)
    r = runner({**CLAIM, k: v, "endpoints/node1/ns0/p1": endpoint(1, "web")})
    subprocess.run(["ip", "netns", "exec", r.ns, "nft", "flush", "ruleset"], check=True, timeout=30)
    wait_for(lambda: r.ask(op="wait", key=k)["repairs"], 10, interval=0.1, what="the repair")
    assert list(r.dispatch()) == [endpoint(1, "web")["interface"]]
