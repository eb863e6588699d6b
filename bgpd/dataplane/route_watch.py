"""What the kernel really holds of our routes: rtnetlink change events and dumps, read as one stream.

A dump and the change events travel through the same socket, so the kernel's order is kept: the last
word on a prefix, event or dump entry, is its state now. The events of our own writes never reach the
socket: a socket filter drops those that carry our writer's netlink port id, so a burst of 10,000 of our
route adds costs nothing here (receiving them cost the writer 10 % more time). The writer tells the
stream what it wrote instead; only a prefix that we wrote and someone else changed in the same interval
has an unknown order, and is read again while our writes wait (`reconcile` says so).

IPv4 removes the routes through a link that goes down, or whose last address goes, without a single
RTM_DELROUTE: a link or address event therefore asks for a dump, as does a lost event (ENOBUFS) or a
route of another protocol that may have taken the place of one of ours. IPv6 does send RTM_DELROUTE
then, one per hop of an ECMP route (kernel 6.x): an IPv6 delete naming one gateway may leave the other
hops in place, so it asks for a dump too, as does an IPv6 hop appended to a route (NLM_F_APPEND). Both
families travel through one socket and one dump (AF_UNSPEC).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from bgpd.dataplane.netlink_routes import (_NLMSGHDR, NETLINK_ROUTE, NLMSG_DONE, NLMSG_ERROR, RTM_DELLINK,
                                           RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE, OTHER_ROUTE, KernelRoute,
                                           RouteOp, decode_route, dump_request)
from bgpd.prefixes import V6

RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
RTM_NEWADDR, RTM_DELADDR = 20, 21
_INTERFACE_EVENTS = frozenset((RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR))
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
SO_ATTACH_FILTER, SO_RCVBUFFORCE = 26, 33
NLM_F_MULTI, NLM_F_APPEND = 0x2, 0x800
RCVBUF = 8 << 20  # the events of 10,000 route changes by others fit
_INT = struct.Struct("=i")
_BPF = struct.Struct("=HBBI")
Write = tuple[Sequence[RouteOp], Mapping[int, int]]  # a batch of our writer's and its failures by prefix


@dataclass
class Changes:
    """What a stream learnt since it was last taken.

    routes: prefix -> next hops, or None: gone. full: a dump completed, so a prefix not in `routes` has
    no route of ours (except what we wrote since it began: see `reconcile`).
    """

    routes: dict[int, KernelRoute | None] = field(default_factory=dict)
    by_others: set[int] = field(default_factory=set)  # changed by others' events (not dump entries)
    by_others_in_dump: set[int] = field(default_factory=set)  # the same since the last dump began
    writes: list[Write] = field(default_factory=list)  # ours, whose events we never see
    writes_in_dump: int = 0  # writes[writes_in_dump:] ended after the last dump began
    full: bool = False
    links: bool = False  # a link or address changed: routes may be gone (IPv4 sends no RTM_DELROUTE for them)
    foreign: set[int] = field(default_factory=set)  # routes of others added with the key of ours
    foreign_added: bool = False  # a route of another protocol appeared (a connected route: gateways reachable)
    dump_error: int = 0  # errno of a dump the kernel refused (then `full` is not set by it)


class RouteStream:
    """Pure parser of a route-watch socket's datagrams, in arrival order (no I/O)."""

    def __init__(self, protocol: int, table: int, own_port: int, metric: int = 0):
        self.protocol, self.table, self.own_port, self.metric = protocol, table, own_port, metric
        self.changes = Changes()
        self.dumping = False
        self.dump_seq = 0  # of the running dump: only its end ends it
        self.dump_again = False  # asked for while one was running (or events were lost): another at its end
        self._before: dict[int, KernelRoute | None] = {}  # changes read before the running dump
        self._listed: int | None = None  # the IPv6 prefix of the previous dump entry

    @property
    def settled(self) -> bool:
        """No dump running or owed: `changes` describes the kernel up to the last datagram read."""
        return not self.dumping and not self.dump_again

    @property
    def news(self) -> bool:
        """Something to act on: a change, a link, a dump over or owed."""
        c = self.changes
        return bool(c.routes or c.full or c.links or c.foreign_added or c.dump_error or self.dump_again)

    def begin_dump(self, seq: int) -> None:
        """The dump lists every route of ours: what was read before it matters only if it fails."""
        self.dumping, self.dump_seq = True, seq
        self._before, self.changes.routes = self.changes.routes, {}
        self.changes.by_others_in_dump = set()
        self.changes.writes_in_dump = len(self.changes.writes)  # one in flight now ends later: it counts

    def wrote(self, ops: Sequence[RouteOp], failed: Mapping[int, int]) -> None:
        """Our writer finished a batch (its events are filtered out of the stream); `failed`: by prefix."""
        self.changes.writes.append((ops, failed))

    def overrun(self) -> None:
        """Events were lost: only a dump that starts after this tells the truth again."""
        self.dump_again = True

    def take(self) -> Changes:
        taken, self.changes = self.changes, Changes()
        return taken

    def feed(self, data: memoryview | bytes) -> None:
        offset, size = 0, len(data)
        while offset + _NLMSGHDR.size <= size:
            length, kind, flags, seq, port = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > size:
                self.overrun()  # a datagram we cannot read: treat it as lost events
                return
            body, end = offset + _NLMSGHDR.size, offset + length
            if kind == RTM_NEWROUTE or kind == RTM_DELROUTE:
                if port != self.own_port or not port:  # ours are dropped by the socket filter already
                    self._route(kind, data, body, end, flags)
            elif kind in _INTERFACE_EVENTS:
                self.changes.links = True
            elif (kind == NLMSG_DONE or kind == NLMSG_ERROR) and self.dumping and seq == self.dump_seq:
                self._dump_done(-_INT.unpack_from(data, body)[0] if end - body >= _INT.size else 0)
            offset += (length + 3) & ~3

    def _route(self, kind: int, data, body: int, end: int, flags: int) -> None:
        try:
            route = decode_route(data, body, end)
        except ValueError:
            self.overrun()  # a change we cannot read: as good as lost
            return
        if route is None:
            return
        table, protocol, metric, prefix, hops = route
        changes = self.changes
        if protocol != self.protocol:
            if kind == RTM_NEWROUTE:
                changes.foreign_added = True
                if table == self.table and metric == self.metric:
                    changes.foreign.add(prefix)
            return
        if table != self.table or metric != self.metric:
            return
        listed = flags & NLM_F_MULTI
        if prefix & V6:
            if listed and self._listed == prefix and hops and hops is not OTHER_ROUTE:
                previous = changes.routes.get(prefix)  # an older kernel lists each hop of ECMP on its own
                if previous and previous is not OTHER_ROUTE:
                    hops = previous | hops
            elif not listed and (flags & NLM_F_APPEND or kind == RTM_DELROUTE and len(hops) == 1
                                 and hops is not OTHER_ROUTE):
                self.dump_again = True  # one hop came or went: the route's other hops are known to the kernel only
            self._listed = prefix if listed else None
        changes.routes[prefix] = hops if kind == RTM_NEWROUTE else None
        if not listed:
            changes.by_others.add(prefix)
            changes.by_others_in_dump.add(prefix)

    def _dump_done(self, code: int) -> None:
        """The end of our dump; an error ends it too (no retry here: a refusal would repeat at once)."""
        self.dumping = False
        before, self._before = self._before, {}
        if code and code != errno.ENOENT:  # ENOENT: the table does not exist yet, so it is empty
            self.changes.dump_error = code
            before.update(self.changes.routes)  # the changes read meanwhile are later
            self.changes.routes = before
            return
        self.changes.full = True


