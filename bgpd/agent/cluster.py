"""The node's part in the cluster datastore: it registers itself, meshes with the other nodes, has
its blocks claimed (claiming and borrowing: bgpd/ipam/claiming.py), and takes in the IP pools and BGP
peers applied with `tortie apply` (ippools/, bgppeers/).

Pure helpers decide (who is in the mesh, which blocks are ours); `Cluster` does the I/O and hands every
new configuration (config/effective.py) to the daemon's `reconfigure`, the same path as a reload.
"""
from __future__ import annotations

import asyncio
import logging
import time
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import AbstractSet, Awaitable, Callable, Iterable, Mapping

from pydantic import ValidationError

from bgpd.dataplane.pods import PodError, PodStore
from bgpd.ipam.claiming import BlockClaims
from bgpd.ipam.claims import Network, by_version
from bgpd.ipam.holdings import is_host
from bgpd.ipam.ownership import (Ignored, Taken, beaten, endpoint_prefixes, owned_prefixes, registration,
                                  rival_claims, taken, unique_addresses)
from bgpd.overlay.vxlan import cluster_routes
from config.datastore import Datastore, DatastoreError, key, parse_key
from config.effective import ClusterView, EffectiveConfig, effective
from config.load import ConfigError, validation_errors
from config.node import IPPool, MeshMember, NodeConfig, Peer

log = logging.getLogger("tortie.cluster")


def mesh_members(nodes: Mapping[str, dict], peers: set[IPv4Address | IPv6Address]) -> list[MeshMember]:
    """Every registered node (nodes/<name>) with a valid address (IPv4 `address`, IPv6 `address6`, or both) that no
    configured peer or earlier node has."""
    members = []
    taken = set(peers)
    for k, record in sorted(nodes.items()):
        name = parse_key(k)[1][0]
        try:
            member = MeshMember(name=name, address=record.get("address"), address6=record.get("address6"))
        except ValueError:
            log.warning("ignoring node record key=%s: no valid address", k)
            continue
        wg = record.get("wireguard")
        if isinstance(wg, dict) and wg.get("public_key") is not None:
            try:
                member = MeshMember(**{**member.model_dump(), "public_key": wg["public_key"]})
            except ValueError:
                log.warning("node record key=%s: not a WireGuard public key, the node counts as without one", k)
        addresses = {a for a in (member.address, member.address6) if a is not None}
        if clash := sorted(map(str, addresses & taken)):
            log.warning("ignoring node record key=%s: address %s is already a peer's", k, clash[0])
            continue
        taken |= addresses
        members.append(member)
    return members


def datastore_pools(entries: Mapping[str, dict], file_pools: list[IPPool]) -> list[IPPool]:
    """The valid ippools/<name> entries, in key order, that overlap neither a file pool (the file wins) nor an
    earlier entry; the others are ignored with a warning."""
    pools: list[IPPool] = []
    for k, value in sorted(entries.items()):
        try:
            pool = IPPool.model_validate(value)
        except ValidationError as e:
            log.warning("ignoring IP pool: %s", "; ".join(validation_errors(k, e)))
            continue
        clash = next((p for p in [*file_pools, *pools]
                      if p.cidr.version == pool.cidr.version and p.cidr.overlaps(pool.cidr)), None)
        if clash is not None:
            where = "the node file's" if clash in file_pools else "an earlier IP pool's"
            log.warning("ignoring IP pool key=%s: %s overlaps %s pool %s", k, pool.cidr, where, clash.cidr)
            continue
        pools.append(pool)
    return pools


def datastore_peers(entries: Mapping[str, dict], node: NodeConfig) -> list[Peer]:
    """The valid bgppeers/<name> entries for this node (every node's, or scoped to it by `node`), in key order,
    whose address is neither a file peer's (the file wins) nor an earlier entry's; none with bgp.enabled false."""
    if not node.bgp.enabled:
        if entries:
            log.warning("ignoring %d BGP peer(s) from the datastore: bgp.enabled is false", len(entries))
        return []
    peers: list[Peer] = []
    taken = {p.address for p in node.peers}
    for k, value in sorted(entries.items()):
        if value.get("node", node.name) != node.name:
            continue  # scoped to another node
        try:
            peer = Peer.model_validate({"name": parse_key(k)[1][0], **{f: v for f, v in value.items() if f != "node"}})
        except ValidationError as e:
            log.warning("ignoring BGP peer: %s", "; ".join(validation_errors(k, e)))
            continue
        if peer.address in taken:
            log.warning("ignoring BGP peer key=%s: address %s is already a peer's", k, peer.address)
            continue
        taken.add(peer.address)
        peers.append(peer)
    return peers


