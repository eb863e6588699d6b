"""The server's pod-facing address: made local on the node on a dummy interface of its own.

Pods send to 169.254.1.1 (their gateway: a permanent neighbour entry with the host side's MAC, and a /32 link
route, bgpd/dataplane/pods.py), so with the address local the host delivers their DNS queries to the server
and forwards everything else as before. One address on one interface serves every pod; nothing changes in
the pods. Link-local addresses are never routed, so the underlay cannot reach it.
"""
from __future__ import annotations

from ipaddress import IPv4Address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bgpd.dataplane.kernel_routes import has_address

INTERFACE = "tortie-dns"


async def ensure_address(address: IPv4Address) -> bool:
    """Makes `address` local (on INTERFACE, created if missing); False if it was local already (ours or not)."""
    if await has_address(address):
        return False
    async with AsyncIPRoute() as ipr:
        if not await ipr.link_lookup(ifname=INTERFACE):
            await ipr.link("add", ifname=INTERFACE, kind="dummy")
        (index,) = await ipr.link_lookup(ifname=INTERFACE)
        await ipr.addr("add", index=index, address=str(address), prefixlen=32)
        await ipr.link("set", index=index, state="up")
    return True


async def remove_interface() -> None:
    """Removes INTERFACE and its address (pods keep their gateway: the host side answers for it)."""
    async with AsyncIPRoute() as ipr:
        for index in await ipr.link_lookup(ifname=INTERFACE):
            try:
                await ipr.link("del", index=index)
            except NetlinkError:
                pass  # gone meanwhile
