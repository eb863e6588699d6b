"""Blocking rtnetlink for wiring a pod: veth links, addresses, neighbours and device routes, hand-packed.

pyroute2 costs a CNI call ~120 ms to import and a helper process per namespace; these few messages are
packed with `struct` (the route layouts and helpers of netlink_routes.py), sent as one batch per
namespace, each acknowledged, so a failure names the step that failed. The tests decode every message
with pyroute2's codec.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from bgpd.dataplane.netlink_routes import (_NLMSGHDR, _RTA, _RTMSG, _U32, NETLINK_ROUTE, NLM_F_ACK, NLM_F_CREATE,
                                           NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
                                           RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_TABLE, RTM_DELLINK,
                                           RTM_GETROUTE, RTM_NEWLINK, RTM_NEWROUTE, RTN_UNICAST, RT_SCOPE_UNIVERSE,
                                           _attr4)

RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_NEWNEIGH = 18, 20, 22, 28
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 5, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NDA_DST, NDA_LLADDR = 1, 2
IFF_UP = 0x1
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
RTPROT_STATIC = 4  # the pod's own routes, as an administrator would set them
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_INT = struct.Struct("=i")  # the error code that opens NLMSG_ERROR and NLMSG_DONE
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    peer_index: int  # a veth's peer (in its own namespace); else the link's own index


def _attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return _RTA.pack(_RTA.size + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _message(kind: int, flags: int, body: bytes) -> bytes:
    """A request; Rtnl.run sets the sequence number."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, 0, 0) + body


def _name(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


def veth(name: str, peer: str, peer_netns_fd: int, mtu: int | None = None) -> bytes:
    """Creates veth NAME here and its peer PEER in the namespace of the open fd (with MTU if given), both down.

    Set them up with link_up afterwards: the kernel refuses (ENOTCONN) or leaves without carrier a side set up
    in this request, as the pair is not linked yet."""
    extra = _attr(IFLA_MTU, _U32.pack(mtu)) if mtu else b""
    peer_msg = (_IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(peer) + extra
                + _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd)))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name) + extra + _attr(IFLA_LINKINFO, info)
    return _message(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def link_up(name: str) -> bytes:
    return _message(RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + _name(name))


def get_link(name: str) -> bytes:
    """Asks for one link by name: the answer is an RTM_NEWLINK (see decode_link), no dump."""
    return _message(RTM_GETLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name))


def get_link_at(index: int) -> bytes:
    """Asks for one link by index: the answer is an RTM_NEWLINK (see decode_link), no dump."""
    return _message(RTM_GETLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))


def delete_link(name: str) -> bytes:
    return _message(RTM_DELLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name))


def address(index: int, ip: Address, prefixlen: int) -> bytes:
    """IP/PREFIXLEN on link INDEX. An IPv6 address skips duplicate address detection (nodad): IPAM gave it to this
    link alone, and a tentative address could not be used for the first second or so."""
    flags = IFA_F_NODAD if ip.version == 6 else 0
    body = _IFADDRMSG.pack(FAMILY[ip.version], prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    return _message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def permanent_neighbour(index: int, ip: Address, mac: str) -> bytes:
    body = _NDMSG.pack(FAMILY[ip.version], index, NUD_PERMANENT, 0, 0)
    body += _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    return _message(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, body)


def device_route(dst: Network, oif: int, protocol: int, gateway: Address | None = None) -> bytes:
    """dst dev OIF, or dst via GATEWAY dev OIF, in the main table; never replaces a route. An IPv4 route without a
    gateway has scope link; IPv6 routes have no scope (the kernel keeps universe)."""
    scope = RT_SCOPE_UNIVERSE if gateway or dst.version == 6 else RT_SCOPE_LINK
    body = _RTMSG.pack(FAMILY[dst.version], dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST, 0)
    body += _attr4(RTA_TABLE, _U32.pack(RT_TABLE_MAIN)) + _attr4(RTA_OIF, _U32.pack(oif))
    if dst.prefixlen:
        body += _attr(RTA_DST, dst.network_address.packed)
    if gateway:
        body += _attr(RTA_GATEWAY, gateway.packed)
    return _message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def addresses(version: int | None = None) -> bytes:
    """Dumps the namespace's addresses of one IP version, or of both (see decode_address); one dump per batch (the
    kernel runs one dump at a time on a socket)."""
    family = socket.AF_UNSPEC if version is None else FAMILY[version]
    return _message(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, 0))


