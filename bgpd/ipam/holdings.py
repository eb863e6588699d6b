"""Borrowing, read from the claims (pure): the addresses of a node's blocks lent to others, and the
addresses it could borrow when the pools have no free block (what a node owns: bgpd/ipam/ownership.py)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import AbstractSet, Iterable, Iterator, Mapping

from bgpd.ipam.claims import Claim, Network, by_version, owner

ByBlock = Mapping[Network, Mapping[str, Claim]]


def is_host(prefix: Network) -> bool:
    """A borrowed address (/32, /128) rather than a block."""
    return prefix.prefixlen == prefix.max_prefixlen


def lent(me: str, ours: Iterable[Network], by_block: ByBlock) -> list[IPv4Address | IPv6Address]:
    """Addresses of our blocks that other nodes borrowed: never to be handed out here (IPv4 first)."""
    ours = list(ours)
    return [b.network_address for b, claims in sorted(by_block.items(), key=lambda i: by_version(i[0]))
            if is_host(b) and owner(claims) not in (None, me)
            and any(b.version == o.version and b.subnet_of(o) for o in ours)]


def borrowable(mine: AbstractSet[Network], by_block: ByBlock, used: AbstractSet[str],
               version: int) -> Iterator[Network]:
    """Addresses of one IP version (as /32s or /128s) of other nodes' owned blocks that no endpoint uses and
    nobody claims, in order."""
    claimed = {b for b, c in by_block.items() if is_host(b) and c}
    for block, claims in sorted(((b, c) for b, c in by_block.items() if b.version == version), key=lambda i: i[0]):
        if is_host(block) or block in mine or owner(claims) is None:
            continue
        for ip in block.hosts():
            single = ip_network(ip)
            if str(ip) not in used and single not in claimed:
                yield single
