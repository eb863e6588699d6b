"""A VXLAN tunnel endpoint in the kernel, one per underlay family: the device, and a permanent neighbour and
FDB entry per remote VTEP (bgpd/overlay/vxlan.py says which). Everything on our device is ours: what is not
wanted there goes.

Blocking pyroute2 calls: run them in a worker thread (`asyncio.to_thread`). pyroute2 is loaded only where a
VTEP is made or read; its errors leave as OSError. Removing a device is hand-packed: a node without VXLAN
checks for a leftover one every pass without loading pyroute2.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import TYPE_CHECKING, Iterator

from bgpd.dataplane.netlink_links import Rtnl, delete_link
from bgpd.dataplane.uplink import uplink_mtu
from bgpd.dataplane.netlink_routes import (_NLMSGHDR, _RTA, NETLINK_ROUTE, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
                                           NLM_F_REQUEST, _acks)
from bgpd.overlay.vxlan import Address, Network, pod_mtu, vtep_gateway, vtep_mac
from config.node import NodeConfig, Vxlan

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger("tortie.vxlan")

NUD_PERMANENT = 0x80
AF_BRIDGE = 7
NTF_SELF = 0x02
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NDA_DST, NDA_LLADDR = 1, 2
NLM_F_APPEND = 0x800
_NDMSG = struct.Struct("=BBHiHBB")
# the VTEP's checksum and segmentation offloads, reported in `tortie status`: the kernel's defaults (on) are
# kept. Calico issue 11435 found tx-checksum-ip-generic on throttling VXLAN on kernels 6.12+ over real NICs;
# here (6.18, veth underlay) turning it off also turns TSO off and costs 60-80 % (docs/overlay.md)
OFFLOADS = ("tx-checksum-ip-generic", "tx-generic-segmentation", "tx-udp_tnl-segmentation")


@dataclass(frozen=True)
class DeviceState:
    index: int
    mtu: int
    offloads: dict[str, bool]
    connected: tuple[Network, ...]  # this host's subnets of both families, for cross-subnet


class VtepDevice:
    """The VTEP of the underlay family of `local`: device `vxlan.device` (IPv4) or `vxlan.device6` (IPv6)."""

    def __init__(self, settings: Vxlan, local: Address):
        self.settings, self.local = settings, local
        self.name = settings.device if local.version == 4 else settings.device6
        self.family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        self.installed: dict[Address, str] = {}  # remote VTEP address -> MAC, as the kernel holds them

    def ensure(self, mtu: int) -> DeviceState:
        """The device as configured (created, or re-created if its VNI, port or local address differ), up."""
        s = self.settings
        with _iproute() as ipr:
            index = self._index(ipr)
            if index is not None and not self._matches(ipr, index):
                log.warning("vxlan device %s differs from the configuration: re-creating it", self.name)
                ipr.link("del", index=index)
                index = None
            if index is None:
                local = {"vxlan_local" if self.local.version == 4 else "vxlan_local6": str(self.local)}
                ipr.link("add", ifname=self.name, kind="vxlan", vxlan_id=s.vni, vxlan_port=s.port,
                         vxlan_learning=0, **local)
                index = self._index(ipr)
                self.installed = {}
                log.info("created vxlan device %s vni=%d port=%d local=%s", self.name, s.vni, s.port, self.local)
            link = ipr.get_links(index)[0]
            if link.get_attr("IFLA_ADDRESS") != vtep_mac(self.local):  # setting it flushes the neighbours
                ipr.link("set", index=index, address=vtep_mac(self.local))
            if link.get_attr("IFLA_MTU") != mtu or not link["flags"] & 1:
                ipr.link("set", index=index, mtu=mtu, state="up")
            connected = connected_subnets(ipr)
        return DeviceState(index, mtu, offloads(self.name), connected)

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.name)
        return found[0] if found else None

    def _matches(self, ipr: IPRoute, index: int) -> bool:
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        local = data.get_attr("IFLA_VXLAN_LOCAL" if self.local.version == 4 else "IFLA_VXLAN_LOCAL6")
        return (data.get_attr("IFLA_VXLAN_ID") == self.settings.vni
                and data.get_attr("IFLA_VXLAN_PORT") == self.settings.port
                and local is not None and ip_address(local) == self.local)

    def sync(self, want: dict[Address, str]) -> int:
        """Makes the device's FDB entries exactly `want` (underlay address -> MAC) and its neighbours exactly
        their gateways (`vtep_gateway`) with those MACs; returns the changes."""
        with _iproute() as ipr:
            index = self._index(ipr)
            if index is None:
                raise OSError(f"vxlan device {self.name} is gone")
            neigh = {ip_address(n.get_attr("NDA_DST")): n.get_attr("NDA_LLADDR")
                     for n in ipr.get_neighbours(family=self.family, ifindex=index)
                     if n["state"] & NUD_PERMANENT}
            fdb = {(n.get_attr("NDA_LLADDR"), ip_address(n.get_attr("NDA_DST")))
                   for n in ipr.get_neighbours(family=AF_BRIDGE, ifindex=index) if n.get_attr("NDA_DST") is not None}
        wanted_fdb = {(mac, addr) for addr, mac in want.items()}
        gateways = {vtep_gateway(addr): mac for addr, mac in want.items()}
        ops = [EntryOp(RTM_DELNEIGH, AF_BRIDGE, addr, mac) for mac, addr in fdb - wanted_fdb]
        ops += [EntryOp(RTM_DELNEIGH, self.family, addr, mac) for addr, mac in neigh.items() if addr not in gateways]
        ops += [EntryOp(RTM_NEWNEIGH, self.family, addr, mac) for addr, mac in gateways.items()
                if neigh.get(addr) != mac]
        ops += [EntryOp(RTM_NEWNEIGH, AF_BRIDGE, addr, mac) for mac, addr in wanted_fdb - fdb]
        if ops:
            write_entries(index, ops)
        self.installed = dict(want)
        return len(ops)

    def remove(self) -> bool:
        """Deletes the device (and with it its entries and the routes through it); False if there was none."""
        self.installed = {}
        try:
            with Rtnl() as rtnl:
                rtnl.run([(f"delete {self.name}", delete_link(self.name))])
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
            return False
        return True


@contextmanager
def _iproute() -> Iterator[IPRoute]:
    """pyroute2's IPRoute, loaded at the first use; its NetlinkError raised as OSError (same errno)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as e:
        raise OSError(e.code, f"vxlan: {e.args[-1]}") from None



