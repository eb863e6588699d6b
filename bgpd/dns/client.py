"""What a pod is told about DNS: the CNI result's `dns` section and, for netns Tortie made, its resolv.conf.

Standard library only: tortie-cni imports it for every pod.
"""
from __future__ import annotations

from config.node import NodeConfig


def pod_dns(node: NodeConfig, namespace: str) -> dict:
    """The CNI `dns` section: the node's server and the search domains of the pod's namespace; empty when the
    node serves no DNS (no datastore, or dns.enabled false)."""
    if node.datastore is None or not node.dns.enabled:
        return {}
    domain = node.dns.domain
    return {"nameservers": [str(node.dns.address)], "search": [f"{namespace}.svc.{domain}", f"svc.{domain}"]}


def resolv_conf(dns: dict) -> str:
    lines = [f"nameserver {a}" for a in dns["nameservers"]] + [f"search {' '.join(dns['search'])}"]
    return "".join(line + "\n" for line in lines)
