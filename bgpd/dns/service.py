"""The node's DNS service: follows the datastore into the resolver's zone and runs the server.

The zone is rebuilt (a few ms at 1,000 endpoints) when endpoints or block claims change, or a node goes down or
comes back; a burst of changes makes one rebuild. Liveness itself is asked at answer time (Datastore.alive),
so a node whose lease ran out drops out of answers without waiting for a change.
"""
from __future__ import annotations

import asyncio
import logging
import os
from ipaddress import IPv4Address, IPv6Address

from prometheus_client import CollectorRegistry
from pyroute2.netlink.exceptions import NetlinkError

from bgpd.dns.address import ensure_address, remove_address
from bgpd.dns.metrics import DnsMetrics
from bgpd.dns.ratelimit import RateLimiter
from bgpd.dns.resolver import Resolver
from bgpd.dns.server import DnsServer
from bgpd.dns.zone import build, in_pools
from bgpd.ipam.ownership import EndpointGate, Ignored
from config.datastore import Datastore
from config.node import NodeConfig

log = logging.getLogger("tortie.dns")
COALESCE = 0.005  # seconds to gather a burst of changes into one rebuild
LOOPBACK = "127.0.0.1"


class DnsService:
    def __init__(self, ds: Datastore, node: NodeConfig, registry: CollectorRegistry | None):
        self.ds, self.name, self.settings = ds, node.name, node.dns
        self.pools = tuple(p.cidr for p in node.pools)
        self.resolver = Resolver(node.dns.domain, node.dns.ttl, self.pools, forwarding=bool(node.dns.upstreams))
        self.resolver.alive = self.alive
        self.metrics = DnsMetrics(registry)
        limits = node.dns.rate_limit
        self.server = DnsServer(self.resolver, [str(u) for u in node.dns.upstreams], self.allowed,
                                RateLimiter(limits.rate, limits.burst), self.metrics)
        self.ignored = Ignored()
        self._gate = EndpointGate(node.name)  # only its concerns(): which status changes matter
        self._dirty = asyncio.Event()
        self.serving = asyncio.Event()

    def alive(self, node: str) -> bool:
        return node == self.name or self.ds.alive(node) is True

    def allowed(self, source: IPv4Address | IPv6Address) -> bool:
        """Pods (addresses of the pools) and the node itself (loopback): never the underlay."""
        return source.is_loopback or in_pools(source, self.pools)

    def local_addresses(self) -> list[IPv4Address | IPv6Address]:
        """The pod-facing addresses: dns.address, and dns.address6 when the node has IPv6 pools (a node with
        IPv4 pools only gets no IPv6 address, and needs no IPv6 on lo)."""
        ipv6 = any(p.version == 6 for p in self.pools)
        return [self.settings.address, self.settings.address6] if ipv6 else [self.settings.address]

    def rebuild(self) -> None:
        zone = build(self.ds.items("endpoints"), self.ds.items("claims"), self.name, self.alive)
        self.ignored.update(zone.ignored)
        self.resolver.set_zone(zone)
        self.metrics.zone_builds.inc()

    async def run(self, addresses: list[str] | None = None) -> None:
        """Serves on the pod-facing addresses (made local) and loopback, or on `addresses` (tests)."""
        feed = self.ds.changes()
        made: list[IPv4Address | IPv6Address] = []
        try:
            self.rebuild()
            try:
                if addresses is None:
                    addresses = await self._make_local(made)
                await self.server.start(addresses, self.settings.port)
            except OSError as e:  # the node's routing and policy go on without names
                log.error("dns not served: %s", e)
                return
            log.info("dns serving addresses=%s port=%d domain=%s upstreams=%d", ",".join(addresses),
                     self.settings.port, self.settings.domain, len(self.settings.upstreams))
            self.serving.set()
            watcher = asyncio.create_task(self._watch(feed))
            try:
                while True:
                    await self._dirty.wait()
                    await asyncio.sleep(COALESCE)
                    self._dirty.clear()
                    self.rebuild()
            finally:
                watcher.cancel()
        finally:
            await self.server.stop()
            await feed.aclose()
            for address in made:
                await remove_address(address)

    async def _make_local(self, made: list[IPv4Address | IPv6Address]) -> list[str]:
        """Makes the pod-facing addresses local, adding to `made` those that are ours to remove; the addresses
        to serve on. OSError naming an address that cannot be made local."""
        local = self.local_addresses()
        for address in local:
            try:
                if await ensure_address(address):
                    made.append(address)
            except NetlinkError as e:
                raise OSError(e.code, f"cannot make {address} local on lo: {os.strerror(e.code)}") from None
        return [*map(str, local), LOOPBACK]

    async def _watch(self, feed) -> None:
        async for change in feed:
            kind = change.key.split("/", 1)[0]
            if kind in ("endpoints", "claims") or self._gate.concerns(change.key, change.value):
                self._dirty.set()
