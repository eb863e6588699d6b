"""The underlay as the kernel shows it: whether the node's address is there yet, and the MTU that tunnels
(VXLAN, WireGuard) subtract their headers from.

Hand-packed rtnetlink (dataplane/netlink_links.py), blocking but answered at once: the daemon's base path
loads no pyroute2 (22 MiB).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from bgpd.dataplane.netlink_links import Rtnl, addresses, decode_address, decode_link, get_link_at


def _holder(address: IPv4Address | IPv6Address) -> int | None:
    """The index of the interface holding `address` in this namespace (None: none does)."""
    with Rtnl() as rtnl:
        dump = rtnl.run([("dump the addresses", addresses(address.version))])["dump the addresses"]
    return next((index for index, local, _ in map(decode_address, dump) if local == address), None)


def has_address(address: IPv4Address | IPv6Address) -> bool:
    return _holder(address) is not None


def uplink_mtu(listen_address: IPv4Address | IPv6Address, setting: str) -> int:
    """The MTU of the interface holding `listen_address`; OSError naming `setting` (the configuration field
    that would say it instead) if no interface has that address."""
    index = _holder(listen_address)
    if index is None:
        raise OSError(f"no interface has the listen address {listen_address}: cannot tell the underlay MTU "
                      f"(set {setting})")
    with Rtnl() as rtnl:
        return decode_link(rtnl.run([("read the uplink", get_link_at(index))])["read the uplink"][0]).mtu
