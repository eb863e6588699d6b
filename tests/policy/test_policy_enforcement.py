"""Real packets through real nftables / iptables: every feature, compared with the reference evaluator."""
from __future__ import annotations

import socket

import pytest

from tests.netns import requires_root, run_in_netns

from tests.policy.conftest import PolicyLab, endpoints_doc

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]
BACKENDS = ["nft", "iptables"]


def k8s(name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def tortie(name: str, spec: dict, ns: str | None = None) -> dict:
    if ns is None:
        return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}
    return {"apiVersion": "tortie.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def sel(**labels: str) -> dict:
    return {"matchLabels": labels}


K8S_SCENARIOS = {
    # pod a accepts TCP 80 from pods of its namespace labelled app=db only
    "podSelector": [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [
        {"from": [{"podSelector": sel(app="db")}], "ports": [{"port": 80}]}]})],
    # pods of namespace y accept anything from namespaces with team=blue
    "namespaceSelector": [k8s("y-in", "y", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": sel(team="blue")}]}]})],
    # both in one peer mean AND; two peers mean OR; matchExpressions of every operator
    "and-or-expressions": [k8s("c", "y", {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["web", "x"]}, {"key": "tier", "operator": "DoesNotExist"}]},
        "ingress": [{"from": [
            {"namespaceSelector": sel(team="blue"), "podSelector": {"matchExpressions": [
                {"key": "tier", "operator": "Exists"}]}},
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}}]}]})],
    # ipBlock with except: the whole pod range but pod b; UDP only
    "ipBlock-except": [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.99.0.0/24", "except": ["10.99.0.3/32"]}}],
         "ports": [{"protocol": "UDP"}]}]})],
    # named ports resolve per destination pod (a: http=80, b: http=8080, c: http=81); endPort ranges
    "named-and-range-ports": [k8s("all-x", "x", {"podSelector": {}, "ingress": [
        {"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}]}),
        k8s("all-y", "y", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]})],
    # policyTypes defaulting: egress rules make an egress policy; listed Egress with no rules denies all egress
    "egress-and-defaulting": [k8s("d-out", "y", {"podSelector": sel(app="client"), "egress": [
        {"to": [{"podSelector": sel(app="web")}], "ports": [{"port": 80}, {"port": 81}]}]}),
        k8s("b-none", "x", {"podSelector": sel(app="db"), "policyTypes": ["Egress"]})],
    # an empty ingress list under policyTypes Ingress denies all ingress; a second policy can still allow
    "deny-all-then-allow": [k8s("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}),
                            k8s("allow-dns", "x", {"podSelector": sel(app="web"), "ingress": [
                                {"ports": [{"port": 53, "protocol": "UDP"}]}]})],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", list(K8S_SCENARIOS))
def test_kubernetes_network_policy(plab: PolicyLab, backend: str, scenario: str) -> None:
    plab.apply(backend, K8S_SCENARIOS[scenario])
    got = plab.assert_matrix()
    assert not all(got.values()), "a scenario must deny something"
    assert any(got.values()), "a scenario must allow something"


TORTIE_SCENARIOS = {
    # order: a Deny at order 10 wins over an Allow at order 20; Log continues to the next rule
    "order-deny-log": [
        tortie("deny-81", {"order": 10, "selector": "app == 'web'", "ingress": [
            {"action": "Log", "protocol": "TCP"},
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": [81]}}]}, ns="x"),
        tortie("allow-tcp", {"order": 20, "selector": "app == 'web'", "ingress": [
            {"action": "Allow", "protocol": "tcp"}]}, ns="x")],
    # Pass skips the remaining policies (the endpoint's default allows); notProtocol
    "pass-notProtocol": [
        tortie("pass-udp", {"order": 1, "selector": "all()", "ingress": [
            {"action": "Pass", "protocol": "UDP", "destination": {"ports": [53]}}]}),
        tortie("only-non-udp", {"order": 2, "selector": "all()", "ingress": [
            {"action": "Allow", "notProtocol": "udp"}]})],
    # nets / notNets, ports as ranges, notPorts
    "nets-ports": [tortie("nets", {"selector": "has(app)", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.99.0.0/30", "10.99.0.4/31"],
                                                          "notNets": ["10.99.0.2/32"]},
         "destination": {"ports": ["80:8080"], "notPorts": [81]}},
        {"action": "Allow", "protocol": "UDP", "destination": {"notPorts": ["dns"]}}]})],
    # selector / notSelector / namespaceSelector in rules; a GlobalNetworkPolicy across namespaces
    "selectors": [tortie("sel", {"selector": "app in {'web', 'db'}", "ingress": [
        {"action": "Allow", "source": {"namespaceSelector": "team == 'green'", "notSelector": "app == 'web'"}},
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "app starts with 'we'"},
         "destination": {"ports": ["http"]}}]})],
    # egress rules of a namespaced policy: selector scoped to its namespace; destination named port
    "egress": [tortie("egress", {"selector": "app == 'web'", "types": ["Egress"], "egress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'db'", "ports": ["http"]}},
        {"action": "Deny", "protocol": "UDP"},
        {"action": "Allow", "destination": {"namespaceSelector": "all()", "selector": "tier == 'back'"}}]}, ns="x")],
    # Kubernetes and Tortie together: Tortie order 100 runs before the Kubernetes policy (order 1000)
    "mixed": [tortie("deny-d", {"order": 100, "selector": "all()", "ingress": [
        {"action": "Deny", "source": {"selector": "app == 'client'"}}]}),
        k8s("web", "x", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", list(TORTIE_SCENARIOS))
def test_tortie_policy(plab: PolicyLab, backend: str, scenario: str) -> None:
    plab.apply(backend, TORTIE_SCENARIOS[scenario])
    got = plab.assert_matrix()
    assert not all(got.values()) and any(got.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_and_log_explicitly(plab: PolicyLab, backend: str) -> None:
    """Hand-checked expectations (not only the reference): Deny at order 10 beats Allow at order 20."""
    plab.apply(backend, TORTIE_SCENARIOS["order-deny-log"])
    plab.assert_matrix({("b", "a", "tcp", 80): True, ("b", "a", "tcp", 81): False, ("d", "c", "tcp", 81): True,
                        ("b", "a", "udp", 53): False, ("b", "c", "udp", 53): True})
    show = plab.tortie("show").stdout
    assert "tortie.NetworkPolicy/x/deny-81" in show and "log" in show


@pytest.mark.parametrize("backend", BACKENDS)
def test_icmp_type(plab: PolicyLab, backend: str) -> None:
    plab.apply(backend, [tortie("icmp", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}, "source": {"selector": "app == 'db'"}},
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8}}]}, ns="x")])
    a = plab.lab.pods["a"].ip
    assert plab.lab.probe(plab.lab.pods["b"].ns, [(a, "icmp", 8)]) == {(a, "icmp", 8): True}
    assert plab.lab.probe(plab.lab.pods["d"].ns, [(a, "icmp", 8)]) == {(a, "icmp", 8): False}


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_ports(plab: PolicyLab, backend: str) -> None:
    plab.apply(backend, [tortie("sport", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"ports": ["40000:40100"]}}]}, ns="x")])
    a = plab.lab.pods["a"].ip
    got = plab.lab.probe(plab.lab.pods["b"].ns, [(a, "tcp", 80, 40050), (a, "tcp", 81, 40200)])
    assert got == {(a, "tcp", 80, 40050): True, (a, "tcp", 81, 40200): False}


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_endpoint_bgp_only_from_peers(plab: PolicyLab, backend: str) -> None:
    """A GlobalNetworkPolicy on host endpoints protects the node: BGP (179) only from the configured peer."""
    policy = [tortie("bgp", {"order": 1, "selector": "role == 'node-uplink'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": [plab.lab.peers["peer1"].ip + "/32"]},
         "destination": {"ports": [179]}},
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [179]}},
        {"action": "Allow"}]})]
    plab.apply(backend, policy, host_labels={"role": "node-uplink"})
    for peer, want in (("peer1", True), ("peer2", False)):
        host_ip = plab.lab.peers[peer].ip.rsplit(".", 1)[0] + ".1"
        assert plab.lab.probe(plab.lab.peers[peer].ns, [(host_ip, "tcp", 179)]) == {(host_ip, "tcp", 179): want}
    plab.assert_matrix()  # the pods are not host endpoints: unaffected


