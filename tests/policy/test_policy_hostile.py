"""Hostile and broken input never crashes the policy engine: clean ValidationError / SelectorError, bounded work."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policy import selector as sel
from policy.binding import compile_ruleset
from policy.compiler import _exclude
from policy.model import (MAX_EXCEPT, MAX_POLICY_EXPANSION, MAX_RULE_EXPANSION, Endpoint, Endpoints,
                          GlobalNetworkPolicy, K8sNetworkPolicy, TortieNetworkPolicy)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def gnp(spec: dict) -> dict:
    return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "x"}, "spec": spec}


def k8s(spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("text, reason", [
    ("(" * 3000 + "a == 'b'" + ")" * 3000, "deeper than 64 levels"),
    ("!" * 5000 + "has(a)", "deeper than 64 levels"),
    ("a == 'b' || " * 2000 + "a == 'c'", "the limit is 16384"),
])
def test_pathological_selectors_are_refused(text: str, reason: str) -> None:
    """These raised RecursionError (killing the policy task) or took seconds before."""
    with pytest.raises(sel.SelectorError, match=reason):
        sel.parse(text)
    with pytest.raises(ValidationError, match=reason):
        GlobalNetworkPolicy.model_validate(gnp({"selector": text}))


def test_selectors_up_to_the_limits_parse() -> None:
    deep = "(" * sel.MAX_DEPTH + "a == 'b'" + ")" * sel.MAX_DEPTH
    assert sel.parse(deep).matches({"a": "b"})
    wide = " || ".join(f"a == 'v{i}'" for i in range(1000))
    assert len(wide) <= sel.MAX_LENGTH and sel.parse(wide).matches({"a": "v999"})
    assert sel.parse("  \t a == 'x'  \n").matches({"a": "x"})


@FUZZ
@given(st.text(alphabet="()!&|=' \"{},abc-./", max_size=300))
def test_selector_junk_only_raises_selector_error(text: str) -> None:
    try:
        s = sel.parse(text)
    except sel.SelectorError:
        return
    assert sel.parse(str(s)) == s  # what parses prints back to an equal selector


@FUZZ
@given(st.integers(0, 400), st.sampled_from(["(", "!", "!(", "(!"]))
def test_any_nesting_depth_is_a_clean_answer(depth: int, opener: str) -> None:
    closer = "".join(")" for c in opener * depth if c == "(")
    text = opener * depth + "has(a)" + closer
    try:
        sel.parse(text)
    except sel.SelectorError as e:
        assert "deeper than" in str(e)


@pytest.mark.parametrize("doc, field", [
    (gnp({"ingress": [{"action": "Allow", "source": {"nets": ["fe80::1%eth0/128"]}}]}), "ingress.0.source.nets.0"),
    (k8s({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fe80::/64", "except": ["fe80::1%2/128"]}}]}]}),
     "except.0"),
])
def test_scoped_ipv6_networks_are_refused(doc: dict, field: str) -> None:
    """nft refuses `fe80::1%eth0`; the model accepted it before."""
    model = K8sNetworkPolicy if doc["kind"] == "NetworkPolicy" and "podSelector" in doc["spec"] else GlobalNetworkPolicy
    with pytest.raises(ValidationError, match="scoped IPv6 address") as e:
        model.model_validate(doc)
    assert field in str(e.value).replace("\n", " ").replace(" ", "") or field.replace(".", "") in str(e.value)


def test_scoped_ipv6_endpoint_addresses_are_refused() -> None:
    with pytest.raises(ValidationError, match="scoped IPv6 address fe80::1%eth0"):
        Endpoint.model_validate({"namespace": "x", "name": "a", "ips": ["fe80::1%eth0"], "interface": "tv1"})


def test_rule_expansion_is_bounded() -> None:
    """ORed ports multiply: 100 source ports x 100 destination ports were 10,000 kernel rules per family."""
    ports = list(range(1, 101))
    rule = {"action": "Allow", "protocol": "TCP", "source": {"ports": ports}, "destination": {"ports": ports}}
    with pytest.raises(ValidationError, match=f"expand to 10000 kernel rules, the limit is {MAX_RULE_EXPANSION}"):
        GlobalNetworkPolicy.model_validate(gnp({"ingress": [rule]}))
    peers = [{"podSelector": {"matchLabels": {"a": str(i)}}} for i in range(100)]
    with pytest.raises(ValidationError, match="100 peers times 100 ports"):
        K8sNetworkPolicy.model_validate(k8s({"podSelector": {}, "ingress": [
            {"from": peers, "ports": [{"port": p} for p in ports]}]}))
    many = [{"action": "Allow", "protocol": "TCP", "source": {"ports": list(range(1, 33))},
             "destination": {"ports": list(range(1, 33))}}] * (MAX_POLICY_EXPANSION // 1024 + 1)
    with pytest.raises(ValidationError, match=f"the limit is {MAX_POLICY_EXPANSION}"):
        TortieNetworkPolicy.model_validate({**gnp({"ingress": many}), "kind": "NetworkPolicy"})


def test_ipblock_except_is_bounded_and_linear() -> None:
    excepts = [f"10.{i % 256}.{i // 256}.1/32" for i in range(MAX_EXCEPT + 1)]
    doc = k8s({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}]}]})
    with pytest.raises(ValidationError, match="except"):
        K8sNetworkPolicy.model_validate(doc)
    doc["spec"]["ingress"][0]["from"][0]["ipBlock"]["except"] = excepts[:MAX_EXCEPT]
    policy = K8sNetworkPolicy.model_validate(doc)
    rs = compile_ruleset([policy], Endpoints())
    assert any(len(s.elements) > MAX_EXCEPT for s in rs.sets.values() if s.kind == "net")


@FUZZ
@given(st.lists(st.integers(0, 255), max_size=40, unique=True))
def test_exclude_is_the_set_difference(holes: list[int]) -> None:
    import ipaddress
    net = ipaddress.ip_network("10.0.0.0/24")
    excepts = [ipaddress.ip_network(f"10.0.0.{h}/32") for h in holes]
    pieces = _exclude(net, excepts)
    covered = {int(a) & 255 for p in pieces for a in p}
    assert covered == set(range(256)) - set(holes)
    assert sum(p.num_addresses for p in pieces) == 256 - len(holes)  # disjoint


_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6),
                  st.sampled_from(["10.0.0.0/8", "fe80::1%eth0", "80:90", "TCP", "all()", "((", "Allow", "Ingress"]))
_KEYS = st.sampled_from(["metadata", "spec", "name", "namespace", "labels", "selector", "ingress", "egress", "action",
                         "protocol", "source", "destination", "nets", "ports", "icmp", "type", "code", "order",
                         "types", "podSelector", "matchLabels", "matchExpressions", "from", "to", "ipBlock", "cidr",
                         "except", "port", "endPort", "notICMP", "endpoints", "namespaces", "ips", "interface"])
_SHAPES = st.recursive(_LEAF, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_KEYS, c, max_size=4)),
                       max_leaves=20)


@FUZZ
@given(st.sampled_from([TortieNetworkPolicy, K8sNetworkPolicy, GlobalNetworkPolicy, Endpoints]), _SHAPES)
def test_random_shapes_only_raise_validation_error(model: type, data: object) -> None:
    if isinstance(data, dict) and model is not Endpoints:
        head = k8s({}) if model is K8sNetworkPolicy else gnp({})
        if model is TortieNetworkPolicy:
            head["kind"] = "NetworkPolicy"
        data = {**head, **data}
    try:
        model.model_validate(data)
    except ValidationError:
        pass
