"""The DNS server's sockets: a thin asyncio shell (UDP and TCP) around the pure resolver.

Every message goes through the same gate: the source must be a pod or local address (never an open
resolver to the underlay), within its token bucket (bgpd.dns.ratelimit), and parse as a query; anything
else is dropped unanswered and counted. Forwarded queries go to the upstreams in order, at most
MAX_FORWARDS at once; a TCP client's query whose upstream answer came back truncated is asked again over TCP.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rdatatype

from bgpd.dns.metrics import DnsMetrics
from bgpd.dns.ratelimit import RateLimiter
from bgpd.dns.resolver import Forward, Resolver, parse, wire

log = logging.getLogger("tortie.dns")
UPSTREAM_TIMEOUT = 2.0  # seconds per upstream
MAX_FORWARDS = 256  # forwarded queries waiting for an upstream at once
MAX_CONNECTIONS = 128  # TCP clients at once
MAX_SOURCES = 65536  # sources whose admission is remembered
TCP_IDLE = 10.0  # seconds a TCP client may keep a connection without a complete query


class DnsServer:
    def __init__(self, resolver: Resolver, upstreams: list[str], allowed: Callable[[IPv4Address], bool],
                 limiter: RateLimiter, metrics: DnsMetrics):
        self.resolver, self.upstreams, self.allowed = resolver, upstreams, allowed
        self.limiter, self.metrics = limiter, metrics
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._connections = 0
        self._permitted: dict[str, bool] = {}  # source address -> whether it may ask
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self, addresses: list[str], port: int) -> int:
        """Binds UDP and TCP on each address; OSError (with the address) if one cannot be bound. Port 0: the
        port the first UDP socket got (tests). Returns the port."""
        loop = asyncio.get_running_loop()
        for address in addresses:
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(address, port))
                self._transports.append(transport)
                port = transport.get_extra_info("sockname")[1]
                self._servers.append(await asyncio.start_server(self._tcp, address, port, reuse_address=True))
            except OSError as e:
                await self.stop()
                raise OSError(e.errno, f"DNS server on {address} port {port}: {e.strerror}") from None
        return port

    async def stop(self) -> None:
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._transports, self._servers = [], []

    def _admit(self, source: str) -> bool:
        permitted = self._permitted.get(source)
        if permitted is None:  # parsed once per source: a third of the cost of a cached answer otherwise
            try:
                permitted = self.allowed(ip_address(source))
            except ValueError:
                permitted = False
            if len(self._permitted) >= MAX_SOURCES:
                self._permitted.clear()
            self._permitted[source] = permitted
        if not permitted:
            self.metrics.dropped.labels("source").inc()
            return False
        if not self.limiter.allow(source, time.monotonic()):
            self.metrics.dropped.labels("rate_limited").inc()
            return False
        return True

    def respond(self, data: bytes, udp: bool) -> bytes | dns.message.Message | None:
        """The answer's bytes; or the query, for forward(); or None: dropped (malformed). The source was admitted."""
        start = time.perf_counter()
        if (hit := self.resolver.cached(data, udp)) is not None:
            out, qtype, result = hit
            self._count(qtype, result, "zone", start)
            return out
        query = parse(data)
        if query is None:
            self.metrics.dropped.labels("malformed").inc()
            return None
        decision = self.resolver.answer(query)
        if isinstance(decision, Forward):
            return query
        out, qtype = self._done(query, decision.message, decision.result, udp, "zone", start)
        self.resolver.remember(data, udp, out, qtype, decision)
        return out

    async def forward(self, query: dns.message.Message, udp: bool) -> bytes | None:
        """The upstream's answer (SERVFAIL if none answered); None if too many forwards wait already."""
        start = time.perf_counter()
        if self._forwards.locked():
            self.metrics.dropped.labels("busy").inc()
            return None
        async with self._forwards:
            response, result = await self._forward(query, udp)
        return self._done(query, response, result, udp, "upstream", start)[0]

    def _done(self, query: dns.message.Message, response: dns.message.Message, result: str, udp: bool, by: str,
              start: float) -> tuple[bytes, str]:
        """The response's bytes, counted, and the query type's metric label."""
        out = wire(response, query, udp)
        if udp and out[2] & 0x02 and not response.flags & dns.flags.TC:  # TC set by the size limit, not upstream
            self.metrics.truncated.inc()
        qtype = self.metrics.qtype(dns.rdatatype.to_text(query.question[0].rdtype if query.question else 0))
        self._count(qtype, result, by, start)
        return out, qtype

    def _count(self, qtype: str, result: str, by: str, start: float) -> None:
        self.metrics.queries.labels(qtype, result).inc()
        self.metrics.latency.labels(by).observe(time.perf_counter() - start)

    async def _forward(self, query: dns.message.Message, udp: bool) -> tuple[dns.message.Message, str]:
        for upstream in self.upstreams:
            try:
                response = await dns.asyncquery.udp(query, upstream, timeout=UPSTREAM_TIMEOUT)
                if response.flags & dns.flags.TC and not udp:
                    response = await dns.asyncquery.tcp(query, upstream, timeout=UPSTREAM_TIMEOUT)
                return response, "forwarded"
            except (dns.exception.DNSException, OSError, EOFError) as e:
                log.debug("upstream %s failed: %r", upstream, e)
        return self.resolver.failure(query), "servfail"

    def datagram(self, transport: asyncio.DatagramTransport, data: bytes, source: tuple) -> None:
        if not self._admit(source[0]):
            return
        out = self.respond(data, udp=True)
        if isinstance(out, bytes):
            transport.sendto(out, source)
        elif out is not None:
            task = asyncio.get_running_loop().create_task(self._forward_datagram(transport, out, source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward_datagram(self, transport: asyncio.DatagramTransport, query: dns.message.Message,
                                source: tuple) -> None:
        out = await self.forward(query, udp=True)
        if out is not None and not transport.is_closing():
            transport.sendto(out, source)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        if self._connections >= MAX_CONNECTIONS:
            self.metrics.dropped.labels("busy").inc()
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                try:
                    (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                if not self._admit(source):
                    return
                out = self.respond(data, udp=False)
                if isinstance(out, dns.message.Message):
                    out = await self.forward(out, udp=False)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._connections -= 1
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.server.datagram(self.transport, data, addr)