class Cluster:
    """Keeps the daemon's configuration in line with the datastore."""

    def __init__(self, ds: Datastore, base: NodeConfig, apply: Callable[[EffectiveConfig], Awaitable[None]]):
        self.ds, self.base, self.apply = ds, base, apply  # base: the file's configuration, replaced by a reload
        self._down_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()  # the first configuration from the datastore is applied
        self.ignored_claims, self.ignored_records = Ignored(), Ignored()  # what other nodes may not say (reported)
        self.claims = BlockClaims(ds, self.counts)
        self.published: dict = {}  # more of this node's record: WireGuard's public key and port
        self.contested: dict[Network, str] = {}  # our rival claims kept while our pods use them -> their owner
        self._claiming = asyncio.Lock()  # one claim at a time: the loop's claim_missing, the pods' claim_more

    def counts(self, node: str) -> bool:
        """A node counts while alive, or dead for less than the grace period (a restart is not a removal)."""
        if node == self.base.name or self.ds.alive(node) is not False:
            self._down_since.pop(node, None)
            return True
        since = self._down_since.setdefault(node, time.monotonic())
        return time.monotonic() - since < self.base.node_grace

    def owned(self) -> list[Network]:
        """What this node owns: blocks, and /32s and /128s borrowed from other nodes' blocks."""
        return self.owned_by_node().get(self.base.name, [])

    def owned_by_node(self) -> dict[str, list[Network]]:
        by_block = self.claims.by_block()
        self.ignored_claims.update(rival_claims(by_block))
        return owned_prefixes(by_block)

    def owned_blocks(self) -> list[Network]:
        return [b for b in self.owned() if not is_host(b)]

    def ours(self) -> set[Network]:
        """This node's blocks: the file's and the claimed ones."""
        return set(self.base.blocks) | set(self.owned_blocks())

    def pooled(self) -> NodeConfig:
        """The file's configuration with the datastore's IP pools too: what blocks are claimed from."""
        return self.base.model_copy(update={"pools": [*self.base.pools,
                                                      *datastore_pools(self.ds.items("ippools"), self.base.pools)]})

    async def claim_more(self, version: int) -> Network | None:
        """Another block of the IP version for this node's pods or, failing that, a borrowed address (the daemon's
        claim_block)."""
        async with self._claiming:
            return await self.claims.claim_more(self.pooled(), self.ours(), version)

    async def claim_missing(self) -> None:
        """A block of each IP version of the pools that this node has none of yet (a dual-stack node: one of each)."""
        async with self._claiming:
            pooled = self.pooled()
            have = {b.version for b in self.ours()}
            for version in sorted({p.cidr.version for p in pooled.pools} - have):
                await self.claims.claim_block(pooled, version)

    def local_addresses(self) -> set[IPv4Address | IPv6Address] | None:
        """The addresses of this node's pods: in its pod files and its endpoints in the datastore (a pod is in
        its file before its endpoint is published); None if a pod file cannot be read."""
        try:
            texts = {ip for pod in PodStore(self.base).all() for ip in pod.ips}
        except PodError as e:
            log.error("cannot tell which addresses this node's pods use: %s", e)
            return None
        for ep in self.ds.items(f"endpoints/{self.base.name}").values():
            texts |= {ip for ip in ep.get("ips", ()) if isinstance(ip, str)}
        out = set()
        for text in texts:
            try:
                out.add(ip_address(text))
            except ValueError:
                pass
        return out

    async def give_up_rivals(self, leaving: AbstractSet[IPv4Address | IPv6Address] = frozenset()) -> bool:
        """Deletes our claims on blocks another node owned first, but those our pods use (see
        bgpd.ipam.ownership.beaten()); True if one was given up or found contested for the first time, so that this
        node has to claim again. `leaving`: addresses of a pod that is to get others (move_off()), not counted."""
        by_block = self.claims.by_block()
        if not beaten(self.base.name, by_block, ()).release:  # no rival claim of ours: no need to read the pods
            self.contested = {}
            return False
        in_use = self.local_addresses()
        if in_use is None:
            return False  # releasing a block our pods may use: never
        in_use -= leaving
        verdict = beaten(self.base.name, by_block, in_use)
        for block, first in sorted(verdict.release.items(), key=lambda i: by_version(i[0])):
            log.warning("giving up block=%s: %s owned it first (our claims crossed in the datastore)", block, first)
            try:
                await self.claims.release(self.base.name, block)
            except DatastoreError as e:
                log.error("cannot give up block=%s now: %s", block, e)
        new = verdict.keep.keys() - self.contested.keys()
        for block in sorted(new, key=by_version):
            log.error("block=%s is owned by %s, who claimed it first, but pods of this node have addresses in it: "
                      "our claim stays until they are gone (readers ignore it and those pods' endpoints)",
                      block, verdict.keep[block])
        self.contested = verdict.keep
        return bool(verdict.release or new)

    def taken(self, addresses: Iterable[IPv4Address | IPv6Address]) -> list[Taken]:
        """The addresses of a new pod that readers would give to another node (bgpd.ipam.ownership.taken())."""
        return taken(self.base.name, endpoint_prefixes(self.ds.items("claims"), self.counts),
                     self.ds.items("endpoints"), addresses)

    async def move_off(self, addresses: AbstractSet[IPv4Address | IPv6Address]) -> None:
        """For a new pod whose addresses taken() found another node's (claims crossed before this node's view
        caught up): gives up our rival claims unless other pods use them, claims a block of our own again and
        applies the view, so that blocks.json offers the pod other addresses (bgpd.dataplane.pods.add_pod())."""
        await self.give_up_rivals(addresses)
        await self.claim_missing()
        await self._apply_desired()

    def view(self, base: NodeConfig | None = None) -> ClusterView:
        """The datastore's view for `base` (default: the running file's; a reload passes the new file's, so that
        applied pools and peers clash with what the file will say)."""
        base = base or self.base
        by_node = self.owned_by_node()
        owned = by_node.get(base.name, [])
        records, ignored = unique_addresses({k: v for k, v in self.ds.items("nodes").items()
                                             if self.counts(parse_key(k)[1][0])})
        self.ignored_records.update(ignored)
        peers = datastore_peers(self.ds.items("bgppeers"), base)
        members = mesh_members(records, {p.address for p in [*base.peers, *peers]})
        routes = {}
        for version, field in ((4, "address"), (6, "address6")):  # each family's prefixes via that family's address
            addresses = {m.name: getattr(m, field) for m in members if getattr(m, field) is not None}
            routes |= cluster_routes({n: [p for p in ps if p.version == version] for n, ps in by_node.items()},
                                     addresses, base.name)
        return ClusterView(members=tuple(members), routes=tuple(sorted(routes.items(), key=lambda r: by_version(r[0]))),
                           blocks=tuple(b for b in owned if not is_host(b)),
                           borrowed=tuple(b.network_address for b in owned if is_host(b)),
                           pools=tuple(datastore_pools(self.ds.items("ippools"), base.pools)),
                           peers=tuple(peers))

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
        await self.register()
        await self.give_up_rivals()
        await self.claim_missing()
        await self._apply_desired()
        self.claims.save_lent(self.base, self.ours())
        self.ready.set()
        watcher = asyncio.create_task(self._watch(feed))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(0.1)  # gather a burst of changes
                await self._apply_desired()
                if await self.give_up_rivals():
                    await self.claim_missing()
                    await self._apply_desired()
                self.claims.save_lent(self.base, self.ours())
                if self._down_since:  # look again once the earliest grace period is over
                    left = min(self._down_since.values()) + self.base.node_grace - time.monotonic()
                    asyncio.get_running_loop().call_later(max(left, 0) + 0.1, self._wake.set)
        finally:
            watcher.cancel()
            await feed.aclose()

    async def register(self) -> None:
        """Writes nodes/<name>: addresses (IPv4, IPv6), AS, router id and `published`."""
        record = key("nodes", self.base.name)
        base, address6 = self.base, self.base.listen_address6
        await self.ds.put(record, {**registration(self.ds.get(record), base.listen_address and str(base.listen_address),
                                                  base.asn, str(base.router_id), time.time(),
                                                  address6 and str(address6)), **self.published})

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
            if change.key.split("/", 1)[0] in ("nodes", "status", "claims", "ippools", "bgppeers") or (
                    self.contested and change.key.startswith(f"endpoints/{self.base.name}/")):
                self._wake.set()  # (our endpoints: a pod gone may free a contested block)
