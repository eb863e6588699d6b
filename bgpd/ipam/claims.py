"""Block ownership without compare-and-swap: the claim rule, pure.

A node that wants a block first checks that nobody claims it, then publishes a pending claim, waits a
settle time longer than twice the datastore's propagation delay, and decides with `wins()` on the
claims it sees then. Every claimant that raced for the block has seen every other claimant's claim
by then (each one checked before claiming, so a claim made after another became visible is never
made), and all decide by the same rule, so exactly one of them wins; the winner marks its claim
owned, the losers delete theirs. An owned claim beats any pending one, so a latecomer never takes a
block in use. tests/node/test_ipam.py checks this against a simulation of racing nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Iterable, Iterator, Mapping

from config.node import IPPool


@dataclass(frozen=True)
class Claim:
    node: str
    owned: bool


def blocks_in(pool: IPPool) -> Iterator[IPv4Network]:
    return pool.cidr.subnets(new_prefix=pool.block_size)


def owner(claims: Mapping[str, Claim]) -> str | None:
    """The node that owns a block, if any. Two owners can only follow a partition: the lower name keeps it."""
    owned = sorted(n for n, c in claims.items() if c.owned)
    return owned[0] if owned else None


def wins(me: str, claims: Mapping[str, Claim]) -> bool:
    """After the settle time: is the block mine? (claims: node -> its claim on this block, mine included)"""
    if me not in claims:
        return False
    current = owner(claims)
    return current == me if current is not None else min(claims) == me


def next_free(pools: Iterable[IPPool], claimed: Iterable[IPv4Network],
              skip: Iterable[IPv4Network] = ()) -> IPv4Network | None:
    """The first block of the pools that nobody claims and that we have not given up on."""
    taken = set(claimed) | set(skip)
    for pool in pools:
        for block in blocks_in(pool):
            if block not in taken:
                return block
    return None