def test_sctp_rules_compile_and_check(plab: PolicyLab) -> None:
    """The compiler emits SCTP rules and nft / iptables accept them; packets need a kernel with SCTP."""
    policies = [k8s("sctp", "x", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 9000,
                                                                             "endPort": 9010}]}]}),
                tortie("sctp", {"selector": "all()", "ingress": [{"action": "Allow", "protocol": "SCTP",
                                                                   "destination": {"ports": [7000, "http"]}}]})]
    for backend in BACKENDS:
        plab.apply(backend, policies)
    compiled = plab.tortie("compile", "--endpoints", str(plab.dir / "endpoints.yaml"),
                           str(plab.dir / "policies.yaml")).stdout
    assert "meta l4proto 132 th dport 9000-9010" in compiled
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError as e:
        pytest.skip(f"SCTP packets not tested: this kernel has no SCTP ({e.strerror})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_live_changes_and_relabel(plab: PolicyLab, backend: str) -> None:
    """Policies added, changed and removed, endpoints relabelled: incremental where possible, always exact."""
    base = [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [
        {"from": [{"podSelector": sel(app="db")}, {"namespaceSelector": {}, "podSelector": sel(tier="back")}]}]})]
    assert "(full)" in plab.apply(backend, base).stdout
    plab.assert_matrix({("b", "a", "tcp", 80): True, ("c", "a", "tcp", 80): False})

    # relabel: c joins the peer selector (set elements only)
    relabel = {"c": {"app": "web", "tier": "back"}}
    assert "(incremental)" in plab.apply(backend, base, labels=relabel).stdout
    plab.assert_matrix({("c", "a", "tcp", 80): True})

    # relabel: b leaves the target selector of nothing, d becomes selected by the policy (endpoint chain moves)
    relabel2 = {**relabel, "b": {"app": "web"}}
    assert "(incremental)" in plab.apply(backend, base, labels=relabel2).stdout
    plab.assert_matrix({("b", "a", "tcp", 80): False, ("a", "b", "tcp", 80): False})

    # add a policy, change it, remove it
    extra = tortie("deny-udp", {"order": 1, "selector": "all()", "ingress": [{"action": "Deny", "protocol": "UDP"},
                                                                          {"action": "Allow"}]})
    assert "(incremental)" in plab.apply(backend, [*base, extra], labels=relabel2).stdout
    plab.assert_matrix({("d", "c", "udp", 53): False})
    extra["spec"]["ingress"][0]["destination"] = {"ports": [5353]}
    assert "(incremental)" in plab.apply(backend, [*base, extra], labels=relabel2).stdout
    plab.assert_matrix({("d", "c", "udp", 53): True, ("d", "c", "udp", 5353): False})
    assert "(incremental)" in plab.apply(backend, base, labels=relabel2).stdout
    plab.assert_matrix()
    assert "(unchanged)" in plab.apply(backend, base, labels=relabel2).stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_applies_nothing(plab: PolicyLab, backend: str) -> None:
    good = [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": []})]
    plab.apply(backend, good)
    before = plab.assert_matrix({("b", "a", "tcp", 80): False})
    bad = {
        "malformed": ("kind: [unclosed", "invalid YAML"),
        "unknown-field": ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
                          "spec: {selektor: all()}\n", "spec.selektor: Extra inputs are not permitted"),
        "bad-cidr": ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec:\n"
                     "  ingress: [{action: Allow, source: {nets: [10.0.0.300/8]}}]\n", "invalid CIDR"),
        "port-range": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n"
                       "  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n", "ingress[0].ports[0].port"),
        "selector": ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
                     "spec: {selector: \"app == web\"}\n", "does not parse"),
    }
    for name, (text, reason) in bad.items():
        text = "---\n" + "apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: ok}\nspec: {}\n---\n" + text
        path = plab.write(f"{name}.yaml", text)
        p = plab.tortie("apply", "--backend", backend, "--endpoints", str(plab.dir / "endpoints.yaml"), str(path),
                        check=False)
        assert p.returncode == 1, name
        assert str(path) in p.stderr and "document 2" in p.stderr and reason in p.stderr, p.stderr
        assert "nothing applied" in p.stderr
    assert plab.matrix() == before


