"""The server's pod-facing addresses: made local on the node, on the loopback interface.

IPv4 pods send to 169.254.1.1 (their gateway: a permanent neighbour entry with the host side's MAC, and a /32
link route, bgpd/dataplane/pods.py), IPv6 pods to a fixed ULA (dns.address6) through their ::/0 route via
fe80::1; with the address local the host delivers their DNS queries to the server and forwards everything
else as before. One address per family serves every pod; nothing changes in the pods. On `lo` because this
kernel has no dummy interfaces (shared/notes/kernel-features.md).

Each address carries a mark, so that the daemon removes only an address it added (after a crash too), never
one somebody else configured: the label LABEL on IPv4; IPv6 addresses have no label, so the address protocol
PROTO (IFA_PROTO, Linux 5.18+). The IPv6 address is also deprecated (preferred lifetime 0): still local and
bindable, but never chosen as the source of the node's own connections, which it would otherwise be towards
pod addresses (a longer prefix in common with fd00::/8 pools than the underlay's), and the answers to those
would go to the other node's own copy of the address.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6

from pyroute2 import AsyncIPRoute

LABEL = "lo:tortie-dns"
PROTO = 201  # IFA_PROTO of the IPv6 address (the kernel's own are 0-3)
FAMILY = {4: AF_INET, 6: AF_INET6}
IFA_F_NODAD = 0x02  # bindable at once: without it the address is tentative until the kernel's DAD work ran


def _ours(a, address: IPv4Address | IPv6Address) -> bool:
    return a.get("label") == LABEL if address.version == 4 else a.get("proto") == PROTO


async def _find(ipr: AsyncIPRoute, index: int, address: IPv4Address | IPv6Address) -> list:
    return [a async for a in await ipr.addr("dump", family=FAMILY[address.version], index=index)
            if a.get("address") == str(address)]


async def ensure_address(address: IPv4Address | IPv6Address) -> bool:
    """Makes `address` local on lo; False if it is local already and not ours (leave it then)."""
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname="lo")
        found = await _find(ipr, index, address)
        if found:
            return all(_ours(a, address) for a in found)
        mark = {"label": LABEL} if address.version == 4 else {"proto": PROTO, "preferred": 0, "flags": IFA_F_NODAD}
        await ipr.addr("add", index=index, address=str(address), prefixlen=address.max_prefixlen, **mark)
        return True


async def remove_address(address: IPv4Address | IPv6Address) -> None:
    """Removes `address` from lo if it is ours (pods keep their gateway: the host side answers for it)."""
    async with AsyncIPRoute() as ipr:
        (index,) = await ipr.link_lookup(ifname="lo")
        for a in await _find(ipr, index, address):
            if _ours(a, address):
                await ipr.addr("del", index=index, address=str(address), prefixlen=address.max_prefixlen)
