"""NAT outgoing per pool, both families, with real packets through a node namespace and both policy backends:
a pod of a NAT pool reaching an "outside" host is seen there with the node's address (and gets the reply), a
pod of a pool without NAT keeps its own source, and traffic between pools is never NATed.

Namespaces: `node` routes between `pod1` (pool 10.247.0.0/24, fd00:247::/64, nat_outgoing), `pod2` (pool
10.248.0.0/24, fd00:248::/64, no NAT) and `outside` (10.93.0.0/24, fd93::/64, no route to any pool)."""
from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_address, ip_network

import pytest

from bgpd.overlay.firewall import OverlayRules, render_nft
from tests.netns import RUN_PREFIX, requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(180)]

POOLS = {"pod1": ("10.247.0", "fd00:247:"), "pod2": ("10.248.0", "fd00:248:")}
NODE_OUT = {4: "10.93.0.1", 6: "fd93::1"}
OUTSIDE = {4: "10.93.0.2", 6: "fd93::2"}
POD = {(name, 4): f"{v4}.5" for name, (v4, _) in POOLS.items()} | {(name, 6): f"{v6}:5" for name, (_, v6)
                                                                   in POOLS.items()}
PORT = 9000

SINK = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(10)
print("ready", flush=True)
d, peer = s.recvfrom(100); print(peer[0], flush=True)
try:
    s.sendto(d, peer)
except OSError:
    pass  # no route back to an address that was not NATed
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
try:
    print("reply" if s.recv(100) == b"hello" else "garbled")
except (TimeoutError, OSError):
    print("no reply")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def wire(node: str, other: str, ifname: str, node_side: dict[int, str], other_side: dict[int, str]) -> None:
    """A veth from `node` (named `ifname`) to `other` (eth0), one /24 and one /64 per side."""
    ip("link", "add", ifname, "netns", node, "type", "veth", "peer", "eth0", "netns", other)
    for ns, dev, addrs in ((node, ifname, node_side), (other, "eth0", other_side)):
        ip("-n", ns, "addr", "add", f"{addrs[4]}/24", "dev", dev)
        ip("-n", ns, "addr", "add", f"{addrs[6]}/64", "dev", dev, "nodad")
        ip("-n", ns, "link", "set", dev, "up")


@pytest.fixture(scope="module")
def hosts():

    names = {role: f"{RUN_PREFIX}-nat-{role}" for role in ("node", "pod1", "pod2", "outside")}
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        node = names["node"]
        for pod, (v4, v6) in POOLS.items():
            wire(node, names[pod], pod, {4: f"{v4}.1", 6: f"{v6}:1"}, {4: POD[pod, 4], 6: POD[pod, 6]})
            ip("-n", names[pod], "route", "add", "default", "via", f"{v4}.1")
            ip("-n", names[pod], "-6", "route", "add", "default", "via", f"{v6}:1")
        wire(node, names["outside"], "uplink", NODE_OUT, OUTSIDE)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", key], check=True, timeout=10)
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def udp(names: dict[str, str], src: str, dst: str, version: int) -> tuple[str, str]:
    """One UDP datagram from pod `src` to `dst` (a pod or "outside"): (source seen there, what the sender got back)."""
    target = OUTSIDE[version] if dst == "outside" else POD[dst, version]
    sink = subprocess.Popen(["ip", "netns", "exec", names[dst], sys.executable, "-c", SINK, target, str(PORT)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        sent = subprocess.run(["ip", "netns", "exec", names[src], sys.executable, "-c", SEND, target, str(PORT)],
                              capture_output=True, text=True, timeout=20)
        seen = sink.stdout.readline().strip()
        sink.wait(timeout=15)
        return seen, sent.stdout.strip()
    finally:
        sink.kill()
        sink.wait()


APPLY = """
import sys
from ipaddress import ip_network as N
from bgpd.dataplane.overlay_firewall import OverlayFirewall
from bgpd.overlay.firewall import OverlayRules
pools = tuple(N(p) for p in ("10.247.0.0/24", "fd00:247::/64", "10.248.0.0/24", "fd00:248::/64"))
fw = OverlayFirewall(sys.argv[1])
rules = OverlayRules(None, (), pools[:2], pools)
fw.apply(rules); fw.apply(rules)
print(fw.present(rules))
"""


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_nat_outgoing_masquerades_pool_traffic_leaving_every_pool(hosts, backend):
    r = subprocess.run(["ip", "netns", "exec", hosts["node"], sys.executable, "-c", APPLY, backend],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
    try:
        for version in (4, 6):
            # a NAT pool's pod to the outside: the node's address, and the reply finds its way back
            assert udp(hosts, "pod1", "outside", version) == (NODE_OUT[version], "reply")
            # between pools, either way: never NATed
            assert udp(hosts, "pod1", "pod2", version) == (POD["pod1", version], "reply")
            assert udp(hosts, "pod2", "pod1", version) == (POD["pod2", version], "reply")
            # a pool without NAT outgoing keeps its address (and the outside has no route back to it)
            assert udp(hosts, "pod2", "outside", version) == (POD["pod2", version], "no reply")
    finally:
        remove = "from bgpd.dataplane.overlay_firewall import OverlayFirewall as F; import sys; F(sys.argv[1]).remove()"
        subprocess.run(["ip", "netns", "exec", hosts["node"], sys.executable, "-c", remove, backend], check=True,
                       timeout=60)


def test_each_family_has_its_own_table_and_only_when_it_enforces_something():
    v4, v6 = ip_network("10.247.0.0/24"), ip_network("fd00:247::/64")
    nodes = (ip_address("10.93.1.2"), ip_address("fd93::2"))
    both = render_nft(OverlayRules(4789, nodes, (v4, v6), (v4, v6), True, frozenset({4, 6})))
    assert "table ip tortie-overlay {" in both and "table ip6 tortie-overlay {" in both
    assert "ip6 saddr @nat-pools ip6 daddr != @pools ip6 daddr != @nodes counter masquerade" in both
    assert "udp dport 4789 ip6 saddr != @vtep-sources counter drop" in both
    assert "type ipv6_addr; flags interval; elements = { fd00:247::/64 }" in both
    # IPv4 VXLAN only, NAT on the IPv4 pool only: no IPv6 table, but it is deleted in the same transaction
    v4_only = render_nft(OverlayRules(4789, nodes, (v4,), (v4, v6)))
    assert "table ip6 tortie-overlay {" not in v4_only and "delete table ip6 tortie-overlay" in v4_only
    rules = OverlayRules(4789, nodes, (v4,), (v4, v6))
    assert rules.versions() == (4,) and rules.of(4).nodes == nodes[:1] and rules.of(6).vxlan_port is None
