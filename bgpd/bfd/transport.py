"""Single-hop BFD over UDP (RFC 5881) for a set of sessions sharing one listen address: the asyncio side.

Packets arrive on port 3784 of the listen address and must carry TTL 255 (GTSM: only a directly connected
neighbour can send them); ours leave from one source port in 49152-65535 with TTL 255 and DSCP CS6. Over IPv6
the same with the hop limit and the traffic class (RFC 5881 section 5); an endpoint is of its listen address's
family, and the node runs one per underlay family. A session is found by the packet's source address, then
its Your Discriminator must be ours. All protocol decisions are the pure `Session`'s; this module only moves
bytes and runs its timers.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import random
import socket
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

from bgpd.bfd.packet import InvalidPacket, decode
from bgpd.bfd.session import Output, Session, Timers, Transition

log = logging.getLogger(__name__)

CONTROL_PORT = 3784
SOURCE_PORTS = range(49152, 65536)
TTL = 255
TOS_CS6 = 0xC0
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's value; Python 3.11's socket module lacks the name
Address = IPv4Address | IPv6Address
# per family: (level, option asking for the received TTL / hop limit, its control message type, the sent TTL /
# hop limit option, the sent TOS / traffic class option)
_SOCKOPTS = {4: (socket.IPPROTO_IP, IP_RECVTTL, socket.IP_TTL, socket.IP_TTL, socket.IP_TOS),
             6: (socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, socket.IPV6_HOPLIMIT, socket.IPV6_UNICAST_HOPS,
                 socket.IPV6_TCLASS)}

OnTransition = Callable[[Address, Transition], None]


def where(address: Address, port: int) -> str:
    """address:port, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class Endpoint:
    """The BFD sessions of one listen address. `on_transition(peer, transition)` hears every state change."""

    def __init__(self, listen: Address, on_transition: OnTransition, port: int = CONTROL_PORT,
                 rng: random.Random | None = None):
        self.listen = listen
        self.port = port
        self.on_transition = on_transition
        self.rng = rng or random.SystemRandom()
        self.sessions: dict[Address, Session] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._timers: dict[Address, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx: socket.socket | None = None
        self._tx: socket.socket | None = None

    async def start(self) -> None:
        family = socket.AF_INET if self.listen.version == 4 else socket.AF_INET6
        level, recv_ttl, _, ttl, tos = _SOCKOPTS[self.listen.version]
        rx = socket.socket(family, socket.SOCK_DGRAM)
        tx = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rx.setsockopt(level, recv_ttl, 1)
            rx.bind((str(self.listen), self.port))
            rx.setblocking(False)
            tx.setsockopt(level, ttl, TTL)
            tx.setsockopt(level, tos, TOS_CS6)
            self._bind_source_port(tx)
            tx.setblocking(False)
        except OSError:
            rx.close()
            tx.close()
            raise
        self._rx, self._tx = rx, tx
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(rx.fileno(), self._readable)

    def _bind_source_port(self, tx: socket.socket) -> None:
        for port in self.rng.sample(SOURCE_PORTS, 64):
            try:
                tx.bind((str(self.listen), port))
                return
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "no free BFD source port in 49152-65535")

    def now(self) -> float:
        """The clock the sessions run on (the event loop's)."""
        return self._loop.time()

    def close(self) -> None:
        """Tells every peer we stop on purpose (AdminDown, RFC 5882 3.2: not a path failure), then closes."""
        if self._loop is None:
            return
        for peer in list(self.sessions):
            self.remove(peer)
        self._loop.remove_reader(self._rx.fileno())
        self._rx.close()
        self._tx.close()
        self._loop = None

    # --- sessions

    def add(self, peer: Address, timers: Timers) -> None:
        if peer in self.sessions:
            self._apply(peer, self.sessions[peer].set_timers(timers, self.now()))
            return
        discr = self._free_discriminator()
        self.sessions[peer] = Session(discr, timers, self.now(), self.rng)
        self._apply(peer, self.sessions[peer].expire(self.now()))

    def remove(self, peer: Address) -> None:
        """Ends the session with AdminDown, sent three times: one lost datagram would otherwise look like a
        failure to the peer (we send nothing more once the session is gone)."""
        session = self.sessions.get(peer)
        if session is None:
            return
        out = session.admin_down(self.now())
        out.send *= 3
        self._apply(peer, out)
        if (handle := self._timers.pop(peer, None)) is not None:
            handle.cancel()
        del self.sessions[peer]

    def _free_discriminator(self) -> int:
        used = {s.local_discr for s in self.sessions.values()}
        while (discr := self.rng.randrange(1, 1 << 32)) in used:
            pass
        return discr

    # --- I/O

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, source = self._rx.recvmsg(128, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP errors queued on the socket
                self.stats["rx_errors"] += 1
                log.debug("bfd receive error: %s", e)
                continue
            self._datagram(data, ancdata, ip_address(source[0]))

    def _datagram(self, data: bytes, ancdata, source: Address) -> None:
        level, _, received, _, _ = _SOCKOPTS[self.listen.version]
        ttl = next((int.from_bytes(d[:4], sys.byteorder) for lvl, kind, d in ancdata
                    if lvl == level and kind == received), None)
        if ttl != TTL:
            self.stats["rx_discarded_ttl"] += 1
            return
        try:
            packet = decode(data)
        except InvalidPacket as e:
            self.stats["rx_discarded_invalid"] += 1
            log.debug("bfd packet from %s discarded: %s", source, e)
            return
        session = self.sessions.get(source)
        if session is None:
            self.stats["rx_discarded_no_session"] += 1
            return
        self.stats["rx_packets"] += 1
        self.stats["rx_poll"] += packet.poll  # the peer changing its timers (RFC 5880 6.5)
        self.stats["rx_final"] += packet.final  # the peer answering our poll
        self._apply(source, session.receive(packet, self.now()))

    def _expire(self, peer: Address) -> None:
        session = self.sessions.get(peer)
        if session is not None:
            self._apply(peer, session.expire(self.now()))

    def _apply(self, peer: Address, out: Output) -> None:
        for packet in out.send:
            try:
                self._tx.sendto(packet.encode(), (str(peer), self.port))
                self.stats["tx_packets"] += 1
            except OSError as e:  # full buffer, no route: the peer's detection timer is the judge
                self.stats["tx_errors"] += 1
                log.debug("bfd send to %s failed: %s", peer, e)
        if out.transition is not None:
            self.on_transition(peer, out.transition)
        if (handle := self._timers.pop(peer, None)) is not None:
            handle.cancel()
        session = self.sessions.get(peer)
        if session is not None and session.wakeup is not None:
            self._timers[peer] = self._loop.call_at(session.wakeup, self._expire, peer)
