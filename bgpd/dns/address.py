"""The server's pod-facing address: made local on the node, on the loopback interface.

Pods send to 169.254.1.1 (their gateway: a permanent neighbour entry with the host side's MAC, and a /32 link
route, bgpd/dataplane/pods.py), so with the address local the host delivers their DNS queries to the server
and forwards everything else as before. One address serves every pod; nothing changes in the pods.
Link-local addresses are never routed, so the underlay cannot reach it. On `lo` because this kernel has no
dummy interfaces (shared/notes/kernel-features.md); the address carries the label LABEL, so that the daemon
removes only an address it added (after a crash too), never one somebody else configured.
"""
from __future__ import annotations

from ipaddress import IPv4Address

from pyroute2 import AsyncIPRoute

LABEL = "lo:tortie-dns"


async def _find(ipr: AsyncIPRoute, index: int, address: IPv4Address) -> list:
    return [a async for a in await ipr.addr("dump", family=2, index=index) if a.get("address") == str(address)]


async def ensure_address(address: IPv4Address) -> bool:
    """Makes `address` local on lo; False if it is local already and not ours (leave it then)."""
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname="lo")
        found = await _find(ipr, index, address)
        if found:
            return all(a.get("label") == LABEL for a in found)
        await ipr.addr("add", index=index, address=str(address), prefixlen=32, label=LABEL)
        return True


async def remove_address(address: IPv4Address) -> None:
    """Removes `address` from lo if it is ours (pods keep their gateway: the host side answers for it)."""
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname="lo")
        for a in await _find(ipr, index, address):
            if a.get("label") == LABEL:
                await ipr.addr("del", index=index, address=str(address), prefixlen=32)
