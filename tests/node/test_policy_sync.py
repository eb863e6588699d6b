"""The daemon's policy path: datastore entries -> ruleset, one changed entry at a time (pure), and hostile entries."""
from __future__ import annotations

import random

import pytest

from policy.binding import bind_endpoints, compile_ruleset
from policy.compiler import compile_policies, needs_ipv6
from policy.sync_state import SyncState, remote_interface

NODE = "node1"


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
    policies, endpoints = state._policies(), state._endpoints()
    if ipv6 is None:
        return compile_ruleset(policies, endpoints)
    assert ipv6 or not needs_ipv6(policies, endpoints)
    return bind_endpoints(compile_policies(policies, ipv6), endpoints)


@pytest.mark.parametrize("seed", range(6))
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
                k = f"endpoints/{NODE if i % 2 else 'node2'}/ns{i % 3}/p{i}"  # no conflicts here
                changes[k] = None if k in entries and rnd.random() < 0.3 else \
                    endpoint(i, rnd.choice(apps), v6=seed % 2 == 1 and rnd.random() < 0.1)
            elif what < 0.85:
                k, v = policy(rnd.randrange(12), rnd.choice(apps), rnd.choice(apps), rnd.choice([80, 443]))
                changes[k] = None if k in entries and rnd.random() < 0.3 else v
            else:
                k = f"namespaces/ns{rnd.randrange(3)}"
                changes[k] = {"labels": {"team": rnd.choice(["blue", "green"])}}
        for k, v in changes.items():
            if v is None:
                entries.pop(k, None)
            else:
                entries[k] = v
        got = state.update(changes)
        assert got.ruleset == full_compile(entries, got.ruleset.ipv6), f"step {step}: {changes}"
        assert not got.problems


def test_remote_pods_get_stand_in_interfaces():
    state = SyncState(NODE)
    out = state.update({"endpoints/node2/ns0/p1": endpoint(1, "web"), "endpoints/node1/ns0/p2": endpoint(2, "web"),
                        **dict([policy(0, "web", "web", 80)])})
    ifaces = set(out.ruleset.dispatch["workload_ingress"])
    assert ifaces == {remote_interface("node2", "ns0", "p1"), endpoint(2, "web")["interface"]}


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
    assert out.ruleset == full_compile(good)
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
