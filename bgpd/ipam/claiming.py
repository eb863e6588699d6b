"""This node's claims in the datastore: claiming a free block, borrowing an address when none is left,
and the addresses of its blocks lent to others (the I/O around bgpd/ipam/claims.py and holdings.py).

On a datastore with compare-and-swap (etcd: `Datastore.atomic`) a claim is one transaction, owned at once,
made only if no claim that counts is on the prefix and none came since the cache was read: no settle time.
Elsewhere (files, MQTT) the claim rule of claims.py decides after the settle time.

Blocks and borrowed addresses are claimed per IP version: a dual-stack node holds blocks of both, from the pools
of each (the same keys, claims/<cidr>/<node>, for both)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AbstractSet, Callable

from bgpd.ipam.claims import Claim, Network, claims_by_block, next_free, wins
from bgpd.ipam.holdings import borrowable, lent
from bgpd.ipam.state import Lent, save
from config.datastore import Datastore, DatastoreError, cidr_segment, key
from config.node import NodeConfig

log = logging.getLogger("tortie.ipam")

CAS_ATTEMPTS = 20  # compare-and-swap tries on one prefix; each failure means its claims changed meanwhile


class BlockClaims:
    """Claims of one node; `counts(node)` says whether another node's claims still count (alive or in grace).

    `ours` arguments: the node's blocks (the file's and the claimed ones); `version`: 4 or 6."""

    def __init__(self, ds: Datastore, counts: Callable[[str], bool]):
        self.ds, self.counts = ds, counts

    def by_block(self) -> dict[Network, dict[str, Claim]]:
        return claims_by_block(self.ds.items("claims"), self.counts)

    def save_lent(self, node: NodeConfig, ours: AbstractSet[Network]) -> None:
        """state_dir/lent.json: the addresses of our blocks that the pods of this node must not get."""
        save(node.state_dir, Lent(addresses=lent(node.name, ours, self.by_block())))

    async def claim_more(self, node: NodeConfig, ours: AbstractSet[Network], version: int) -> Network | None:
        """Another block of the version for the node's pods or, when its pools have no free block, one borrowed
        address."""
        return await self.claim_block(node, version) or await self.borrow_address(node, ours, version)

    async def claim_block(self, node: NodeConfig, version: int) -> Network | None:
        """Claims a free block of the version's pools (see bgpd/ipam/claims.py for why this converges to one
        owner)."""
        given_up: set[Network] = set()
        pools = [p for p in node.pools if p.cidr.version == version]
        while True:
            taken = [b for b, c in self.by_block().items() if c]
            block = next_free(pools, taken, node.name, given_up)
            if block is None:
                log.warning("no free IPv%d block left in the pools", version)
                return None
            try:
                if await self._claim(node, block):
                    log.info("claimed block=%s", block)
                    return block
            except DatastoreError as e:
                log.error("cannot claim block=%s now: %s", block, e)
                return None
            given_up.add(block)

    async def borrow_address(self, node: NodeConfig, ours: AbstractSet[Network], version: int) -> Network | None:
        """One address of the version of another node's block, for when the pools have no free block left.

        The same claim rule as for blocks, on a /32 or /128; an address that shows up in an endpoint meanwhile
        (its owner handed it out) is given up.
        """
        for single in borrowable(ours, self.by_block(), self._endpoint_ips(), version):
            try:
                if await self._claim(node, single, lambda: str(single.network_address) not in self._endpoint_ips()):
                    log.info("borrowed address=%s", single.network_address)
                    return single
            except DatastoreError as e:
                log.error("cannot borrow address=%s now: %s", single.network_address, e)
                return None
        log.error("no free IPv%d address left anywhere in the pools", version)
        return None

    async def release(self, me: str, prefix: Network) -> None:
        """Deletes our claim on the prefix (one that another node owned first: Cluster.give_up_rivals())."""
        await self.ds.delete(key("claims", cidr_segment(prefix), me))

    def _endpoint_ips(self) -> set[str]:
        return {ip for ep in self.ds.items("endpoints").values() for ip in ep.get("ips", [])}

    async def _claim(self, node: NodeConfig, prefix: Network,
                     still_free: Callable[[], bool] = lambda: True) -> bool:
        if self.ds.atomic:
            return await self._claim_atomic(node, prefix, still_free)
        claim_key = key("claims", cidr_segment(prefix), node.name)
        await self.ds.put(claim_key, {"owned": False, "at": time.time()})
        await asyncio.sleep(node.claim_settle)
        claims = self.by_block().get(prefix, {})
        if wins(node.name, claims) and still_free():
            await self.ds.put(claim_key, {"owned": True, "at": time.time()})
            return True
        await self.ds.delete(claim_key)
        log.info("lost the race for %s to %s", prefix, sorted(set(claims) - {node.name}))
        return False

    async def _claim_atomic(self, node: NodeConfig, prefix: Network, still_free: Callable[[], bool]) -> bool:
        """The prefix owned in one compare-and-swap if no other claim that counts is on it (see the module)."""
        segment = cidr_segment(prefix)
        claim_key = key("claims", segment, node.name)
        for _ in range(CAS_ATTEMPTS):
            others = set(self.by_block().get(prefix, {})) - {node.name}
            if others or not still_free():
                log.info("lost the race for %s to %s", prefix, sorted(others) or "an endpoint")
                return False
            if await self.ds.put_if_unchanged(claim_key, {"owned": True, "at": time.time()}, f"claims/{segment}"):
                return True
        log.warning("claims on %s kept changing over %d attempts; giving it up", prefix, CAS_ATTEMPTS)
        return False
