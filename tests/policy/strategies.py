"""Hypothesis strategies: random policies over the lab's pods and labels, and relabelled endpoints."""
from __future__ import annotations

from hypothesis import strategies as st

SELECTORS = ["all()", "app == 'web'", "app == 'db'", "app != 'web'", "has(tier)", "!has(tier)",
             "app in {'web', 'client'}", "tier not in {'front'}", "app == 'web' && tier == 'front'",
             "app == 'db' || tier == 'back'", "app starts with 'cl'"]
NS_SELECTORS = ["all()", "team == 'blue'", "team == 'green'", "team != 'blue'"]
NETS = ["10.99.0.0/24", "10.99.0.2/32", "10.99.0.4/30", "10.99.0.0/29", "192.168.0.0/16", "fd00::/64"]
PORTS = [80, 81, 8080, 53, 5353, "80:81", "50:100", "http", "dns"]
LABEL_VALUES = {"app": ["web", "db", "client"], "tier": ["front", "back"]}


def _entity(draw, with_ports: bool) -> dict:
    e: dict = {}
    for key, choices in (("selector", SELECTORS), ("notSelector", SELECTORS), ("namespaceSelector", NS_SELECTORS)):
        if draw(st.integers(0, 3)) == 0:
            e[key] = draw(st.sampled_from(choices))
    for key in ("nets", "notNets"):
        if draw(st.integers(0, 4)) == 0:
            e[key] = draw(st.lists(st.sampled_from(NETS), min_size=1, max_size=2, unique=True))
    if with_ports:
        for key in ("ports", "notPorts"):
            if draw(st.integers(0, 2)) == 0:
                e[key] = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))
    return e


@st.composite
def tortie_rule(draw) -> dict:
    rule: dict = {"action": draw(st.sampled_from(["Allow", "Allow", "Deny", "Log", "Pass"]))}
    proto = draw(st.sampled_from([None, None, "TCP", "UDP", "tcp", 17, "ICMP", "SCTP"]))
    if proto is not None:
        rule["protocol"] = proto
    if draw(st.integers(0, 5)) == 0:
        rule["notProtocol"] = draw(st.sampled_from(["TCP", "UDP"]))
    if proto == "ICMP" and draw(st.booleans()):
        rule["icmp"] = {"type": 8, "code": 0}
    with_ports = proto in ("TCP", "UDP", "tcp", 17, "SCTP")
    for side in ("source", "destination"):
        e = _entity(draw, with_ports and side == "destination")
        if e:
            rule[side] = e
    return rule


@st.composite
def tortie_policy(draw, name: str) -> dict:
    spec: dict = {"selector": draw(st.sampled_from(SELECTORS))}
    if draw(st.booleans()):
        spec["order"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(tortie_rule(), max_size=3))
    if draw(st.integers(0, 2)) == 0:
        spec["egress"] = draw(st.lists(tortie_rule(), max_size=2))
    if draw(st.integers(0, 3)) == 0:
        spec["types"] = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if draw(st.booleans()):
        return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}
    return {"apiVersion": "tortie.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(["x", "y"]))}, "spec": spec}


@st.composite
def label_selector(draw) -> dict:
    out: dict = {}
    if draw(st.booleans()):
        key = draw(st.sampled_from(list(LABEL_VALUES)))
        out["matchLabels"] = {key: draw(st.sampled_from(LABEL_VALUES[key]))}
    if draw(st.integers(0, 2)) == 0:
        key = draw(st.sampled_from(list(LABEL_VALUES)))
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        req: dict = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            req["values"] = draw(st.lists(st.sampled_from(LABEL_VALUES[key]), min_size=1, max_size=2, unique=True))
        out["matchExpressions"] = [req]
    return out


@st.composite
def k8s_peer(draw) -> dict:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        block = {"cidr": "10.99.0.0/24"}
        if draw(st.booleans()):
            block["except"] = [draw(st.sampled_from(["10.99.0.2/32", "10.99.0.4/31", "10.99.0.0/30"]))]
        return {"ipBlock": block}
    peer: dict = {}
    if kind in (1, 3):
        peer["podSelector"] = draw(label_selector())
    if kind in (2, 3):
        peer["namespaceSelector"] = draw(st.sampled_from([{}, {"matchLabels": {"team": "blue"}},
                                                          {"matchLabels": {"team": "green"}}]))
    return peer


@st.composite
def k8s_port(draw) -> dict:
    port: dict = {}
    proto = draw(st.sampled_from([None, "TCP", "UDP", "SCTP"]))
    if proto:
        port["protocol"] = proto
    choice = draw(st.sampled_from([None, 80, 81, 53, 8080, "http", "dns", "range"]))
    if choice == "range":
        port["port"], port["endPort"] = 80, 81
    elif choice is not None:
        port["port"] = choice
    return port


@st.composite
def k8s_policy(draw, name: str) -> dict:
    spec: dict = {"podSelector": draw(label_selector())}
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        if draw(st.integers(0, 2)) > (0 if direction == "ingress" else 1):
            rules = []
            for _ in range(draw(st.integers(0, 2))):
                rule: dict = {}
                if draw(st.booleans()):
                    rule[peers_key] = draw(st.lists(k8s_peer(), min_size=1, max_size=2))
                if draw(st.booleans()):
                    rule["ports"] = draw(st.lists(k8s_port(), min_size=1, max_size=2))
                rules.append(rule)
            spec[direction] = rules
    if draw(st.integers(0, 3)) == 0:
        spec["policyTypes"] = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(["x", "y"]))}, "spec": spec}


@st.composite
def policy_docs(draw, max_size: int = 4) -> list[dict]:
    n = draw(st.integers(1, max_size))
    return [draw(st.one_of(tortie_policy(f"p{i}"), k8s_policy(f"p{i}"))) for i in range(n)]


@st.composite
def relabels(draw, pods: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for pod in draw(st.lists(st.sampled_from(pods), max_size=2, unique=True)):
        labels = {}
        for key, values in LABEL_VALUES.items():
            if draw(st.booleans()):
                labels[key] = draw(st.sampled_from(values))
        out[pod] = labels
    return out