def route_to(dst: Address) -> bytes:
    """Asks which route the kernel takes to dst: the answer is an RTM_NEWROUTE (see route_oif)."""
    body = _RTMSG.pack(FAMILY[dst.version], dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + _attr(RTA_DST, dst.packed)
    return _message(RTM_GETROUTE, 0, body)


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes from `offset` to the end of the message starting at 0: kind -> payload."""
    end = min(_NLMSGHDR.unpack_from(data)[0], len(data))
    out = {}
    while offset + _RTA.size <= end:
        alen, kind = _RTA.unpack_from(data, offset)
        if alen < _RTA.size:
            break
        out[kind] = data[offset + _RTA.size:offset + alen]
        offset += (alen + 3) & ~3
    return out


def _u32(attrs: dict[int, bytes], kind: int, default: int) -> int:
    value = attrs.get(kind, b"")
    return _U32.unpack(value)[0] if len(value) == 4 else default


def decode_link(data: bytes) -> Link:
    """An RTM_NEWLINK message (header included)."""
    index = _IFINFOMSG.unpack_from(data, _NLMSGHDR.size)[2]
    attrs = _attributes(data, _NLMSGHDR.size + _IFINFOMSG.size)
    return Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")), _u32(attrs, IFLA_MTU, 0),
                _u32(attrs, IFLA_LINK, index))


def decode_address(data: bytes) -> tuple[int, Address, int]:
    """An RTM_NEWADDR message of either family: (interface index, local address, prefix length)."""
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, _NLMSGHDR.size)
    attrs = _attributes(data, _NLMSGHDR.size + _IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs[IFA_ADDRESS]
    return index, (IPv6Address if family == socket.AF_INET6 else IPv4Address)(raw), prefixlen


def route_oif(data: bytes) -> int:
    """The outgoing interface of an RTM_NEWROUTE message (0: none)."""
    return _u32(_attributes(data, _NLMSGHDR.size + _RTMSG.size), RTA_OIF, 0)


class Rtnl:
    """A blocking rtnetlink socket in the namespace the calling thread is in when it is made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def run(self, steps: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
        """Sends (what, request) pairs as one batch; returns the answers of GET requests by `what`.

        The kernel handles them in order and acknowledges each (a dump ends with NLMSG_DONE instead). The
        first failure raises OSError(errno, "cannot WHAT: reason"); later requests of the batch ran anyway
        (the caller rolls back).
        """
        by_seq: dict[int, str] = {}
        batch = bytearray()
        for what, request in steps:
            self._seq += 1
            by_seq[self._seq] = what
            start = len(batch)
            batch += request
            struct.pack_into("=I", batch, start + 8, self._seq)
        self.sock.sendall(batch)
        answers: dict[str, list[bytes]] = {w: [] for w in by_seq.values()}
        failure: tuple[int, str] | None = None
        pending = set(by_seq)
        while pending:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if seq in pending:
                    if kind == NLMSG_ERROR or kind == NLMSG_DONE:
                        pending.discard(seq)
                        code = -_INT.unpack_from(data, offset + _NLMSGHDR.size)[0] if length >= 20 else 0
                        if code and failure is None:
                            failure = (code, by_seq[seq])
                    else:
                        answers[by_seq[seq]].append(data[offset:offset + length])
                offset += (length + 3) & ~3
        if failure is not None:
            code, what = failure
            raise OSError(code, f"cannot {what}: {os.strerror(code)}")
        return answers
