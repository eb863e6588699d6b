"""Pod addresses: one of each IP version the node's pools have (dual-stack: an IPv4 and an IPv6 address), the
first free one of the node's blocks of that version, or one asked for.

`choose` decides (pure); `allocate` reads what it needs from the state files and, when the blocks of a version
are full and there is a datastore, asks the running daemon for one more block of it (or a borrowed address).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import AbstractSet, Iterable, Sequence

from bgpd.ipam.state import Lent, NodeBlocks, load
from config.node import NodeConfig

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class AddressError(Exception):
    """No address can be given: the message says why."""


def choose(blocks: Sequence[Network], used: AbstractSet[Address], requested: Address | None) -> Address | None:
    """`requested` if it is in our blocks and free; else the first free address (None: the blocks are full).

    `blocks`: of one IP version, the requested address's."""
    if requested is not None:
        if not any(requested in b for b in blocks):
            raise AddressError(f"{requested} is not in this node's blocks ({', '.join(map(str, blocks)) or 'none'})")
        if requested in used:
            raise AddressError(f"{requested} is already used by another pod")
        return requested
    for block in blocks:
        for ip in block.hosts():
            if ip not in used:
                return ip
    return None


def versions(node: NodeConfig, blocks: Iterable[Network]) -> list[int]:
    """The IP versions a pod gets an address of: its pools' (the file's, and those of the blocks the daemon
    claimed from pools applied in the datastore)."""
    return sorted({p.cidr.version for p in node.pools} | {b.version for b in blocks})


def requested_addresses(wanted: Sequence[str], allowed: Sequence[int]) -> dict[int, Address]:
    """`--ip` values by IP version: at most one of each version the node hands out. Raises AddressError."""
    out: dict[int, Address] = {}
    for text in wanted:
        try:
            ip = ip_address(text)
        except ValueError:
            raise AddressError(f"{text!r} is not an IP address") from None
        if ip.version not in allowed:
            raise AddressError(f"{ip}: this node's pools have no IPv{ip.version} addresses")
        if ip.version in out:
            raise AddressError(f"{out[ip.version]} and {ip}: one IPv{ip.version} address per pod")
        out[ip.version] = ip
    return out


def node_blocks(node: NodeConfig) -> list[Network]:
    """The blocks pods take addresses from: the file's, the claimed ones, and borrowed addresses as host prefixes;
    IPv4 first."""
    state = load(node.state_dir, NodeBlocks)
    every = set(node.blocks) | set(state.blocks) | {ip_network(a) for a in state.borrowed}
    return sorted(every, key=lambda b: (b.version, b))


def allocate(node: NodeConfig, in_use: Iterable[Address], requested: Sequence[str] = ()) -> list[Address]:
    """The addresses of a new pod, one per IP version, IPv4 first; `in_use`: the addresses of the node's pods.
    Raises AddressError (and gives nothing) if one version has none."""
    used = set(in_use) | set(load(node.state_dir, Lent).addresses)
    wanted = requested_addresses(requested, versions(node, node_blocks(node)))
    out = []
    for version in versions(node, node_blocks(node)):
        while True:
            blocks = [b for b in node_blocks(node) if b.version == version]
            ip = choose(blocks, used, wanted.get(version))
            if ip is not None:
                out.append(ip)
                break
            if node.datastore is None or not _more_addresses(node, version, blocks):
                raise AddressError(f"no free IPv{version} address in this node's blocks")
    return out


CLAIM_WAIT = 120  # seconds for the daemon's answer: a daemon that just started first loads its datastore


def _more_addresses(node: NodeConfig, version: int, seen: Sequence[Network]) -> bool:
    """Asks the running daemon for one more block of the version from the pools, or failing that a borrowed
    address (`seen`: the blocks of the version we have, all full). The daemon claims only once its datastore is
    loaded: on a host that just started, while its broker is still out of reach (its address comes late, the
    connection backs off: 1 s doubling to 16 s between 30 s attempts), that can take tens of seconds."""
    from bgpd.agent.control import DaemonNotRunning, query
    try:
        return query(node.run_dir / "tortie.sock", "claim_block", timeout=CLAIM_WAIT, version=version,
                     seen=[str(b) for b in seen]) is not None
    except DaemonNotRunning as e:
        raise AddressError(f"no free IPv{version} address in this node's blocks, and none from the daemon: {e}") \
            from None
