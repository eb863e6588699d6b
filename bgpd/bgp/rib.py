"""The routing information base: pure state, no I/O.

Feeds are BGP events (announce, withdraw, session up/down, End-of-RIB); the output is the set of
kernel routes that should exist. Every mutating call returns the prefixes whose desired kernel
route may have changed, so the dataplane driver reprograms only those. Prefixes are integer keys
(`bgpd.prefixes`) throughout.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Callable, Iterable

from bgpd.prefixes import key as prefix_key, version as prefix_version


class Reject(enum.Enum):
    NOT_IN_POOL = "not_in_pool"
    OWN_BLOCK = "own_block"
    DEFAULT_ROUTE = "default_route"
    MAX_PREFIXES = "max_prefixes"
    BAD_NEXT_HOP = "bad_next_hop"


class _FamilyFilter:
    """The import filter's pools, blocks and borrowed addresses of one address family, as integers: a network
    is (address, length, address bits - length), and `a` holds `b` iff a.length <= b.length and
    (a.address ^ b.address) >> a.shift == 0."""

    __slots__ = ("bits", "mask", "pools", "blocks", "borrowed")

    def __init__(self, version: int, pools: Iterable[IPv4Network | IPv6Network],
                 blocks: Iterable[IPv4Network | IPv6Network], borrowed: Iterable[IPv4Network | IPv6Network]):
        self.bits = bits = 32 if version == 4 else 128
        self.mask = (1 << bits) - 1  # a key's address without the family bit

        def ints(nets: Iterable[IPv4Network | IPv6Network]) -> tuple[tuple[int, int, int], ...]:
            return tuple((int(n.network_address), n.prefixlen, bits - n.prefixlen) for n in nets
                         if n.version == version)
        self.pools, self.blocks = ints(pools), ints(blocks)
        self.borrowed = frozenset(prefix_key(n) for n in borrowed if n.version == version)

    def check_prefix(self, prefix: int) -> Reject | None:
        length = prefix & 255
        if length == 0:
            return Reject.DEFAULT_ROUTE
        net = prefix >> 8 & self.mask
        for pnet, plen, shift in self.pools:  # a loop, not any(): no generator per prefix
            if plen <= length and (net ^ pnet) >> shift == 0:
                break
        else:
            return Reject.NOT_IN_POOL
        bits = self.bits
        own = bits - length
        for bnet, blen, bshift in self.blocks:  # two prefixes overlap iff one holds the other
            if (length <= blen and (bnet ^ net) >> own == 0) or (
                    blen <= length < bits and (net ^ bnet) >> bshift == 0):
                return Reject.OWN_BLOCK  # a host prefix inside one of our blocks: an address another node borrowed
        if prefix in self.borrowed:  # only the address itself: its block is its owner's as before
            return Reject.OWN_BLOCK
        return None


@dataclass(frozen=True)
class ImportFilter:
    """Which prefixes a peer may give us: inside a cluster pool, never one of our own blocks, never default.

    Checked once per received prefix, on its key, against the pools, blocks and borrowed addresses of the
    prefix's own family only. `own_keys`: the keys of `own_blocks`.
    """

    pools: tuple[IPv4Network | IPv6Network, ...]
    own_blocks: tuple[IPv4Network | IPv6Network, ...]
    own_addresses: frozenset[IPv4Address | IPv6Address] = frozenset()
    borrowed: tuple[IPv4Network | IPv6Network, ...] = ()  # /32s, /128s we took from other nodes' blocks: ours too
    own_keys: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_families", {v: _FamilyFilter(v, self.pools, self.own_blocks, self.borrowed)
                                               for v in (4, 6)})
        object.__setattr__(self, "own_keys", frozenset(map(prefix_key, self.own_blocks)))

    def prefix_check(self, version: int) -> Callable[[int], Reject | None]:
        """check_prefix for prefixes of one family (an UPDATE's are all of its next hop's)."""
        return self._families[version].check_prefix  # type: ignore[attr-defined]

    def check(self, prefix: int, next_hop: IPv4Address | IPv6Address | None) -> Reject | None:
        return self.check_prefix(prefix) or (self.check_next_hop(next_hop) if next_hop is not None else None)

    def check_prefix(self, prefix: int) -> Reject | None:
        return self.prefix_check(prefix_version(prefix))(prefix)

    def check_next_hop(self, next_hop: IPv4Address | IPv6Address) -> Reject | None:
        if (next_hop in self.own_addresses or next_hop.is_unspecified or next_hop.is_loopback
                or next_hop.is_multicast):
            return Reject.BAD_NEXT_HOP
        # IPv6: a link-local next hop needs a device we do not know; an IPv4-mapped one (GoBGP over an IPv4
        # session) is no IPv6 address at all
        if next_hop.version == 6 and (next_hop.is_link_local or next_hop.ipv4_mapped is not None):  # type: ignore
            return Reject.BAD_NEXT_HOP
        return None


@dataclass
class PeerRib:
    """What one peer gave us. `stale` holds prefixes kept across the peer's graceful restart."""

    max_prefixes: int
    routes: dict[int, IPv4Address | IPv6Address] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)
    received: int = 0
    rejected: dict[Reject, int] = field(default_factory=lambda: {r: 0 for r in Reject})
    eor: bool = False


