"""The underlay as the kernel shows it: the MTU that tunnels (VXLAN, WireGuard) subtract their headers from."""
from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPRoute


def uplink_mtu(listen_address: IPv4Address | IPv6Address, ipr: IPRoute, setting: str) -> int:
    """The MTU of the interface holding `listen_address`; OSError naming `setting` (the configuration field
    that would say it instead) if no interface has that address."""
    family = socket.AF_INET if listen_address.version == 4 else socket.AF_INET6
    for a in ipr.get_addr(family=family, address=str(listen_address)):
        return ipr.get_links(a["index"])[0].get_attr("IFLA_MTU")
    raise OSError(f"no interface has listen_address {listen_address}: cannot tell the underlay MTU (set {setting})")