@dataclass(frozen=True)
class EntryOp:
    """A permanent neighbour (family AF_INET or AF_INET6) or FDB entry (AF_BRIDGE) of the VTEP to add or delete."""

    kind: int  # RTM_NEWNEIGH or RTM_DELNEIGH
    family: int
    address: Address  # the neighbour's address, or the FDB entry's remote (dst) address
    mac: str


def encode_entry(op: EntryOp, index: int, seq: int) -> bytes:
    """An ndmsg for `op`; a neighbour is replaced, an FDB entry appended (a MAC may have several)."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if op.kind == RTM_NEWNEIGH:
        flags |= NLM_F_CREATE | (NLM_F_APPEND if op.family == AF_BRIDGE else NLM_F_REPLACE)
    body = _NDMSG.pack(op.family, 0, 0, index, NUD_PERMANENT, NTF_SELF if op.family == AF_BRIDGE else 0, 0)
    mac = bytes.fromhex(op.mac.replace(":", ""))
    dst = op.address.packed  # 4 or 16 bytes: aligned either way
    body += _RTA.pack(4 + len(dst), NDA_DST) + dst + _RTA.pack(4 + len(mac), NDA_LLADDR) + mac + b"\0\0"
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), op.kind, flags, seq, 0) + body


def write_entries(index: int, ops: list[EntryOp]) -> None:
    """One batch: every op acknowledged; a missing entry on delete is fine, any other failure raises OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((0, 0))
        for start in range(0, len(ops), 2000):
            batch = ops[start:start + 2000]
            sock.sendall(b"".join(encode_entry(op, index, seq) for seq, op in enumerate(batch, 1)))
            pending, buffer = len(batch), bytearray(1 << 16)
            while pending:
                n = sock.recv_into(buffer)
                for seq, code in _acks(memoryview(buffer)[:n]):
                    pending -= 1
                    op = batch[seq - 1]
                    if code and not (op.kind == RTM_DELNEIGH and code == errno.ENOENT):
                        raise OSError(code, f"vxlan entry {op}: {os.strerror(code)}")


def offloads(device: str) -> dict[str, bool]:
    """The device's checksum and segmentation offloads (ethtool's feature names) that VXLAN speed needs."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as et:
        features = et.get_features(device).features
    return {name: bool(features[name].enable) for name in OFFLOADS if name in features}


def vtep_mtus(node: NodeConfig) -> dict[int, int]:
    """The MTU of each family's VTEP, for the families whose pools use VXLAN: vxlan.mtu, or the MTU of the
    interface holding that family's listen address minus that family's VXLAN overhead."""
    families = {p.cidr.version for p in node.pools if p.vxlan != "never"}
    if node.vxlan.mtu is not None:
        return dict.fromkeys(families, node.vxlan.mtu)
    local = {4: node.listen_address, 6: node.listen_address6}
    return {v: pod_mtu(uplink_mtu(local[v], "vxlan.mtu"), v) for v in sorted(families)}


def overlay_mtu(node: NodeConfig) -> int | None:
    """The MTU of pod interfaces when a pool uses VXLAN (None: none does, the default stays): the smallest
    VTEP's, so a pod's packets fit through the overlay of either family."""
    return min(vtep_mtus(node).values(), default=None)


def connected_subnets(ipr: IPRoute) -> tuple[Network, ...]:
    """The subnets of this host's addresses of both families (not loopback, not link-local, not single
    addresses)."""
    nets = {ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False) for a in ipr.get_addr()}
    return tuple(sorted((n for n in nets if n.prefixlen < n.max_prefixlen and not n.is_loopback
                         and not n.is_link_local), key=lambda n: (n.version, n)))
