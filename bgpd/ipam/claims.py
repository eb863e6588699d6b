"""Block ownership without compare-and-swap: the claim rule, pure.

A node that wants a block first checks that nobody claims it, then publishes a pending claim, waits a
settle time longer than twice the datastore's propagation delay, and decides with `wins()` on the
claims it sees then. Every claimant that raced for the block has seen every other claimant's claim
by then (each one checked before claiming, so a claim made after another became visible is never
made), and all decide by the same rule, so exactly one of them wins; the winner marks its claim
owned, the losers delete theirs. An owned claim beats any pending one, so a latecomer never takes a
block in use. tests/node/test_ipam.py checks this against a simulation of racing nodes.

Any node can write a claim of its own on any block (the broker's ACL checks only that the key carries
its name), so an owned claim does not take a block from its owner: the first owner keeps it. "First"
is the marker `at` the owner wrote when it marked its claim owned (unix time, never rewritten); a later
owned claim by another node is a rival, ignored by every reader and reported (`rivals()`). Two honest
owners follow a partition, or propagation slower than half the settle time (a loaded broker: each claimant
missed the other's pending claim): the earlier marker wins, then the lower name, and the rival node gives
its claim up and claims again (bgpd.ipam.ownership.beaten(), Cluster.give_up_rivals()). A node can backdate
its own marker; docs/datastore.md says what that leaves open. tests/node/test_ownership.py checks the rule.

Each node searches a pool from its own block (`start_index()`), wrapping around, so that nodes starting
together mostly try different blocks rather than all racing for the first free one.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Callable, Iterable, Iterator, Mapping

from config.datastore.keys import parse_cidr_segment, parse_key
from config.node import IPPool

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Claim:
    node: str
    owned: bool
    at: float = math.inf  # the marker: when the claim was written (owned: when it became owned); inf if none

    @classmethod
    def of(cls, node: str, value: Mapping) -> Claim:
        """A claims/<cidr>/<node> value as a Claim."""
        return cls(node, value.get("owned") is True, marker(value.get("at")))


def marker(value: object) -> float:
    """A marker (unix time) as written by a node; one that is not a finite number ranks last (inf)."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if valid else math.inf


def claims_by_block(items: Mapping[str, dict], usable: Callable[[str], bool]) -> dict[Network, dict[str, Claim]]:
    """claims/<cidr>/<node> entries, by block (of either IP version), of the nodes `usable` says still count."""
    out: dict[Network, dict[str, Claim]] = {}
    for k, v in items.items():
        _, (cidr, node) = parse_key(k)
        block = parse_cidr_segment(cidr)
        if usable(node):
            out.setdefault(block, {})[node] = Claim.of(node, v)
    return out


def by_version(network: Network) -> tuple[int, Network]:
    """Sort key of networks of both IP versions (which do not compare): IPv4 first."""
    return network.version, network


def start_index(node: str, count: int) -> int:
    """Where `node` starts its search among `count` blocks: a stable hash of its name (the same on every run and
    host, unlike hash()), so that nodes starting together try different blocks instead of all racing for the first."""
    return int.from_bytes(hashlib.blake2b(node.encode(), digest_size=8).digest(), "big") % count


def blocks_from(pool: IPPool, node: str) -> Iterator[Network]:
    """The pool's blocks in the order `node` tries them: from its start_index(), wrapping around. Computed by index,
    so an IPv6 pool of 2**70 blocks costs only the blocks looked at."""
    count = 1 << (pool.block_size - pool.cidr.prefixlen)
    size = 1 << (pool.cidr.max_prefixlen - pool.block_size)
    base, start = int(pool.cidr.network_address), start_index(node, count)
    for i in range(count):
        yield type(pool.cidr)((base + (start + i) % count * size, pool.block_size))


def _first(claim: Claim) -> tuple[float, str]:
    return claim.at, claim.node


def owner(claims: Mapping[str, Claim]) -> str | None:
    """The node that owns a block, if any: of the owned claims, the first (earliest marker, then lowest name)."""
    owned = [c for c in claims.values() if c.owned]
    return min(owned, key=_first).node if owned else None


def rivals(claims: Mapping[str, Claim]) -> list[str]:
    """The nodes whose owned claim on a block is ignored because another node owned it first."""
    first = owner(claims)
    return sorted(n for n, c in claims.items() if c.owned and n != first)


def wins(me: str, claims: Mapping[str, Claim]) -> bool:
    """After the settle time: is the block mine? (claims: node -> its claim on this block, mine included)"""
    if me not in claims:
        return False
    current = owner(claims)
    return current == me if current is not None else min(claims) == me


def next_free(pools: Iterable[IPPool], claimed: Iterable[Network], node: str,
              skip: Iterable[Network] = ()) -> Network | None:
    """The first block, in `node`'s order (blocks_from()), of the first of the pools that has one that nobody claims
    and that we have not given up on."""
    taken = set(claimed) | set(skip)
    for pool in pools:
        for block in blocks_from(pool, node):
            if block not in taken:
                return block
    return None
