"""WireGuard between nodes, pure: which routes go through the device, the peers and their AllowedIPs, the
configuration text `wg syncconf` takes, and what `wg show dump` says.

Routing design (docs/wireguard.md, against Calico's): a remote pod block whose next hop is a node with a
public key is routed `via <node address> dev <wireguard device> onlink` in the main table, the same
per-route decision the VXLAN overlay makes (bgpd/overlay/vxlan.py), taken first: encryption replaces
encapsulation. WireGuard picks the peer by AllowedIPs, which are exactly the prefixes routed to that node,
so the gateway only names the node. No routing rule or table is needed, unlike Calico's (table 1 and a
fwmark rule): AllowedIPs hold only pod prefixes, never a node address, so WireGuard's own UDP packets to
the node addresses can never be routed into the tunnel, and host-to-host traffic stays plain.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping

from bgpd.dataplane.netlink_routes import DeviceHop, KernelRoute
from bgpd.prefixes import network
from config.node import MeshMember

OVERHEAD = 60  # outer IPv4 20 + UDP 8 + WireGuard header 16 + authentication tag 16 (an IPv6 outer: 80)


def pod_mtu(underlay_mtu: int) -> int:
    """The largest packet a pod can send through WireGuard over an IPv4 underlay without fragmentation."""
    return underlay_mtu - OVERHEAD


@dataclass(frozen=True)
class Encryption:
    """What decides a route's encryption: the pools (pod traffic only), the nodes with a key, whether a
    node without one may be reached in the clear, and the device's ifindex."""

    pools: tuple[IPv4Network, ...]
    keyed: frozenset[IPv4Address]  # underlay addresses of the other nodes that have a public key
    keyless: frozenset[IPv4Address]  # the other nodes without one
    required: bool
    oif: int

    def route(self, prefix: IPv4Network, hops: KernelRoute | None) -> KernelRoute | None:
        """The kernel route for `prefix` (None: none; empty: blackhole): each hop that is a node with a key
        goes through the device; with `required`, a hop that is a node without one is dropped."""
        if not hops or not any(prefix.version == p.version and prefix.subnet_of(p) for p in self.pools):
            return hops
        out = set()
        for h in hops:
            if isinstance(h, IPv4Address) and h in self.keyed:
                out.add(DeviceHop(h, self.oif))
            elif not (self.required and isinstance(h, IPv4Address) and h in self.keyless):
                out.add(h)
        return frozenset(out)  # every hop refused: a blackhole, never the clear


@dataclass(frozen=True)
class Peer:
    public_key: str
    endpoint: IPv4Address
    allowed_ips: tuple[IPv4Network, ...]


def encryption(members: Iterable[MeshMember], me: str, my_address: IPv4Address, pools: Iterable[IPv4Network],
               required: bool, oif: int) -> Encryption:
    """The encryption of IPv4 pod traffic (the WireGuard peers and their AllowedIPs are IPv4)."""
    others = [m for m in members if m.name != me and m.address != my_address]
    return Encryption(tuple(p for p in pools if p.version == 4), frozenset(m.address for m in others if m.public_key),
                      frozenset(m.address for m in others if not m.public_key), required, oif)


class AllowedIps:
    """The peers' AllowedIPs, kept up to date from the routes whose desired route changed (the core's plan
    batches), never recomputed over every route. A prefix is carried by the node its route goes to through
    the device; routed to several nodes (ECMP), by the lowest address: AllowedIPs cannot overlap."""

    def __init__(self) -> None:
        self._via: dict[int, IPv4Address] = {}  # prefix key (bgpd/prefixes.py) -> the node that carries it
        self._by_node: dict[IPv4Address, dict[int, IPv4Network]] = {}  # its prefixes, as keys and as networks
        self._sorted: dict[IPv4Address, tuple[IPv4Network, ...]] = {}  # cache of the nodes no change touched

    def update(self, routes: Mapping[int, KernelRoute | None], oif: int) -> bool:
        """The new desired routes of some prefixes (None: no route), `oif` the device's ifindex in them;
        whether any node's AllowedIPs changed."""
        changed = False
        for prefix, hops in routes.items():
            node = min((h.gateway for h in hops or () if isinstance(h, DeviceHop) and h.oif == oif), default=None)
            old = self._via.get(prefix)
            if node == old:
                continue
            changed = True
            if old is not None:
                carried = self._by_node[old]
                del carried[prefix]
                if not carried:
                    del self._by_node[old]
                self._sorted.pop(old, None)
                del self._via[prefix]
            if node is not None:
                self._by_node.setdefault(node, {})[prefix] = network(prefix)
                self._sorted.pop(node, None)
                self._via[prefix] = node
        return changed

    def allowed(self, node: IPv4Address) -> tuple[IPv4Network, ...]:
        got = self._sorted.get(node)
        if got is None:
            carried = self._by_node.get(node, {})
            got = self._sorted[node] = tuple(carried[p] for p in sorted(carried))
        return got

    def peers(self, members: Iterable[MeshMember], me: str) -> list[Peer]:
        """One peer per other node with a key, with the prefixes routed to it through the device."""
        return [Peer(m.public_key, m.address, self.allowed(m.address))
                for m in sorted(members, key=lambda m: m.address) if m.public_key and m.name != me]


def render(private_key: str, port: int, peer_list: Iterable[Peer]) -> str:
    """The configuration `wg syncconf` takes (it adds, changes and removes peers to match)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {port}"]
    for p in peer_list:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}", f"Endpoint = {p.endpoint}:{port}"]
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(map(str, p.allowed_ips)))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PeerStats:
    public_key: str
    endpoint: str
    latest_handshake: int  # unix seconds, 0: never
    rx_bytes: int
    tx_bytes: int


def parse_dump(text: str) -> list[PeerStats]:
    """`wg show <device> dump`: the interface's line, then one tab-separated line per peer."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        if len(f) >= 8:
            out.append(PeerStats(f[0], f[2], int(f[4]), int(f[5]), int(f[6])))
    return out
