"""Pod addresses: the first free address of the node's blocks, or one asked for by name.

`choose` decides (pure); `allocate` reads what it needs from the state files and, when the blocks
are full and there is a datastore, asks the running daemon for one more block (or a borrowed address).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import AbstractSet, Iterable, Sequence

from bgpd.ipam.state import Lent, NodeBlocks, load
from config.node import NodeConfig


class AddressError(Exception):
    """No address can be given: the message says why."""


def choose(blocks: Sequence[IPv4Network], used: AbstractSet[IPv4Address],
           requested: IPv4Address | None) -> IPv4Address | None:
    """`requested` if it is in our blocks and free; else the first free address (None: the blocks are full)."""
    if requested is not None:
        if not any(requested in b for b in blocks):
            raise AddressError(f"{requested} is not in this node's blocks ({', '.join(map(str, blocks))})")
        if requested in used:
            raise AddressError(f"{requested} is already used by another pod")
        return requested
    for block in blocks:
        for ip in block.hosts():
            if ip not in used:
                return ip
    return None


def node_blocks(node: NodeConfig) -> list[IPv4Network]:
    """The blocks pods take addresses from: the file's, the claimed ones, and borrowed addresses as /32s."""
    state = load(node.state_dir, NodeBlocks)
    return sorted(set(node.blocks) | set(state.blocks) | {IPv4Network(a) for a in state.borrowed})


def allocate(node: NodeConfig, in_use: Iterable[IPv4Address], requested: str | None) -> IPv4Address:
    """An address for a new pod; `in_use`: the addresses of the node's pods. Raises AddressError."""
    wanted = IPv4Address(requested) if requested else None
    used = set(in_use) | set(load(node.state_dir, Lent).addresses)
    while True:
        ip = choose(node_blocks(node), used, wanted)
        if ip is not None:
            return ip
        if node.datastore is None or not _more_addresses(node):
            raise AddressError("no free address in this node's blocks")


def _more_addresses(node: NodeConfig) -> bool:
    """Asks the running daemon for one more block from the pools, or failing that a borrowed address."""
    from bgpd.agent.control import DaemonNotRunning, query
    try:
        return query(node.run_dir / "tortie.sock", "claim_block", timeout=30) is not None
    except DaemonNotRunning:
        return False
