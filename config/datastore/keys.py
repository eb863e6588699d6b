"""Datastore keys (version 1): building, parsing, validating, and which node owns a key.

A key is `/`-separated segments of `[A-Za-z0-9_.-]+`; its first segment (the kind) fixes how many
segments follow. A CIDR becomes one segment with `/` written `-` (and IPv6 `:` written `_`).
"""
from __future__ import annotations

import functools
import ipaddress
import re

from config.datastore.errors import InvalidKey

SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")

# kind -> names of the segments after it; "node" marks the segment naming the owning node
KINDS: dict[str, tuple[str, ...]] = {
    "nodes": ("node",),
    "status": ("node",),
    "blocks": ("cidr",),
    "claims": ("cidr", "node"),
    "endpoints": ("node", "namespace", "pod"),
    "namespaces": ("namespace",),
    "policies": ("namespace", "name"),
    "globalpolicies": ("name",),
    # written by `tortie apply` (bgpd/cli/resources.py)
    "hostendpoints": ("name",),
    "ippools": ("name",),
    "bgppeers": ("name",),
}


def check_segment(segment: str) -> str:
    if not SEGMENT.fullmatch(segment) or segment in (".", ".."):
        raise InvalidKey(f"invalid key segment {segment!r}: expected [A-Za-z0-9_.-]+ (not '.' or '..')")
    return segment


def parse_key(key: str) -> tuple[str, tuple[str, ...]]:
    """'endpoints/node1/default/web-1' -> ('endpoints', ('node1', 'default', 'web-1')), or raises InvalidKey."""
    kind, *parts = key.split("/")
    if kind not in KINDS:
        raise InvalidKey(f"invalid key {key!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if len(parts) != len(KINDS[kind]):
        raise InvalidKey(f"invalid key {key!r}: {kind} keys are {'/'.join((kind, *(f'<{s}>' for s in KINDS[kind])))}")
    for name, part in zip(KINDS[kind], parts):
        check_segment(part)
        if name == "cidr":
            parse_cidr_segment(part)
    return kind, tuple(parts)


def key(kind: str, *parts: str) -> str:
    """key('endpoints', 'node1', 'default', 'web-1') -> 'endpoints/node1/default/web-1' (validated)."""
    text = "/".join((kind, *parts))
    parse_key(text)
    return text


def owner(key_: str) -> str | None:
    """The node that owns (alone may write) a key, or None for cluster-wide keys written by an admin."""
    kind, parts = parse_key(key_)
    names = KINDS[kind]
    return parts[names.index("node")] if "node" in names else None


def cidr_segment(cidr: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """'10.244.1.0/26' -> '10.244.1.0-26'; 'fd00::/64' -> 'fd00__-64'. The CIDR must be a network address."""
    net = ipaddress.ip_network(cidr)
    return str(net).replace(":", "_").replace("/", "-")


@functools.lru_cache(maxsize=8192)  # readers parse every claim's CIDR on every look at the claims
def parse_cidr_segment(segment: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The inverse of cidr_segment(); raises InvalidKey on anything else."""
    address, sep, length = segment.replace("_", ":").rpartition("-")
    try:
        if not sep:
            raise ValueError("no '-<prefix length>'")
        return ipaddress.ip_network(f"{address}/{length}")
    except ValueError as e:
        raise InvalidKey(f"invalid CIDR segment {segment!r}: {e}") from None


def under(key_: str, prefix: str) -> bool:
    """Whether key_ is under prefix, segment-wise: 'endpoints/node1' covers 'endpoints/node1/x/y', not 'endpoints/node10/...'."""
    prefix = prefix.rstrip("/")
    return not prefix or key_ == prefix or key_.startswith(prefix + "/")
