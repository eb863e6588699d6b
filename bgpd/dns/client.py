"""What a pod is told about DNS: the CNI result's `dns` section and, for netns Tortie made, its resolv.conf.

Standard library only: tortie-cni imports it for every pod.
"""
from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from config.node import NodeConfig


def pod_dns(node: NodeConfig, namespace: str, addresses: Iterable[IPv4Address | IPv6Address]) -> dict:
    """The CNI `dns` section of a pod with these addresses: the node's server at an address of each of their
    IP versions (IPv4 first), and the search domains of the pod's namespace; empty when the node serves no
    DNS (no datastore, or dns.enabled false)."""
    if node.datastore is None or not node.dns.enabled:
        return {}
    domain = node.dns.domain
    versions = {a.version for a in addresses}
    servers = [str(a) for a in (node.dns.address, node.dns.address6) if a.version in versions]
    return {"nameservers": servers, "search": [f"{namespace}.svc.{domain}", f"svc.{domain}"]}


def resolv_conf(dns: dict) -> str:
    lines = [f"nameserver {a}" for a in dns["nameservers"]] + [f"search {' '.join(dns['search'])}"]
    return "".join(line + "\n" for line in lines)
