"""The compiler and renderers without packets: determinism, names, sharing, incremental changes, nft -c."""
from __future__ import annotations

import random
import re

import pytest

from policy import render_iptables, render_nft
from policy.binding import Binding, compile_ruleset
from policy.compiler import compile_policies
from policy.diff import diff
from policy.load import KINDS
from policy.model import Endpoints
from tests.netns import requires_root
from tests.policy.conftest import endpoints_doc, nft_check, offline_lab
from tests.policy.test_policy_enforcement import K8S_SCENARIOS, TORTIE_SCENARIOS, k8s, sel, tortie

ALL_SCENARIOS = [p for group in (K8S_SCENARIOS, TORTIE_SCENARIOS) for ps in group.values() for p in ps]
NFT_NAME = re.compile(r"^[a-z][a-z0-9]_[0-9a-f]{12}$")


def models(docs: list[dict]) -> list:
    return [KINDS[d["apiVersion"], d["kind"]].model_validate(d) for d in docs]


def endpoints(labels: dict | None = None, hosts: dict | None = None) -> Endpoints:
    return Endpoints.model_validate(endpoints_doc(offline_lab(), labels, hosts))


def unique(docs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def test_output_is_deterministic_whatever_the_input_order() -> None:
    docs = unique(ALL_SCENARIOS)
    text = render_nft.render(compile_ruleset(models(docs), endpoints()))
    ipt = render_iptables.restore_script(compile_ruleset(models(docs), endpoints()), 4, "a")
    for seed in range(3):
        shuffled = list(docs)
        random.Random(seed).shuffle(shuffled)
        eps = endpoints_doc(offline_lab())
        random.Random(seed).shuffle(eps["endpoints"])
        rs = compile_ruleset(models(shuffled), Endpoints.model_validate(eps))
        assert render_nft.render(rs) == text
        assert render_iptables.restore_script(rs, 4, "a") == ipt


def test_names_are_stable_short_and_never_from_user_text() -> None:
    hostile = [tortie("x", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "source": {"selector": "app == 'a\" } ; flush ruleset ; {'"}}]}),
        k8s("drop-table", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": {
            "matchExpressions": [{"key": "example.com/x", "operator": "In", "values": ["v1", "v2"]}]}}]}]})]
    rs = compile_ruleset(models(hostile), endpoints())
    for name in [*rs.sets, *rs.policy_chains, *rs.endpoint_chains]:
        assert NFT_NAME.match(name), name
        assert len(render_iptables.chain_name(name)) <= 28
        assert len(render_iptables.ipset_name(name, "a")) <= 31
    text = render_nft.render(rs)
    for line in text.splitlines():  # user text only ever appears inside a set's quoted comment, its quote replaced
        if "flush ruleset" in line:
            assert line.strip().startswith('comment "') and line.count('"') == 2, line
    assert compile_ruleset(models(hostile), endpoints()).policy_chains.keys() == rs.policy_chains.keys()


