"""Borrowing, read from the claims (pure): the addresses of a node's blocks lent to others, and the
addresses it could borrow when the pools have no free block (what a node owns: bgpd/ipam/ownership.py)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import AbstractSet, Iterable, Iterator, Mapping

from bgpd.ipam.claims import Claim, owner

ByBlock = Mapping[IPv4Network, Mapping[str, Claim]]


def lent(me: str, ours: Iterable[IPv4Network], by_block: ByBlock) -> list[IPv4Address]:
    """Addresses of our blocks that other nodes borrowed: never to be handed out here."""
    ours = list(ours)
    return sorted(b.network_address for b, claims in by_block.items()
                  if b.prefixlen == 32 and owner(claims) not in (None, me) and any(b.subnet_of(o) for o in ours))


def borrowable(mine: AbstractSet[IPv4Network], by_block: ByBlock, used: AbstractSet[str]) -> Iterator[IPv4Network]:
    """Addresses (as /32s) of other nodes' owned blocks that no endpoint uses and nobody claims, in order."""
    claimed = {b for b, c in by_block.items() if b.prefixlen == 32 and c}
    for block, claims in sorted(by_block.items()):
        if block.prefixlen == 32 or block in mine or owner(claims) is None:
            continue
        for ip in block.hosts():
            single = IPv4Network(ip)
            if str(ip) not in used and single not in claimed:
                yield single