def written(writes: Iterable[Write]) -> set[int]:
    return {op.prefix for ops, failed in writes for op in ops if op.prefix not in failed}


def reconcile(installed: dict[int, KernelRoute], changes: Changes
              ) -> tuple[dict[int, KernelRoute], set[int]] | None:
    """What the kernel holds, from our record `installed` (updated in place unless the changes are a full
    read) and what was read since, and the prefixes where the two differed.

    Our record is right for what we wrote (after the dump began, for a full read) unless someone else
    changed it too, in an order we cannot know: then None, and the caller reads the kernel again with our
    writes held back. Valid only with no write of ours in flight.
    """
    drift: set[int] = set()
    if changes.full:  # every route of ours is in `changes`, or was written since the dump began
        ours = written(changes.writes[changes.writes_in_dump:])
        if not ours.isdisjoint(changes.by_others_in_dump):
            return None
        kernel = changes.routes
        if None in kernel.values() or ours:
            kernel = {p: hops for p, hops in kernel.items() if hops is not None}
            for prefix in ours:
                hops = installed.get(prefix)
                if hops is None:
                    kernel.pop(prefix, None)
                else:
                    kernel[prefix] = hops
        same = 0  # hashing 10,000 prefixes costs: once each where possible
        for prefix, hops in kernel.items():
            if installed.get(prefix) == hops:
                same += 1
            else:
                drift.add(prefix)
        if same + len(drift & installed.keys()) < len(installed):  # some of ours are gone
            drift.update(p for p in installed if p not in kernel)
        return kernel, drift
    if changes.by_others and changes.writes and not written(changes.writes).isdisjoint(changes.by_others):
        return None
    for prefix, hops in changes.routes.items():
        if installed.get(prefix) != hops:
            drift.add(prefix)
            if hops is None:
                del installed[prefix]
            else:
                installed[prefix] = hops
    return installed, drift


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
        if stream.own_port:
            _drop_port(self.sock, stream.own_port)
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
        if self.stream.news:
            self._ready.set()


def _drop_port(sock: socket.socket, port: int) -> None:
    """A classic BPF filter: messages whose nlmsg_pid is `port` (loaded big-endian, stored host-endian)
    are dropped in the kernel."""
    swapped = int.from_bytes(port.to_bytes(4, sys.byteorder), "big")
    program = b"".join(_BPF.pack(*insn) for insn in (
        (0x20, 0, 0, 12),          # ld [12]: nlmsg_pid
        (0x15, 0, 1, swapped),     # jeq port: next, else skip one
        (0x06, 0, 0, 0),           # ret 0: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # ret all: keep
    ))
    code = ctypes.create_string_buffer(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", 4, ctypes.addressof(code)))
