"""The node's part in the cluster datastore: it registers itself, meshes with the other nodes, claims blocks.

Pure helpers decide (who is in the mesh, which blocks are ours, which block is free); `Cluster` does
the I/O and hands every new configuration to the daemon's `reconfigure`, the same path as a reload.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Awaitable, Callable, Mapping

from bgpd.ipam.claims import claims_by_block, next_free, owner, wins
from bgpd.ipam.ownership import Ignored, registration, rival_claims, unique_addresses
from config.datastore import Datastore, DatastoreError, cidr_segment, key, parse_key
from config.effective import ClusterView, EffectiveConfig, effective
from config.load import ConfigError
from config.node import MeshMember, NodeConfig

log = logging.getLogger("tortie.cluster")


def mesh_members(nodes: Mapping[str, dict], peers: set[IPv4Address]) -> list[MeshMember]:
    """Every registered node (nodes/<name>) with a valid address that no configured peer or earlier node has."""
    members = []
    taken = set(peers)
    for k, record in sorted(nodes.items()):
        name = parse_key(k)[1][0]
        try:
            member = MeshMember(name=name, address=IPv4Address(record.get("address", "")))
        except ValueError:
            log.warning("ignoring node record key=%s: no valid address", k)
            continue
        if member.address in taken:
            log.warning("ignoring node record key=%s: address %s is already a peer's", k, member.address)
            continue
        taken.add(member.address)
        members.append(member)
    return members


class Cluster:
    """Keeps the daemon's configuration in line with the datastore."""

    def __init__(self, ds: Datastore, base: NodeConfig, apply: Callable[[EffectiveConfig], Awaitable[None]]):
        self.ds, self.base, self.apply = ds, base, apply  # base: the file's configuration, replaced by a reload
        self._down_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()  # the first configuration from the datastore is applied
        self.ignored_claims, self.ignored_records = Ignored(), Ignored()  # what other nodes may not say (reported)

    def counts(self, node: str) -> bool:
        """A node counts while alive, or dead for less than the grace period (a restart is not a removal)."""
        if node == self.base.name or self.ds.alive(node) is not False:
            self._down_since.pop(node, None)
            return True
        since = self._down_since.setdefault(node, time.monotonic())
        return time.monotonic() - since < self.base.node_grace

    def owned(self) -> list[IPv4Network]:
        """What this node owns: blocks, and /32s borrowed from other nodes' blocks."""
        by_block = claims_by_block(self.ds.items("claims"), self.counts)
        self.ignored_claims.update(rival_claims(by_block))
        return sorted(b for b, claims in by_block.items() if owner(claims) == self.base.name)

    def owned_blocks(self) -> list[IPv4Network]:
        return [b for b in self.owned() if b.prefixlen < 32]

    def lent(self) -> list[str]:
        """Addresses of our blocks that other nodes borrowed: never to be handed out here."""
        ours = set(self.base.blocks) | set(self.owned_blocks())
        by_block = claims_by_block(self.ds.items("claims"), self.counts)
        return sorted(str(b.network_address) for b, claims in by_block.items()
                      if b.prefixlen == 32 and owner(claims) not in (None, self.base.name)
                      and any(b.subnet_of(o) for o in ours))

    def view(self) -> ClusterView:
        owned = self.owned()
        records, ignored = unique_addresses({k: v for k, v in self.ds.items("nodes").items()
                                             if self.counts(parse_key(k)[1][0])})
        self.ignored_records.update(ignored)
        members = mesh_members(records, {p.address for p in self.base.peers})
        return ClusterView(members=tuple(members),
                           blocks=tuple(b for b in owned if b.prefixlen < 32),
                           borrowed=tuple(b.network_address for b in owned if b.prefixlen == 32))

    def desired(self) -> EffectiveConfig:
        """The file's configuration with the datastore's view; ConfigError if they do not fit together."""
        return effective(self.base, self.view())

    async def _apply_desired(self) -> None:
        try:
            new = self.desired()
        except ConfigError as e:
            log.error("cluster view refused, the running configuration stays: %s", "; ".join(e.errors))
            return
        await self.apply(new)

    async def run(self) -> None:
        await self._start()
        feed = self.ds.changes()
        record = key("nodes", self.base.name)
        await self.ds.put(record, registration(self.ds.get(record), str(self.base.listen_address), self.base.asn,
                                               str(self.base.router_id), time.time()))
        if not self.base.blocks and not self.owned_blocks():
            await self.claim_block()
        await self._apply_desired()
        self._save_lent()
        self.ready.set()
        watcher = asyncio.create_task(self._watch(feed))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(0.1)  # gather a burst of changes
                await self._apply_desired()
                self._save_lent()
                if self._down_since:  # look again once the earliest grace period is over
                    left = min(self._down_since.values()) + self.base.node_grace - time.monotonic()
                    asyncio.get_running_loop().call_later(max(left, 0) + 0.1, self._wake.set)
        finally:
            watcher.cancel()
            await feed.aclose()

    async def _start(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self.ds.start()
                return
            except DatastoreError as e:
                log.error("datastore unavailable, retrying in %.0fs: %s", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)

    async def _watch(self, feed) -> None:
        async for change in feed:
            if change.key.split("/", 1)[0] in ("nodes", "status", "claims"):
                self._wake.set()

    def _save_lent(self) -> None:
        path = self.base.state_dir / "lent.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.lent()))
        path.with_suffix(".tmp").rename(path)

    async def borrow_address(self) -> IPv4Network | None:
        """One address of another node's block, for when the pools have no free block left.

        The same claim rule as for blocks, on a /32; an address that shows up in an endpoint meanwhile
        (its owner handed it out) is given up.
        """
        mine = set(self.base.blocks) | set(self.owned_blocks())
        by_block = claims_by_block(self.ds.items("claims"), self.counts)
        used = {ip for ep in self.ds.items("endpoints").values() for ip in ep.get("ips", [])}
        taken = {b for b, c in by_block.items() if b.prefixlen == 32 and c}
        for block, claims in sorted(by_block.items()):
            if block.prefixlen == 32 or block in mine or owner(claims) is None:
                continue
            for ip in block.hosts():
                single = IPv4Network(ip)
                if str(ip) in used or single in taken:
                    continue
                if await self._claim(single, lambda: str(ip) not in {
                        a for ep in self.ds.items("endpoints").values() for a in ep.get("ips", [])}):
                    log.info("borrowed address=%s from block=%s", ip, block)
                    return single
                taken.add(single)
        log.error("no free address left anywhere in the pools")
        return None

    async def _claim(self, prefix: IPv4Network, still_free=lambda: True) -> bool:
        claim_key = key("claims", cidr_segment(prefix), self.base.name)
        await self.ds.put(claim_key, {"owned": False, "at": time.time()})
        await asyncio.sleep(self.base.claim_settle)
        claims = claims_by_block(self.ds.items("claims"), self.counts).get(prefix, {})
        if wins(self.base.name, claims) and still_free():
            await self.ds.put(claim_key, {"owned": True, "at": time.time()})
            return True
        await self.ds.delete(claim_key)
        log.info("lost the race for %s to %s", prefix, sorted(set(claims) - {self.base.name}))
        return False

    async def claim_block(self) -> IPv4Network | None:
        """Claims a free block of the pools (see bgpd/ipam/claims.py for why this converges to one owner)."""
        given_up: set[IPv4Network] = set()
        while True:
            taken = claims_by_block(self.ds.items("claims"), self.counts)
            block = next_free(self.base.pools, [b for b, c in taken.items() if c], given_up)
            if block is None:
                log.warning("no free block left in the pools")
                return None
            if await self._claim(block):
                log.info("claimed block=%s", block)
                return block
            given_up.add(block)