@dataclass(frozen=True)
class Update:
    """Result of one RIB operation: changed prefixes, and why routes were refused, if any were."""

    changed: frozenset[int] = frozenset()
    rejected: frozenset[Reject] = frozenset()


NOTHING = Update()
KernelRoute = frozenset[IPv4Address | IPv6Address]  # next hops; empty means blackhole
BLACKHOLE: KernelRoute = frozenset()


class Rib:
    def __init__(self, flt: ImportFilter, max_prefixes: dict[str, int]):
        self.filter = flt
        self.peers: dict[str, PeerRib] = {p: PeerRib(max_prefixes=m) for p, m in max_prefixes.items()}
        # prefix -> {peer: next hop}: the reverse index that makes desired() per prefix O(peers for it)
        self._by_prefix: dict[int, dict[str, IPv4Address | IPv6Address]] = {}
        # peer -> (next hop, {next hop}): the one set object desired() hands out for all of a peer's routes through
        # that hop alone, so the kernel side compares and encodes it by a cached hash
        self._alone: dict[str, tuple[IPv4Address | IPv6Address, KernelRoute]] = {}

    # --- peers -------------------------------------------------------------------------------------
    def add_peer(self, peer: str, max_prefixes: int) -> None:
        self.peers.setdefault(peer, PeerRib(max_prefixes=max_prefixes)).max_prefixes = max_prefixes

    def remove_peer(self, peer: str) -> Update:
        upd = self.session_down(peer, graceful=False)
        del self.peers[peer]
        self._alone.pop(peer, None)
        return upd

    def session_up(self, peer: str) -> Update:
        """A (re)established session: everything still held from before is stale until refreshed."""
        rib = self.peers[peer]
        rib.stale = set(rib.routes)
        rib.eor = False
        return NOTHING

    def session_down(self, peer: str, graceful: bool) -> Update:
        """Session lost. With `graceful` (the peer restarts, RFC 4724) its routes stay as stale."""
        rib = self.peers[peer]
        rib.eor = False
        if graceful:
            rib.stale = set(rib.routes)
            return NOTHING
        return self._drop(peer, list(rib.routes))

    def end_of_rib(self, peer: str) -> Update:
        """The peer finished its initial table: stale routes it did not refresh are gone."""
        rib = self.peers[peer]
        rib.eor = True
        return self.purge_stale(peer)

    def expect_no_end_of_rib(self, peer: str) -> None:
        """The peer is gone (not restarting): it sends no End-of-RIB, so nothing should wait for one."""
        self.peers[peer].eor = True

    def waiting_for_end_of_rib(self) -> list[str]:
        return [peer for peer, rib in self.peers.items() if not rib.eor]

    def purge_stale(self, peer: str) -> Update:
        rib = self.peers[peer]
        upd = self._drop(peer, list(rib.stale))
        rib.stale.clear()
        return upd

    # --- routes ------------------------------------------------------------------------------------
    def announce(self, peer: str, prefixes: Iterable[int], next_hop: IPv4Address | IPv6Address) -> Update:
        """One UPDATE's prefixes, all with this next hop and of its family. Refused ones withdraw what the peer
        had for them. The hot path: one call per UPDATE, a few dict operations on int keys per prefix."""
        rib = self.peers[peer]
        prefixes = tuple(prefixes)
        rib.received += len(prefixes)
        routes, stale, by_prefix = rib.routes, rib.stale, self._by_prefix
        check = self.filter.prefix_check(next_hop.version)
        bad_next_hop = self.filter.check_next_hop(next_hop)  # one per UPDATE, not per prefix
        limited = len(routes) + len(prefixes) > rib.max_prefixes  # else no prefix of this UPDATE can hit the limit
        changed: list[int] = []
        refused: list[int] = []
        reasons: set[Reject] = set()
        for prefix in prefixes:
            reason = check(prefix) or bad_next_hop
            if reason is None and limited and prefix not in routes and len(routes) >= rib.max_prefixes:
                reason = Reject.MAX_PREFIXES
            if reason is not None:
                rib.rejected[reason] += 1
                reasons.add(reason)
                refused.append(prefix)
                continue
            if stale:
                stale.discard(prefix)
            old = routes.get(prefix)
            if old is not None and (old is next_hop or old == next_hop):
                continue
            routes[prefix] = next_hop
            holders = by_prefix.get(prefix)
            if holders is None:
                by_prefix[prefix] = {peer: next_hop}
            else:
                holders[peer] = next_hop
            changed.append(prefix)
        if refused:
            changed.extend(self._drop(peer, refused).changed)
        return Update(frozenset(changed), frozenset(reasons)) if changed or reasons else NOTHING

    def refilter(self, flt: ImportFilter) -> Update:
        """A new import filter (pools or blocks changed): drop what it no longer accepts."""
        self.filter = flt
        changed: set[int] = set()
        for peer, rib in self.peers.items():
            gone = [p for p, nh in rib.routes.items() if flt.check(p, nh) is not None]
            changed |= self._drop(peer, gone).changed
        return Update(frozenset(changed))

    def withdraw(self, peer: str, prefixes: Iterable[int]) -> Update:
        return self._drop(peer, list(prefixes))

    def _drop(self, peer: str, prefixes: list[int]) -> Update:
        rib = self.peers[peer]
        changed = []
        for prefix in prefixes:
            rib.stale.discard(prefix)
            if rib.routes.pop(prefix, None) is None:
                continue
            holders = self._by_prefix[prefix]
            del holders[peer]
            if not holders:
                del self._by_prefix[prefix]
            changed.append(prefix)
        return Update(frozenset(changed)) if changed else NOTHING

    # --- output ------------------------------------------------------------------------------------
    def desired(self, prefix: int) -> KernelRoute | None:
        """The kernel route this prefix should have: own blocks are blackholes, learned ones ECMP."""
        if prefix in self.filter.own_keys:
            return BLACKHOLE
        holders = self._by_prefix.get(prefix)
        if not holders:
            return None
        if len(holders) > 1:
            return frozenset(holders.values())
        (peer, hop), = holders.items()
        alone = self._alone.get(peer)
        if alone is None or alone[0] is not hop:
            alone = self._alone[peer] = (hop, frozenset((hop,)))
        return alone[1]

    def all_desired(self) -> dict[int, KernelRoute]:
        out: dict[int, KernelRoute] = dict.fromkeys(self.filter.own_keys, BLACKHOLE)
        for prefix, holders in self._by_prefix.items():
            out[prefix] = frozenset(holders.values())
        return out

    def sources(self, prefix: int) -> dict[str, IPv4Address | IPv6Address]:
        return dict(self._by_prefix.get(prefix, {}))

    def accepted(self, peer: str) -> int:
        return len(self.peers[peer].routes)
