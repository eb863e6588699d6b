"""VXLAN for IPv6 pools, with real packets between two namespace "hosts" whose underlay carries no pod route:
each host runs the overlay dataplane (OverlayDataplane.step: both VTEP devices, their neighbour and FDB
entries, the firewall guard) and writes the routes the overlay plan says through the route writer; pods on
the two hosts then reach each other over IPv6 (through tortie.vxlan6, 70 bytes of overhead) and IPv4
(through tortie.vxlan, 50) at once, at the largest size their MTU allows, and VXLAN from a stranger over
IPv6 is dropped.

Namespaces: host1 (fd99:1::1, 10.99.1.1) and host2 (fd99:1::2, 10.99.1.2) on one veth, plus a stranger
(fd99:1::99) on a veth of host1; pod1 on host1 (10.244.0.5, fd00:244::5), pod2 on host2 (10.244.0.69,
fd00:244::45); pool 10.244.0.0/16 and fd00:244::/56, `vxlan: always`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgpd.overlay.vxlan import vtep_gateway, vtep_mac
from tests.netns import RUN_PREFIX, requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(180)]

HOSTS = {"host1": ("10.99.1.1", "fd99:1::1"), "host2": ("10.99.1.2", "fd99:1::2")}
PODS = {"host1": ("pod1", "10.244.0", "fd00:244::", 0), "host2": ("pod2", "10.244.0", "fd00:244::", 64)}
STRANGER = "fd99:1::99"
BLOCKS = {"host1": ("10.244.0.0/26", "fd00:244::/122"), "host2": ("10.244.0.64/26", "fd00:244::40/122")}


def pod_addresses(host: str) -> tuple[str, str, str, str]:
    """(pod IPv4, pod IPv6, gateway IPv4, gateway IPv6) of the pod on `host`."""
    _, v4, v6, base = PODS[host]
    return f"{v4}.{base + 5}", f"{v6}{base + 5:x}", f"{v4}.{base + 1}", f"{v6}{base + 1:x}"


STEP = """
import json, sys
from ipaddress import ip_address, ip_network
from bgpd.dataplane.netlink_routes import RouteOp, RouteWriter
from bgpd.dataplane.overlay import OverlayDataplane
from bgpd.prefixes import key, text
from config.node import NodeConfig
node = NodeConfig.model_validate(json.loads(sys.argv[1]))
dp = OverlayDataplane(node)
dp.step(node); dp.step(node)  # the second pass finds everything in place
plan = dp.plan(node)
ops = [RouteOp(key(ip_network(b)), plan.route(ip_network(b), frozenset({ip_address(via)})))
       for b, via in json.loads(sys.argv[2])]
writer = RouteWriter(node.route_protocol)
failed = writer.apply(ops)
print(json.dumps({"failed": sorted(failed.values()), "repairs": dp.repairs,
                  "routes": {text(op.prefix): sorted(map(str, op.next_hops)) for op in ops},
                  "mtus": {v: d.mtu for v, d in dp.devices.items()}, "pod_mtu": min(d.mtu for d in dp.devices.values()),
                  "oifs": {v: d.index for v, d in dp.devices.items()}}))
