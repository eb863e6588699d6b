"""What the kernel really holds of our routes: rtnetlink change events and dumps, read as one stream.

A dump and the change events travel through the same socket, so the kernel's order is kept: the last
word on a prefix, event or dump entry, is its state now. The events of our own writes carry the
writer's netlink port id; they are recognised from the header and the prefix alone, so a burst of
10,000 of our own route adds costs a few milliseconds here, not the 0.3 s of decoding them.

IPv4 removes the routes through a link that goes down without a single RTM_DELROUTE: a link event
therefore asks for a dump, as does a lost event (ENOBUFS) or a route of another protocol that may have
taken the place of one of ours.
"""
from __future__ import annotations

import asyncio
import errno
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from bgpd.dataplane.netlink_routes import (_NLMSGHDR, _RTA, _RTMSG, NETLINK_ROUTE, NLMSG_DONE, NLMSG_ERROR, RTA_DST,
                                           RTM_DELLINK, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE, KernelRoute,
                                           decode_route, dump_request)

RTMGRP_LINK, RTMGRP_IPV4_ROUTE = 0x1, 0x40
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20  # the events of a 1,024-route write fit many times over
_INT = struct.Struct("=i")


@dataclass
class Changes:
    """What a stream learnt since it was last taken.

    routes: prefix key -> (prefix, next hops or None: gone), or None: as our own writer left it.
    full: a dump completed, so a prefix not in `routes` has no route of ours.
    """

    routes: dict[int, tuple[IPv4Network, KernelRoute | None] | None] = field(default_factory=dict)
    full: bool = False
    links: bool = False  # a link changed: its routes may be gone (IPv4 sends no RTM_DELROUTE for them)
    foreign: set[IPv4Network] = field(default_factory=set)  # routes of others added over the same key as ours
    foreign_added: bool = False  # a route of another protocol appeared (a connected route: gateways reachable)
    dump_error: int = 0  # errno of a dump the kernel refused (then `full` is not set by it)


def prefix_key(address: int, length: int) -> int:
    return address << 6 | length


def key_prefix(key: int) -> IPv4Network:
    return IPv4Network((key >> 6, key & 63))


class RouteStream:
    """Pure parser of a route-watch socket's datagrams, in arrival order (no I/O)."""

    def __init__(self, protocol: int, table: int, own_port: int, metric: int = 0):
        self.protocol, self.table, self.own_port, self.metric = protocol, table, own_port, metric
        self.changes = Changes()
        self.dumping = False
        self.dump_seq = 0  # of the running dump: only its end ends it
        self.dump_again = False  # asked for while one was running (or events were lost): another at its end
        self._touched: set[int] = set()

    @property
    def settled(self) -> bool:
        """No dump running or owed: `changes` describes the kernel up to the last datagram read."""
        return not self.dumping and not self.dump_again

    def begin_dump(self, seq: int) -> None:
        self.dumping, self.dump_seq, self._touched = True, seq, set()

    def overrun(self) -> None:
        """Events were lost: only a dump that starts after this tells the truth again."""
        self.dump_again = True

    def take(self) -> Changes:
        taken, self.changes = self.changes, Changes()
        return taken

    def feed(self, data: memoryview | bytes) -> None:
        offset, size = 0, len(data)
        while offset + _NLMSGHDR.size <= size:
            length, kind, _flags, seq, port = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > size:
                self.overrun()  # a datagram we cannot read: treat it as lost events
                return
            body, end = offset + _NLMSGHDR.size, offset + length
            if kind == RTM_NEWROUTE or kind == RTM_DELROUTE:
                if port and port == self.own_port:
                    self._own(data, body, end)
                else:
                    self._route(kind, data, body, end)
            elif kind == RTM_NEWLINK or kind == RTM_DELLINK:
                self.changes.links = True
            elif (kind == NLMSG_DONE or kind == NLMSG_ERROR) and self.dumping and seq == self.dump_seq:
                self._dump_done(-_INT.unpack_from(data, body)[0] if end - body >= _INT.size else 0)
            offset += (length + 3) & ~3

    def _own(self, data, body: int, end: int) -> None:
        """Our writer's change: the prefix is enough, the writer knows what it wrote. It matters only
        if it follows another change of the same prefix, or a dump is running."""
        changes = self.changes
        if not (changes.routes or changes.full or self.dumping) or end - body < _RTMSG.size:
            return
        dst_len = data[body + 1]
        offset, dst = body + _RTMSG.size, 0
        while offset + _RTA.size <= end:
            alen, kind = _RTA.unpack_from(data, offset)
            if alen < _RTA.size:
                break
            if kind == RTA_DST and alen == 8:
                dst = int.from_bytes(data[offset + 4:offset + 8], "big")
                break
            offset += (alen + 3) & ~3
        key = prefix_key(dst, dst_len)
        changes.routes[key] = None
        if self.dumping:
            self._touched.add(key)

    def _route(self, kind: int, data, body: int, end: int) -> None:
        try:
            route = decode_route(data, body, end)
        except ValueError:
            self.overrun()  # a change we cannot read: as good as lost
            return
        if route is None:
            return
        table, protocol, metric, prefix, hops = route
        if protocol != self.protocol:
            if kind == RTM_NEWROUTE:
                self.changes.foreign_added = True
                if table == self.table and metric == self.metric:
                    self.changes.foreign.add(prefix)
            return
        if table != self.table or metric != self.metric:
            return
        key = prefix_key(int(prefix.network_address), prefix.prefixlen)
        self.changes.routes[key] = (prefix, hops if kind == RTM_NEWROUTE else None)
        if self.dumping:
            self._touched.add(key)

    def _dump_done(self, code: int) -> None:
        """The end of our dump; an error ends it too (no retry here: a refusal would repeat at once)."""
        self.dumping = False
        if code and code != errno.ENOENT:  # ENOENT: the table does not exist yet, so it is empty
            self.changes.dump_error = code
            return
        routes = self.changes.routes
        for key in routes.keys() - self._touched:  # older than the dump, which did not list them
            del routes[key]
        self._touched = set()
        self.changes.full = True