def test_kernel_rejection_keeps_previous_ruleset(plab: PolicyLab) -> None:
    """Transactions the kernel refuses change nothing: an ipset of the next slot that another tool's rule holds
    (iptables), a script whose last line is wrong (nft)."""
    good = [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": sel(app="db")}]}]})]
    wider = [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"namespaceSelector": {}}]}]})]
    host = plab.lab.host
    plab.apply("iptables", good)  # the first full apply uses slot b, the next one slot a
    before = plab.assert_matrix({("b", "a", "tcp", 80): True, ("c", "a", "tcp", 80): False})
    out = plab.tortie("compile", "--backend", "iptables", "--endpoints", str(plab.dir / "endpoints.yaml"),
                      str(plab.write("wider.yaml", wider))).stdout
    name = next(line.split()[1] for line in out.splitlines() if line.startswith("create "))[:-2]
    plab.lab.run(host, "iptables-legacy", "-N", "OTHER")
    for slot in "ab":  # the incremental apply fails, and so does the full apply it falls back to
        plab.lab.run(host, "ipset", "create", f"{name}-{slot}", "hash:ip")
        plab.lab.run(host, "iptables-legacy", "-A", "OTHER", "-m", "set", "--match-set", f"{name}-{slot}", "src")
    try:
        p = plab.apply("iptables", wider, check=False)
        assert p.returncode == 1 and "previous ruleset is still enforced" in p.stderr, p.stderr
        assert plab.matrix() == before
    finally:
        plab.lab.run(host, "iptables-legacy", "-F", "OTHER")
        plab.lab.run(host, "iptables-legacy", "-X", "OTHER")
        for slot in "ab":
            plab.lab.run(host, "ipset", "destroy", f"{name}-{slot}")

    plab.tortie("flush")
    plab.apply("nft", good)
    code = f"""
import sys
from pathlib import Path
from policy import render_nft
from policy.applier import PolicyApplier
from policy.binding import compile_ruleset
from policy.kernel import ApplyError
from policy.load import load_endpoints, load_policies
render = render_nft.render
render_nft.render = lambda rs: render(rs) + "add rule inet tortie no-such-chain drop\\n"
rs = compile_ruleset(load_policies(["{plab.dir / 'wider.yaml'}"]), load_endpoints("{plab.dir / 'endpoints.yaml'}"))
try:
    PolicyApplier("nft", Path("{plab.dir / 'state'}")).apply(rs, full=True)
except ApplyError as e:
    print("rejected:", e)
"""
    assert "rejected:" in run_in_netns(host, code).stdout
    assert plab.matrix() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_tools_untouched(plab: PolicyLab, backend: str) -> None:
    host = plab.lab.host
    plab.lab.run(host, "nft", "add table inet other")
    plab.lab.run(host, "nft", "add chain inet other c { type filter hook input priority 5; }")
    plab.lab.run(host, "nft", "add rule inet other c tcp dport 9 counter accept")
    plab.lab.run(host, "iptables-legacy", "-N", "OTHER")
    plab.lab.run(host, "iptables-legacy", "-A", "INPUT", "-j", "OTHER")
    plab.lab.run(host, "ipset", "create", "other", "hash:ip")
    try:
        plab.apply(backend, K8S_SCENARIOS["podSelector"])
        plab.tortie("flush")
        assert "tcp dport 9 counter" in plab.lab.run(host, "nft", "list", "table", "inet", "other")
        saved = plab.lab.run(host, "iptables-legacy-save")
        assert "-A INPUT -j OTHER" in saved and "TT-" not in saved
        assert plab.lab.run(host, "ipset", "list", "-n").split() == ["other"]
        assert "tortie" not in plab.lab.run(host, "nft", "list", "tables")
    finally:
        plab.lab.run(host, "nft", "delete table inet other", check=False)
        plab.lab.run(host, "iptables-legacy", "-D", "INPUT", "-j", "OTHER", check=False)
        plab.lab.run(host, "iptables-legacy", "-X", "OTHER", check=False)
        plab.lab.run(host, "ipset", "destroy", "other", check=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_counters_show_and_prometheus(plab: PolicyLab, backend: str) -> None:
    plab.apply(backend, K8S_SCENARIOS["podSelector"])
    a, b = plab.lab.pods["a"], plab.lab.pods["b"]
    for _ in range(3):
        assert plab.lab.probe(b.ns, [(a.ip, "tcp", 80)]) == {(a.ip, "tcp", 80): True}
    rows = [l.split() for l in plab.tortie("show").stdout.splitlines() if l.startswith("k8s.NetworkPolicy/x/a")]
    assert rows and rows[0][1:4] == ["ingress", "0", "allow"] and int(rows[0][4]) == 3, rows
    prom = plab.tortie("show", "--prometheus").stdout
    assert ('tortie_policy_rule_packets_total{action="allow",direction="ingress",policy="k8s.NetworkPolicy/x/a",'
            'rule="0"} 3.0') in prom


@pytest.mark.parametrize("backend", BACKENDS)
def test_changes_while_traffic_flows_never_open_or_cut(plab: PolicyLab, backend: str) -> None:
    """Probes run without pause while policies are added, changed and removed and pods relabelled: a pair every
    version denies never gets through, a pair every version allows never fails."""
    import threading

    versions = [
        [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": sel(app="db")}]}]})],
        [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": sel(app="db")}],
                                                                    "ports": [{"port": 80}, {"port": 81}]}]}),
         tortie("d", {"order": 5, "selector": "all()", "ingress": [{"action": "Deny", "protocol": "UDP"}]})],
        [k8s("a", "x", {"podSelector": {}, "ingress": [{"from": [{"podSelector": sel(app="db")}],
                                                        "ports": [{"port": 80}]}]})],
    ]
    a, b, d = (plab.lab.pods[n] for n in "abd")
    allowed, denied = (a.ip, "tcp", 80), (a.ip, "tcp", 8080)
    plab.apply(backend, versions[0])
    seen: dict[str, list[bool]] = {"allowed": [], "denied": []}
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            seen["allowed"].append(plab.lab.probe(b.ns, [allowed], timeout=1.0)[allowed])
            seen["denied"].append(plab.lab.probe(d.ns, [denied], timeout=0.3)[denied])

    t = threading.Thread(target=probe)
    t.start()
    try:
        for k in range(6):
            labels = {"c": {"app": "db"}} if k % 2 else {}
            p = plab.tortie("apply", "--backend", backend, "--endpoints",
                            str(plab.write("endpoints.yaml", endpoints_doc(plab.lab, labels))),
                            str(plab.write("policies.yaml", versions[k % len(versions)])))
            assert "applied" in p.stdout
    finally:
        stop.set()
        t.join(30)
    assert seen["allowed"] and all(seen["allowed"]), seen["allowed"]
    assert seen["denied"] and not any(seen["denied"]), seen["denied"]