def test_equal_selectors_share_one_set() -> None:
    docs = [tortie(f"p{i}", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "source": {"selector": "tier == 'back' && app == 'client'"}}]}) for i in range(3)]
    docs.append(k8s("k", "y", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app": "client", "tier": "back"}}}]}]}))
    rs = compile_ruleset(models(docs), endpoints())
    addr_sets = [s for s in rs.sets.values() if s.kind == "addr"]
    # one set for the three global policies' selector (host endpoints included), one for the Kubernetes peer
    assert len(addr_sets) == 2 and all(s.elements == {offline_lab().pods["d"].ip} for s in addr_sets)


def test_endpoint_changes_never_touch_policy_chains_or_sets() -> None:
    """Relabelling changes set elements and dispatch entries; a new combination of policies for an endpoint
    adds that combination's endpoint chain; nothing else."""
    docs = models(K8S_SCENARIOS["and-or-expressions"] + TORTIE_SCENARIOS["selectors"])
    binding = Binding(compile_policies(docs, False), endpoints())
    before = binding.ruleset
    for labels in ({"a": {"app": "web"}}, {"d": {"app": "db"}}, {"b": {"app": "web"}, "a": {}},
                   {"c": {"app": "web", "tier": "x"}}, {}):
        eps = endpoints(labels)
        after = binding.update(eps)
        assert after == compile_ruleset(docs, eps), "an incremental update equals a full compile"
        d = diff(before, after)
        assert d is not None and not (d.added_sets or d.removed_sets or d.added_policy_chains
                                      or d.changed_policy_chains or d.removed_policy_chains)
        if labels == {"a": {"app": "web"}}:  # a only leaves a peer selector (tier exists, in team blue)
            assert d.elements_only() and list(d.set_elements.values()) == [(set(), {offline_lab().pods["a"].ip})]
        before = after


def test_a_changed_policy_replaces_only_its_own_chains() -> None:
    docs = unique(ALL_SCENARIOS)
    rs = compile_ruleset(models(docs), endpoints())
    changed = [dict(d) for d in docs]
    i = next(i for i, d in enumerate(changed) if d["kind"] == "GlobalNetworkPolicy")
    changed[i] = {**changed[i], "spec": {**changed[i]["spec"], "ingress": [{"action": "Deny", "protocol": "UDP"}]}}
    d = diff(rs, compile_ruleset(models(changed), endpoints()))
    assert d is not None and len(d.changed_policy_chains) == 1
    assert not (d.added_policy_chains or d.removed_policy_chains or d.added_sets)
    delta = render_nft.render_delta(d, compile_ruleset(models(changed), endpoints()))
    assert f"flush chain inet tortie {d.changed_policy_chains[0]}" in delta and "delete table" not in delta


def test_policy_types_and_default_deny_structure() -> None:
    rs = compile_ruleset(models([k8s("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})]),
                         endpoints())
    assert {c.direction for c in rs.policy_chains.values()} == {"ingress", "egress"}
    assert all(not c.rules for c in rs.policy_chains.values())
    assert set(rs.dispatch["workload_ingress"]) == {"tv1", "tv2"}  # the pods of namespace x
    assert "counter drop" in render_nft.render(rs).split("chain ei_")[1]


def test_host_endpoints_only_for_global_policies() -> None:
    hosts = {"role": "uplink"}
    rs = compile_ruleset(models([tortie("g", {"selector": "role == 'uplink'", "ingress": [{"action": "Deny"}]}),
                                 tortie("n", {"selector": "all()", "ingress": [{"action": "Deny"}]}, ns="x")]),
                         endpoints(hosts=hosts))
    assert set(rs.dispatch["host_ingress"]) == {"te1", "te2"}
    assert set(rs.dispatch["workload_ingress"]) == {"tv1", "tv2"}


@requires_root
@pytest.mark.netns
def test_every_scenario_passes_nft_check(check_ns: str) -> None:
    """nft -c accepts every scenario's ruleset, IPv6 and SCTP included, and the incremental scripts."""
    docs = unique(ALL_SCENARIOS) + [tortie("v6", {"selector": "all()", "ingress": [
        {"action": "Allow", "protocol": "SCTP", "source": {"nets": ["fd00::/64", "10.0.0.0/8"]},
         "destination": {"ports": [9000, "9100:9200", "http"], "notPorts": [9150]}},
        {"action": "Deny", "protocol": "ICMPv6", "icmp": {"type": 128}, "notICMP": {"type": 128, "code": 1}}]})]
    rs = compile_ruleset(models(docs), endpoints())
    assert rs.ipv6
    r = nft_check(check_ns, render_nft.render(rs))
    assert r.returncode == 0, r.stderr
    assert "meta l4proto 132" in render_nft.render(rs) and "ip6 saddr fd00::/64" in render_nft.render(rs)


def test_recompiling_reuses_unchanged_policies() -> None:
    docs = unique(ALL_SCENARIOS)
    policies = models(docs)
    first = compile_policies(policies, False)
    i = next(i for i, d in enumerate(docs) if d["kind"] == "GlobalNetworkPolicy")
    changed = list(policies)
    changed[i] = models([{**docs[i], "spec": {"ingress": [{"action": "Deny", "protocol": "UDP"}]}}])[0]
    again = compile_policies(changed, False, previous=first)
    fresh = compile_policies(models([*docs[:i], {**docs[i], "spec": {"ingress": [
        {"action": "Deny", "protocol": "UDP"}]}}, *docs[i + 1:]]), False)
    assert (again.policy_chains, again.targets, again.groups, again.nets, again.named_ports) == \
        (fresh.policy_chains, fresh.targets, fresh.groups, fresh.nets, fresh.named_ports)
    reused = [pid for pid, e in again.compiled.items() if e is first.compiled.get(pid)]
    assert len(reused) == len(policies) - 1
