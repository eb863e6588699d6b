"""The overlay of IPv6 pools through the daemon (containers/labs/overlay6.clab.yml), real packets: an IPv6-only
cluster on two IPv6 underlay subnets joined by a router that knows no pod address; pool fd00:247::/56
`vxlan: always` (pods default/a), fd00:248::/56 `vxlan: cross-subnet` (pods default/c). Routes through
tortie.vxlan6 via the remote VTEP's link-local gateway, pods at MTU 1500 - 70, VXLAN in UDP over IPv6 on
the wire, NAT outgoing to the internet host, and forged VXLAN from a stranger dropped by the ip6 guard."""
from __future__ import annotations

from ipaddress import ip_address

import pytest

from bgpd.overlay.vxlan import vtep_gateway, vtep_mac
from tests.netns import requires_root, running_lab, wait_for
from tests.node.vxlan_lab import SEND_UDP, capture, in_pod, routed, routes, tcp

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

NODES = {"node1": "fd93:1::1", "node2": "fd93:1::2", "node3": "fd93:2::3"}
POD = {"a": {"node1": "fd00:247::1", "node2": "fd00:247::41", "node3": "fd00:247::81"},
       "c": {"node1": "fd00:248::1", "node2": "fd00:248::41", "node3": "fd00:248::81"}}
BLOCKS = {"node1": ("fd00:247::/122", "fd00:248::/122"), "node2": ("fd00:247::40/122", "fd00:248::40/122"),
          "node3": ("fd00:247::80/122", "fd00:248::80/122")}
INTERNET = "fd93:3::1"
MTU = 1500 - 70


@pytest.fixture(scope="module")
def lab():
    for lab in running_lab("overlay6.clab.yml", "vx6"):
        wait_for(lambda: all(routed(lab, BLOCKS, n, 6) for n in NODES), 60,
                 what="every node's routes to the others' blocks")
        yield lab


def gateway(node):
    return str(vtep_gateway(ip_address(NODES[node])))


def test_routes_vteps_and_mtu_per_mode(lab):
    r1 = routes(lab, "node1", 6)
    # always: both other nodes through the VTEP; cross-subnet: node2 (same subnet) direct, node3 encapsulated
    for node in ("node2", "node3"):
        route = r1[BLOCKS[node][0]]
        assert (route["dev"], route["gateway"]) == ("tortie.vxlan6", gateway(node)) and "onlink" in route["flags"]
    assert (r1[BLOCKS["node2"][1]]["dev"], r1[BLOCKS["node2"][1]]["gateway"]) == ("eth1", NODES["node2"])
    assert (r1[BLOCKS["node3"][1]]["dev"], r1[BLOCKS["node3"][1]]["gateway"]) == ("tortie.vxlan6", gateway("node3"))
    neigh = {n["dst"]: n["lladdr"]
             for n in lab.json("node1", "ip", "-6", "-j", "neigh", "show", "dev", "tortie.vxlan6")}
    assert neigh == {gateway(n): vtep_mac(ip_address(NODES[n])) for n in ("node2", "node3")}
    fdb = {(f["mac"], f["dst"]) for f in lab.json("node1", "bridge", "-j", "fdb", "show", "dev", "tortie.vxlan6")
           if "dst" in f}
    assert fdb == {(vtep_mac(ip_address(NODES[n])), NODES[n]) for n in ("node2", "node3")}
    (link,) = lab.json("node1", "ip", "-j", "-d", "link", "show", "tortie.vxlan6")
    assert link["mtu"] == MTU and link["linkinfo"]["info_data"]["local6"] == NODES["node1"]
    assert not lab.exec("node1", "ip", "link", "show", "tortie.vxlan", check=False).stdout  # no IPv4 pool: no device
    (pod,) = lab.json("node1", "ip", "-n", "pod-default-a", "-j", "link", "show", "eth0")
    assert pod["mtu"] == MTU
    s = lab.json("node1", "tortie", "status", "--json")["overlay"]
    assert (s["device"], s["mtu"], s["remote_vteps"], s["encapsulated_routes"]) == ("tortie.vxlan6", MTU, 2, 3)
    # the router in between never learnt a pod address
    assert not [r for r in lab.json("router", "ip", "-6", "-j", "route") if r["dst"].startswith("fd00:")]


def test_pods_reach_each_other_at_full_size_and_not_one_byte_more(lab):
    for pool in POD:
        for src in NODES:
            for dst in NODES:
                if src != dst:
                    in_pod(lab, src, pool, "ping", "-6", "-M", "do", "-s", str(MTU - 48), "-c", "1", "-W", "3",
                           POD[pool][dst])
    r = in_pod(lab, "node1", "a", "ping", "-6", "-M", "do", "-s", str(MTU - 47), "-c", "1", "-W", "3",
               POD["a"]["node3"], check=False)
    assert r.returncode != 0 and "message too long" in (r.stdout + r.stderr).lower(), r


def test_across_the_router_only_vxlan_over_ipv6_is_on_the_wire(lab):
    other = capture(lab, "node1", "icmp6 or udp port 4789", 4,
                    f"ip netns exec pod-default-c ping -6 -c 2 -i 0.2 -W 3 {POD['c']['node3']}")
    assert len(other) == 4 and all(".4789: VXLAN" in p and "ICMP6" not in p for p in other), other
    assert all(NODES["node1"] in p and NODES["node3"] in p for p in other), other


def test_tcp_between_pods_is_not_natted_and_to_the_internet_is(lab):
    assert tcp(lab, "node1", "a", "node3", POD["a"]["node3"], 1 << 20) == (POD["a"]["node1"], 1 << 20)
    assert tcp(lab, "node3", "c", "internet", INTERNET, 100_000, pod_side=False) == (NODES["node3"], 100_000)


def test_vxlan_from_a_stranger_over_ipv6_is_dropped(lab):
    def drops():
        return lab.exec("node1", "nft", "-j", "list", "chain", "ip6", "tortie-overlay", "vxlan-in").stdout
    assert '"packets": 0' in drops()
    for _ in range(2):
        lab.exec("internet", "python3", "-c", SEND_UDP, NODES["node1"], "4789", "0800000000100000" + "00" * 50)
    wait_for(lambda: '"packets": 2' in drops(), 10, what="the guard's counter")
