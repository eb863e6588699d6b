"""The VXLAN tunnel endpoint in the kernel: the device, and a permanent neighbour and FDB entry per remote
VTEP (bgpd/overlay/vxlan.py says which). Everything on our device is ours: what is not wanted there goes.

Blocking pyroute2 calls: run them in a worker thread (`asyncio.to_thread`).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import IPRoute

from bgpd.dataplane.uplink import uplink_mtu
from bgpd.dataplane.netlink_routes import (_NLMSGHDR, _RTA, NETLINK_ROUTE, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
                                           NLM_F_REQUEST, _acks)
from bgpd.overlay.vxlan import pod_mtu, vtep_mac
from config.node import NodeConfig, Vxlan

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
    connected: tuple[IPv4Network, ...]  # this host's subnets, for cross-subnet


class VtepDevice:
    def __init__(self, settings: Vxlan, local: IPv4Address):
        self.settings, self.local = settings, local
        self.installed: dict[IPv4Address, str] = {}  # remote VTEP address -> MAC, as the kernel holds them

    def ensure(self, mtu: int) -> DeviceState:
        """The device as configured (created, or re-created if its VNI, port or local address differ), up."""
        s = self.settings
        with IPRoute() as ipr:
            index = self._index(ipr)
            if index is not None and not self._matches(ipr, index):
                log.warning("vxlan device %s differs from the configuration: re-creating it", s.device)
                ipr.link("del", index=index)
                index = None
            if index is None:
                ipr.link("add", ifname=s.device, kind="vxlan", vxlan_id=s.vni, vxlan_port=s.port,
                         vxlan_local=str(self.local), vxlan_learning=0)
                index = self._index(ipr)
                self.installed = {}
                log.info("created vxlan device %s vni=%d port=%d local=%s", s.device, s.vni, s.port, self.local)
            link = ipr.get_links(index)[0]
            if link.get_attr("IFLA_ADDRESS") != vtep_mac(self.local):  # setting it flushes the neighbours
                ipr.link("set", index=index, address=vtep_mac(self.local))
            if link.get_attr("IFLA_MTU") != mtu or not link["flags"] & 1:
                ipr.link("set", index=index, mtu=mtu, state="up")
            connected = connected_subnets(ipr)
        return DeviceState(index, mtu, offloads(s.device), connected)

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.settings.device)
        return found[0] if found else None

    def _matches(self, ipr: IPRoute, index: int) -> bool:
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        return (data.get_attr("IFLA_VXLAN_ID") == self.settings.vni
                and data.get_attr("IFLA_VXLAN_PORT") == self.settings.port
                and data.get_attr("IFLA_VXLAN_LOCAL") == str(self.local))

    def sync(self, want: dict[IPv4Address, str]) -> int:
        """Makes the device's neighbours and FDB entries exactly `want` (address -> MAC); returns the changes."""
        with IPRoute() as ipr:
            index = self._index(ipr)
            if index is None:
                raise OSError(f"vxlan device {self.settings.device} is gone")
            neigh = {IPv4Address(n.get_attr("NDA_DST")): n.get_attr("NDA_LLADDR")
                     for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
                     if n["state"] & NUD_PERMANENT}
            fdb = {(n.get_attr("NDA_LLADDR"), IPv4Address(n.get_attr("NDA_DST")))
                   for n in ipr.get_neighbours(family=AF_BRIDGE, ifindex=index) if n.get_attr("NDA_DST") is not None}
        wanted_fdb = {(mac, addr) for addr, mac in want.items()}
        ops = [EntryOp(RTM_DELNEIGH, AF_BRIDGE, addr, mac) for mac, addr in fdb - wanted_fdb]
        ops += [EntryOp(RTM_DELNEIGH, socket.AF_INET, addr, mac) for addr, mac in neigh.items() if addr not in want]
        ops += [EntryOp(RTM_NEWNEIGH, socket.AF_INET, addr, mac) for addr, mac in want.items() if neigh.get(addr) != mac]
        ops += [EntryOp(RTM_NEWNEIGH, AF_BRIDGE, addr, mac) for mac, addr in wanted_fdb - fdb]
        if ops:
            write_entries(index, ops)
        self.installed = dict(want)
        return len(ops)

    def remove(self) -> bool:
        """Deletes the device (and with it its entries and the routes through it); False if there was none."""
        with IPRoute() as ipr:
            index = self._index(ipr)
            if index is not None:
                ipr.link("del", index=index)
        self.installed = {}
        return index is not None



@dataclass(frozen=True)
class EntryOp:
    """A permanent neighbour (family AF_INET) or FDB entry (AF_BRIDGE) of the VTEP to add or delete."""

    kind: int  # RTM_NEWNEIGH or RTM_DELNEIGH
    family: int
    address: IPv4Address
    mac: str


def encode_entry(op: EntryOp, index: int, seq: int) -> bytes:
    """An ndmsg for `op`; a neighbour is replaced, an FDB entry appended (a MAC may have several)."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if op.kind == RTM_NEWNEIGH:
        flags |= NLM_F_CREATE | (NLM_F_APPEND if op.family == AF_BRIDGE else NLM_F_REPLACE)
    body = _NDMSG.pack(op.family, 0, 0, index, NUD_PERMANENT, NTF_SELF if op.family == AF_BRIDGE else 0, 0)
    mac = bytes.fromhex(op.mac.replace(":", ""))
    body += _RTA.pack(8, NDA_DST) + op.address.packed + _RTA.pack(4 + len(mac), NDA_LLADDR) + mac + b"\0\0"
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


def overlay_mtu(node: NodeConfig, ipr: IPRoute) -> int | None:
    """The MTU of the VTEP and of pod interfaces when a pool uses VXLAN (None: none does, the default
    stays): vxlan.mtu, or the MTU of the interface holding listen_address minus the VXLAN overhead."""
    if not node.uses_vxlan():
        return None
    if node.vxlan.mtu is not None:
        return node.vxlan.mtu
    return pod_mtu(uplink_mtu(node.listen_address, ipr, "vxlan.mtu"))


def connected_subnets(ipr: IPRoute) -> tuple[IPv4Network, ...]:
    """The subnets of this host's IPv4 addresses (not loopback, not single addresses)."""
    nets = {IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            for a in ipr.get_addr(family=socket.AF_INET)}
    return tuple(sorted(n for n in nets if n.prefixlen < 32 and not n.is_loopback))
