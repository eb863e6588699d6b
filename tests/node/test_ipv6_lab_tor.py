"""An IPv6-only cluster behind BIRD 2 (containers/labs/tor-bird-v6.clab.yml): hosts with only an IPv6 underlay
and pool peer over IPv6 with a route reflector; pods reach each other; the reflector's ::/0 and out-of-pool
prefix are refused (not in the kernel, counted in the metrics)."""
import json

import pytest

from tests.netns import requires_root, wait_for
from tests.node.test_ipv6_lab import PROBE, serve, serving_lab

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

HOSTS = {"node1": 1, "node2": 2, "node3": 3}
TOR = "fd98::fe"


@pytest.fixture(scope="module")
def lab():
    yield from serving_lab("tor-bird-v6.clab.yml", "r")


def address(i):
    return f"fd98::{i}"


def block(i):
    return f"fd00:244:0:{i}::/122"


def kernel(lab, node, family=6):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", f"-{family}", "route", "show", "proto", "201")}


def routed(lab, node):
    routes = kernel(lab, node)
    others = {block(i): address(i) for n, i in HOSTS.items() if n != node}
    return (routes.get(block(HOSTS[node]), {}).get("type") == "blackhole" and len(routes) == 3
            and {b: routes.get(b, {}).get("gateway") for b in others} == others)


def pod_ip(lab, node):
    (pod,) = lab.json(node, "tortie", "pod", "list", "--json")
    (ip,) = pod["ips"]
    return ip


def test_bird_reflects_our_ipv6_blocks(lab):
    for node, i in HOSTS.items():
        out = lab.exec("tor", "birdc", "-s", "/run/bird/bird.ctl", "show", "route", "for", block(i), "all").stdout
        assert block(i) in out and f"via {address(i)}" in out and f"[{node} " in out, out
    # and installs them in its own table: the tor reaches a pod
    lab.exec("tor", "ping", "-6", "-c", "1", "-W", "2", pod_ip(lab, "node2"))


def test_default_and_out_of_pool_routes_refused_and_counted(lab):
    for node in HOSTS:
        wait_for(lambda: routed(lab, node), 20, what=f"{node}'s kernel routes")
        assert kernel(lab, node, family=4) == {}  # nothing of IPv4 anywhere
        everything = {r["dst"] for r in lab.json(node, "ip", "-j", "-6", "route", "show")}
        assert "default" not in everything and "2001:db8:ff::/48" not in everything, everything
        (peer,) = lab.json(node, "tortie", "status", "--json")["peers"]
        assert (peer["name"], peer["address"], peer["state"]) == ("tor", TOR, "up")
        assert peer["accepted"] == 2 and peer["rejected"] == 2
        text = lab.exec(node, "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                        "'http://[::1]:9473/metrics').read().decode())").stdout
        assert f'tortie_bgp_prefixes_rejected_total{{peer="{TOR}",reason="default_route"}} 1.0' in text
        assert f'tortie_bgp_prefixes_rejected_total{{peer="{TOR}",reason="not_in_pool"}} 1.0' in text
    assert lab.log("node1").count(f"rejecting routes peer={TOR} reason=default_route") == 1


def test_ipv6_only_pods_reach_each_other(lab):
    """ICMPv6 echo and TCP over IPv6 from each host's pod to the other two."""
    ips = {node: pod_ip(lab, node) for node in HOSTS}
    for node in HOSTS:
        serve(lab, node, "tortie", "pod", "exec", "default/pod1", "--")
    for node in HOSTS:
        targets = [ip for other, ip in ips.items() if other != node]
        answers = json.loads(lab.exec(node, "tortie", "pod", "exec", "default/pod1", "--", "python3", "-c", PROBE,
                                      *targets).stdout)
        assert answers == {ip: [True, True] for ip in targets}, (node, answers)
