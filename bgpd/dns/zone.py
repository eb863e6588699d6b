"""The cluster's names, built from the datastore's endpoints, pure.

Names (docs/dns.md):

* `<pod>.<namespace>.pod.<domain>`: the pod's addresses (A for IPv4, AAAA for IPv6: a dual-stack pod has both);
* `<service>.<namespace>.svc.<domain>`: the addresses of every pod of the namespace labelled
  `tortie.io/service=<service>`;
* `<d>.<c>.<b>.<a>.in-addr.arpa`, and the 32 nibbles of an IPv6 address under `ip6.arpa`: PTR to the pod's
  name, for pod addresses.

A zone is a snapshot of the entries; which nodes are alive is asked at answer time (`Zone.pods()`,
`Zone.service()`), so a node whose lease runs out drops out of answers at once, without a rebuild.
Endpoints their node may not publish (an address outside the prefixes it owns: bgpd.ipam.ownership) never
get a name: a node cannot make names for other nodes' addresses. An endpoint whose namespace, pod name or
service label is not a DNS label (the datastore also allows `_` and `.`) has no name either.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from bgpd.ipam.ownership import endpoint_prefixes, foreign_endpoints

SERVICE_LABEL = "tortie.io/service"
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1123 label, lower case (names are compared so)
Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Entry:
    """One named pod: its node (for liveness) and its addresses."""
    node: str
    namespace: str
    pod: str
    ips: tuple[Address, ...]


@dataclass
class Zone:
    """Lookups by lower-case label tuples; built by `build()`."""
    pods: dict[tuple[str, str], Entry] = field(default_factory=dict)  # (namespace, pod) -> entry
    services: dict[tuple[str, str], tuple[Entry, ...]] = field(default_factory=dict)  # (namespace, service)
    reverse: dict[Address, Entry] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # endpoint key -> why it has no name

    def pod(self, namespace: str, pod: str, alive: Callable[[str], bool]) -> Entry | None:
        entry = self.pods.get((namespace, pod))
        return entry if entry is not None and alive(entry.node) else None

    def service(self, namespace: str, service: str, alive: Callable[[str], bool]) -> list[Address]:
        """Every address of the service's live pods, in a stable order (rotation is the answer's business)."""
        return [ip for e in self.services.get((namespace, service), ()) if alive(e.node) for ip in e.ips]

    def ptr(self, address: Address, alive: Callable[[str], bool]) -> Entry | None:
        entry = self.reverse.get(address)
        return entry if entry is not None and alive(entry.node) else None


def _entry(key: str, value: Mapping) -> Entry | str:
    _kind, node, namespace, pod = key.split("/")
    if not LABEL.match(namespace) or not LABEL.match(pod):
        return "namespace or pod name is not a DNS label"
    ips = value.get("ips")
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        return "ips: not a list of addresses"
    try:
        return Entry(node, namespace, pod, tuple(ip_address(ip) for ip in ips))
    except ValueError as e:
        return f"ips: {e}"


def build(endpoints: Mapping[str, Mapping], claims: Mapping[str, Mapping], local: str,
          usable: Callable[[str], bool]) -> Zone:
    """endpoints, claims: every current entry (endpoints/<node>/<ns>/<pod>, claims/<cidr>/<node>); usable: whether
    a node counts for ownership (alive). The local node's endpoints are its own pods and always count."""
    zone = Zone()
    zone.ignored = foreign_endpoints(endpoints, endpoint_prefixes(claims, usable), local)
    for key in sorted(endpoints.keys() - zone.ignored.keys()):
        value = endpoints[key]
        entry = _entry(key, value)
        if isinstance(entry, str):
            zone.ignored[key] = entry
            continue
        name = (entry.namespace, entry.pod)
        if name in zone.pods:  # the same pod published by two nodes (a move in progress): the first key keeps it
            zone.ignored[key] = f"pod {entry.namespace}/{entry.pod} is published by {zone.pods[name].node} too"
            continue
        zone.pods[name] = entry
        for ip in entry.ips:
            zone.reverse.setdefault(ip, entry)
        labels = value.get("labels")
        service = labels.get(SERVICE_LABEL) if isinstance(labels, Mapping) else None
        if isinstance(service, str) and LABEL.match(service):
            zone.services[(entry.namespace, service)] = (*zone.services.get((entry.namespace, service), ()), entry)
    return zone


def in_pools(address: Address, pools: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    return any(address in p for p in pools)  # False across families