"""


def run(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def in_ns(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *args, **kw)


def node_config(host: str) -> dict:
    v4, v6 = HOSTS[host]
    return {"name": host, "router_id": v4, "asn": 64512, "listen_address": v4, "listen_address6": v6,
            "pools": [{"cidr": "10.244.0.0/16", "vxlan": "always"}, {"cidr": "fd00:244::/56", "vxlan": "always"}],
            "blocks": list(BLOCKS[host]),
            "mesh": {"nodes": [{"name": h, "address": a4, "address6": a6} for h, (a4, a6) in HOSTS.items()]}}


@pytest.fixture(scope="module")
def hosts():
    names = {role: f"{RUN_PREFIX}-vx6-{role}" for role in ("host1", "host2", "pod1", "pod2", "stranger")}
    try:
        for ns in names.values():
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", "eth1", "netns", names["host1"], "type", "veth", "peer", "eth1", "netns",
            names["host2"])
        run("ip", "link", "add", "eth2", "netns", names["host1"], "type", "veth", "peer", "eth1", "netns",
            names["stranger"])
        for host, (v4, v6) in HOSTS.items():
            ns = names[host]
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth1")
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth1", "nodad")
            run("ip", "-n", ns, "link", "set", "eth1", "up")
            for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
                in_ns(ns, "sysctl", "-qw", key)
            pod, addr4, addr6, gw4, gw6 = (PODS[host][0], *pod_addresses(host))
            run("ip", "link", "add", "pod", "netns", ns, "type", "veth", "peer", "eth0", "netns", names[pod])
            for side, dev, a4, a6 in ((ns, "pod", gw4, gw6), (names[pod], "eth0", addr4, addr6)):
                run("ip", "-n", side, "addr", "add", f"{a4}/26", "dev", dev)
                run("ip", "-n", side, "addr", "add", f"{a6}/122", "dev", dev, "nodad")
                run("ip", "-n", side, "link", "set", dev, "up")
            run("ip", "-n", names[pod], "route", "add", "default", "via", gw4)
            run("ip", "-n", names[pod], "-6", "route", "add", "default", "via", gw6)
        # the stranger: on host1's underlay (host1 answers it on eth2), not a cluster node
        run("ip", "-n", names["host1"], "addr", "add", "fd99:1::98/127", "dev", "eth2", "nodad")
        run("ip", "-n", names["stranger"], "addr", "add", f"{STRANGER}/127", "dev", "eth1", "nodad")
        for ns, dev in ((names["host1"], "eth2"), (names["stranger"], "eth1")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def overlay(hosts):
    """Each host's overlay as OverlayDataplane makes it, and the other host's blocks routed as the plan says."""
    out = {}
    for host in HOSTS:
        other = next(h for h in HOSTS if h != host)
        routes = [(b, HOSTS[other][i]) for i, b in enumerate(BLOCKS[other])]
        out[host] = json.loads(in_ns(hosts[host], sys.executable, "-c", STEP, json.dumps(node_config(host)),
                                     json.dumps(routes), timeout=60).stdout)
    return out


def link(ns: str, dev: str) -> dict:
    return json.loads(run("ip", "-n", ns, "-j", "-d", "-s", "link", "show", dev).stdout)[0]


def test_each_family_gets_its_vtep_entries_and_routes(hosts, overlay):
    for host, got in overlay.items():
        other = next(h for h in HOSTS if h != host)
        o4, o6 = HOSTS[other]
        assert got["failed"] == [] and got["repairs"] == 0
        assert got["mtus"] == {"4": 1450, "6": 1430} and got["pod_mtu"] == 1430  # pods: the smaller of the two
        b4, b6 = BLOCKS[other]
        gateway6 = vtep_gateway(ip(o6))  # the other VTEP device's own link-local address
        assert got["routes"] == {b4: [f"{o4} onlink ifindex {got['oifs']['4']}"],
                                 b6: [f"{gateway6} onlink ifindex {got['oifs']['6']}"]}
        dev6 = link(hosts[host], "tortie.vxlan6")
        data = dev6["linkinfo"]["info_data"]
        assert data["local6"] == HOSTS[host][1] and data["id"] == 4096 and data["port"] == 4789
        assert dev6["mtu"] == 1430 and dev6["address"] == vtep_mac(ip(HOSTS[host][1]))
        neigh = json.loads(run("ip", "-n", hosts[host], "-6", "-j", "neigh", "show", "dev", "tortie.vxlan6").stdout)
        assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [(str(gateway6), vtep_mac(ip(o6)),
                                                                          ["PERMANENT"])]
        own = json.loads(run("ip", "-n", hosts[host], "-6", "-j", "addr", "show", "dev", "tortie.vxlan6").stdout)
        assert str(vtep_gateway(ip(HOSTS[host][1]))) in [a["local"] for a in own[0]["addr_info"]]
        fdb = run("bridge", "-n", hosts[host], "fdb", "show", "dev", "tortie.vxlan6").stdout
        assert f"{vtep_mac(ip(o6))} dst {o6} self permanent" in fdb
        route6 = run("ip", "-n", hosts[host], "-6", "route", "show", b6).stdout
        assert f"via {gateway6} dev tortie.vxlan6 proto" in route6 and "onlink" in route6


def ip(text: str):
    from ipaddress import ip_address
    return ip_address(text)


def test_pods_reach_each_other_over_both_vteps_at_full_size(hosts, overlay):
    p1 = pod_addresses("host1")
    p2 = pod_addresses("host2")
    for ns in (hosts["pod1"], hosts["pod2"]):
        run("ip", "-n", ns, "link", "set", "eth0", "mtu", str(overlay["host1"]["pod_mtu"]))
    before = {host: link(hosts[host], "tortie.vxlan6")["stats64"]["tx"]["packets"] for host in HOSTS}
    # ICMPv6 and ICMP echo, both directions, at the largest size: MTU - 48 (IPv6 40 + ICMPv6 8), - 28 for IPv4
    in_ns(hosts["pod1"], "ping", "-6", "-c", "1", "-W", "5", "-M", "do", "-s", str(1430 - 48), p2[1])
    in_ns(hosts["pod2"], "ping", "-6", "-c", "1", "-W", "5", "-M", "do", "-s", str(1430 - 48), p1[1])
    in_ns(hosts["pod1"], "ping", "-4", "-c", "1", "-W", "5", "-M", "do", "-s", str(1430 - 28), p2[0])
    after = {host: link(hosts[host], "tortie.vxlan6")["stats64"]["tx"]["packets"] for host in HOSTS}
    assert all(after[h] - before[h] >= 2 for h in HOSTS)  # a request or a reply each way, both pings
    # one byte more does not leave the pod: "message too long", never a silent drop on the way
    too_big = in_ns(hosts["pod1"], "ping", "-6", "-c", "1", "-W", "2", "-M", "do", "-s", str(1430 - 47), p2[1],
                    check=False)
    assert too_big.returncode != 0 and "too long" in (too_big.stdout + too_big.stderr).lower()


FORGE = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 4789))
"""


def test_vxlan_from_a_stranger_over_ipv6_is_dropped(hosts, overlay):
    """The ip6 guard: a VXLAN packet to host1 from an address that is no node's never reaches the VTEP."""
    run("ip", "-n", hosts["stranger"], "-6", "route", "add", "fd99:1::/64", "via", "fd99:1::98")
    table = run("ip", "netns", "exec", hosts["host1"], "nft", "-j", "list", "chain", "ip6", "tortie-overlay",
                "vxlan-in").stdout
    assert "vxlan-in" in table
    counter = _drops(hosts)
    for _ in range(3):
        in_ns(hosts["stranger"], sys.executable, "-c", FORGE, HOSTS["host1"][1], "08000000" + "001000" + "00" * 50)
    assert _drops(hosts) - counter == 3


def _drops(hosts) -> int:
    chain = json.loads(run("ip", "netns", "exec", hosts["host1"], "nft", "-j", "list", "chain", "ip6",
                           "tortie-overlay", "vxlan-in").stdout)
    return next(item["rule"]["expr"][-2]["counter"]["packets"] for item in chain["nftables"] if "rule" in item)
