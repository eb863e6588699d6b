"""The VXLAN overlay, pure: which routes to other nodes' blocks are encapsulated, and the VTEPs they need.

Every node's VTEP is derived from its underlay address (the node record's or mesh.nodes' `address`), so a
static configuration needs nothing more: the VTEP address *is* the underlay address (used only as the
gateway of `via <address> dev <vtep> onlink` and as a permanent neighbour on the VTEP device, where it
cannot clash with the underlay's own neighbour entries), and the VTEP MAC is 0e:74 followed by the four
bytes of that address (locally administered, unicast). The FDB entry sends that MAC to the address.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping

from bgpd.dataplane.netlink_routes import DeviceHop, KernelRoute

OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
Mode = str  # a pool's vxlan: "never", "always", "cross-subnet"


def vtep_mac(address: IPv4Address) -> str:
    """The VTEP MAC of the node whose underlay address is `address`."""
    return "0e:74:" + ":".join(f"{b:02x}" for b in address.packed)


def pod_mtu(underlay_mtu: int) -> int:
    """The largest packet a pod can send across the overlay without fragmentation."""
    return underlay_mtu - OVERHEAD


@dataclass(frozen=True)
class Overlay:
    """What decides a route's encapsulation: the pools that use VXLAN, our connected subnets, the other
    nodes (only a next hop that is a node has a VTEP) and the VTEP device's ifindex."""

    pools: tuple[tuple[IPv4Network, Mode], ...]  # pools with vxlan other than never
    connected: tuple[IPv4Network, ...]
    nodes: frozenset[IPv4Address]  # the other nodes' underlay addresses
    oif: int

    def mode(self, prefix: IPv4Network) -> Mode:
        for cidr, mode in self.pools:
            if prefix.subnet_of(cidr):
                return mode
        return "never"

    def encapsulated(self, mode: Mode, next_hop: IPv4Address) -> bool:
        """Per next hop: a node's, and (cross-subnet) not on a subnet we are connected to."""
        if mode == "never" or next_hop not in self.nodes:
            return False
        return mode == "always" or not any(next_hop in net for net in self.connected)

    def route(self, prefix: IPv4Network, hops: KernelRoute | None) -> KernelRoute | None:
        """The kernel route for `prefix` whose underlay next hops are `hops` (None: none; empty: blackhole)."""
        if not hops:
            return hops
        mode = self.mode(prefix)
        if mode == "never":
            return hops
        return frozenset(DeviceHop(h, self.oif) if isinstance(h, IPv4Address) and self.encapsulated(mode, h)
                         else h for h in hops)


def vteps(nodes: Iterable[IPv4Address]) -> dict[IPv4Address, str]:
    """The remote VTEPs to program: address -> MAC (a permanent neighbour and an FDB entry each)."""
    return {a: vtep_mac(a) for a in sorted(nodes)}


def cluster_routes(owned: Mapping[str, Iterable[IPv4Network]], addresses: Mapping[str, IPv4Address],
                   me: str) -> dict[IPv4Network, IPv4Address]:
    """Without BGP: each other node's prefixes (blocks and borrowed /32s) via its address. A node without a
    usable record (no address, or an address another node holds) has no routes."""
    return {prefix: addresses[node] for node, prefixes in owned.items() if node != me and node in addresses
            for prefix in prefixes}