class RouteMonitor:
    """A non-blocking rtnetlink socket feeding a RouteStream from the event loop."""

    BUFFER = 1 << 16  # a dump datagram is at most 32 kB

    def __init__(self, stream: RouteStream, groups: int = 0):
        self.stream = stream
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # dumps filtered by protocol in the kernel
        self.sock.bind((0, groups))
        self._buffer = bytearray(self.BUFFER)
        self._view = memoryview(self._buffer)
        self._seq = 0
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def __enter__(self) -> RouteMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def dump(self) -> None:
        """Asks for every route of ours; one at a time (the kernel runs one dump per socket)."""
        if self.stream.dumping:
            self.stream.dump_again = True
            return
        self.stream.dump_again = False
        self._seq += 1
        self.sock.send(dump_request(self._seq, self.stream.protocol, self.stream.table))
        self.stream.begin_dump(self._seq)

    def drain(self) -> None:
        """Reads everything queued now; starts an owed dump once the running one is over."""
        while True:
            try:
                n = self.sock.recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.stream.overrun()
                continue
            self.stream.feed(self._view[:n])
        if self.stream.dump_again and not self.stream.dumping:
            self.dump()

    async def wait(self, timeout: float | None = None) -> None:
        """Until something arrives (or `timeout` seconds). Not wait_for: in 3.11 it can swallow a cancel."""
        timer = None if timeout is None else self._loop.call_later(timeout, self._ready.set)
        try:
            await self._ready.wait()
        finally:
            if timer is not None:
                timer.cancel()
        self._ready.clear()

    async def settle(self) -> None:
        """Until the running and owed dumps are read."""
        self.drain()
        while not self.stream.settled:
            await self.wait()
            self.drain()

    def _readable(self) -> None:
        self.drain()
        self._ready.set()


def reconcile(installed: dict[IPv4Network, KernelRoute], changes: Changes
              ) -> tuple[dict[IPv4Network, KernelRoute], set[IPv4Network]]:
    """What the kernel holds, from our record `installed` (updated in place unless the changes are a full
    read) and what changed since, and the prefixes where the two differed.

    Only valid while no write of ours is in flight and after every event of the finished ones was read.
    """
    drift: set[IPv4Network] = set()
    if changes.full:  # every route of ours is in `changes`
        kernel: dict[IPv4Network, KernelRoute] = {}
        for key, entry in changes.routes.items():
            if entry is None:  # as our writer left it: as installed
                prefix = key_prefix(key)
                hops = installed.get(prefix)
            else:
                prefix, hops = entry
            if hops is not None:
                kernel[prefix] = hops
        drift = installed.keys() ^ kernel.keys()
        drift.update(p for p, hops in kernel.items() if p not in drift and installed[p] != hops)
        return kernel, drift
    for entry in changes.routes.values():
        if entry is None:
            continue
        prefix, hops = entry
        if installed.get(prefix) != hops:
            drift.add(prefix)
            if hops is None:
                del installed[prefix]
            else:
                installed[prefix] = hops
    return installed, drift