def test_kernel_drift_is_repaired_by_a_full_apply(plab: PolicyLab) -> None:
    """Someone changed our table behind our back: the incremental change the kernel refuses falls back to a full
    apply, which puts the whole intended ruleset back."""
    import re

    base = [k8s("a", "x", {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": sel(app="db")}]}]})]
    plab.apply("nft", base)
    b = plab.lab.pods["b"]
    listing = plab.lab.run(plab.lab.host, "nft", "list", "table", "inet", "tortie")
    name = re.search(r"set (a4_\w+) \{[^}]*elements = \{ " + re.escape(b.ip) + " ", listing)[1]
    plab.lab.run(plab.lab.host, "nft", "flush", "set", "inet", "tortie", name)
    assert "(full)" in plab.apply("nft", base, labels={"b": {"app": "web"}}).stdout
    plab.assert_matrix({("b", "a", "tcp", 80): False})
    assert "(incremental)" in plab.apply("nft", base).stdout
    plab.assert_matrix({("b", "a", "tcp", 80): True})


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6(plab: PolicyLab, backend: str) -> None:
    """Dual-stack pods: selectors match both families, nets only their own, negations hold for the other family."""
    from policy.binding import compile_ruleset as compile_
    from policy.load import load_endpoints, load_policies
    from tests.policy.reference import Packet

    pods = plab.lab.pods
    policy = [tortie("v6", {"selector": "app == 'web'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": [pods["b"].ip6 + "/128"]}},
        {"action": "Deny", "protocol": "TCP", "source": {"notNets": ["10.0.0.0/8"]}, "destination": {"ports": [81]}},
        {"action": "Allow", "source": {"selector": "app == 'client'"}}]}, ns="x")]
    eps = plab.write("endpoints.yaml", endpoints_doc(plab.lab, ipv6=True))
    pol = plab.write("policies.yaml", policy)
    plab.lab.run(plab.lab.host, "conntrack", "-F", check=False)
    plab.tortie("apply", "--backend", backend, "--endpoints", str(eps), str(pol))
    assert compile_(load_policies([pol]), load_endpoints(eps)).ipv6
    ref = plab.reference()
    by_name = {e.name: e for e in ref.eps.endpoints}
    a = pods["a"]
    for src in ("b", "c", "d"):
        targets = [(a.ip6, "tcp", 80), (a.ip6, "tcp", 81), (a.ip6, "udp", 53), (a.ip, "tcp", 80)]
        got = plab.lab.probe(pods[src].ns, targets)
        for addr, proto, port in targets:
            src_ip = pods[src].ip6 if ":" in addr else pods[src].ip
            want = ref.allows(Packet(src_ip, addr, {"tcp": 6, "udp": 17}[proto], None, port), by_name[src],
                              by_name["a"])
            assert got[(addr, proto, port)] == want, (src, addr, proto, port, got)
    got = plab.lab.probe(pods["b"].ns, [(a.ip6, "tcp", 80), (a.ip, "tcp", 80), (a.ip6, "tcp", 81)])
    assert got == {(a.ip6, "tcp", 80): True, (a.ip, "tcp", 80): False, (a.ip6, "tcp", 81): True}
