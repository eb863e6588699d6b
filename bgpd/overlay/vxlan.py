"""The VXLAN overlay, pure: which routes to other nodes' blocks are encapsulated, and the VTEPs they need.

One VTEP device per underlay family in use (docs/overlay.md): IPv4 pools travel over the IPv4 underlay
(device `vxlan.device`, local listen_address), IPv6 pools over the IPv6 underlay (`vxlan.device6`, local
listen_address6), as Calico's vxlan-v6.calico and Flannel's flannel-v6.1 do. A route's next hop from BGP (or
the datastore) is the node's underlay address of the prefix's family, which is the VTEP of that family.

Every node's VTEP is derived from its underlay address (the node record's or mesh.nodes' `address` /
`address6`), so a static configuration needs nothing more: the VTEP MAC is derived from it (locally
administered, unicast) and the FDB entry sends that MAC to the address. The VTEP's gateway address (of
`via <gateway> dev <vtep> onlink`, and a permanent neighbour with that MAC on the VTEP device) is, for IPv4,
the underlay address itself (on the VTEP device it cannot clash with the underlay's own neighbour entry);
for IPv6 it is the link-local address of that MAC (EUI-64), the remote VTEP device's own: the kernel refuses
an IPv6 on-link gateway that another device's route covers ("invalid gateway or device mismatch"), which
the node's underlay address always is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterable, Mapping

from bgpd.dataplane.netlink_routes import DeviceHop, KernelRoute

# outer IP header (IPv4 20, IPv6 40) + UDP 8 + VXLAN 8 + inner Ethernet 14, per underlay family
OVERHEAD = {4: 50, 6: 70}
Mode = str  # a pool's vxlan: "never", "always", "cross-subnet"
Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def vtep_mac(address: Address) -> str:
    """The VTEP MAC of the node whose underlay address is `address`: 0e:74 and the four bytes of an IPv4
    address; for IPv6, 0e and five bytes of the address's SHA-256 (its 128 bits do not fit, and nodes in
    different subnets often share their low bits; a collision needs 2^20 nodes to become likely)."""
    if address.version == 4:
        return "0e:74:" + ":".join(f"{b:02x}" for b in address.packed)
    return "0e:" + ":".join(f"{b:02x}" for b in hashlib.sha256(address.packed).digest()[:5])


def vtep_gateway(address: Address) -> Address:
    """The gateway of routes through the VTEP of the node whose underlay address is `address`."""
    if address.version == 4:
        return address
    mac = bytearray.fromhex(vtep_mac(address).replace(":", ""))
    mac[0] ^= 0x02  # EUI-64: the universal/local bit inverted, ff:fe in the middle
    return IPv6Address(b"\xfe\x80" + bytes(6) + bytes(mac[:3]) + b"\xff\xfe" + bytes(mac[3:]))


def pod_mtu(underlay_mtu: int, version: int) -> int:
    """The largest packet a pod can send across an overlay of that underlay family without fragmentation."""
    return underlay_mtu - OVERHEAD[version]


@dataclass(frozen=True)
class Overlay:
    """What decides a route's encapsulation: the pools that use VXLAN, our connected subnets, the other
    nodes (only a next hop that is a node has a VTEP) and the VTEP devices' ifindexes, per family."""

    pools: tuple[tuple[Network, Mode], ...]  # pools with vxlan other than never, of either family
    connected: tuple[Network, ...]
    nodes: frozenset[Address]  # the other nodes' underlay addresses, of both families
    oif: int | None  # the IPv4 VTEP (None: no IPv4 pool uses VXLAN)
    oif6: int | None = None  # the IPv6 VTEP

    def mode(self, prefix: Network) -> Mode:
        for cidr, mode in self.pools:
            if cidr.version == prefix.version and prefix.subnet_of(cidr):
                return mode
        return "never"

    def encapsulated(self, mode: Mode, next_hop: Address) -> bool:
        """Per next hop: a node's, and (cross-subnet) not on a subnet we are connected to."""
        if mode == "never" or next_hop not in self.nodes:
            return False
        return mode == "always" or not any(next_hop in net for net in self.connected)

    def route(self, prefix: Network, hops: KernelRoute | None) -> KernelRoute | None:
        """The kernel route for `prefix` whose underlay next hops are `hops` (None: none; empty: blackhole)."""
        if not hops:
            return hops
        mode = self.mode(prefix)
        oif = self.oif if prefix.version == 4 else self.oif6
        if mode == "never" or oif is None:
            return hops
        return frozenset(DeviceHop(vtep_gateway(h), oif) if not isinstance(h, DeviceHop)
                         and self.encapsulated(mode, h) else h for h in hops)


def vteps(nodes: Iterable[Address]) -> dict[Address, str]:
    """The remote VTEPs of one family to program: underlay address -> MAC (an FDB entry each, and a permanent
    neighbour for the address's `vtep_gateway`)."""
    return {a: vtep_mac(a) for a in sorted(nodes)}


def cluster_routes(owned: Mapping[str, Iterable[IPv4Network]], addresses: Mapping[str, IPv4Address],
                   me: str) -> dict[IPv4Network, IPv4Address]:
    """Without BGP: each other node's prefixes (blocks and borrowed /32s) via its address. A node without a
    usable record (no address, or an address another node holds) has no routes."""
    return {prefix: addresses[node] for node, prefixes in owned.items() if node != me and node in addresses
            for prefix in prefixes}
