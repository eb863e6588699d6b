"""Prefixes as integer keys: what the route path passes from ExaBGP's messages to the kernel and back.

A key is `address << 8 | length`, IPv6 marked by bit 136, so IPv4 and IPv6 keys never meet and sort as
the networks do (IPv4 first, then by address, then by length). The message parser and the kernel route
decoder build the same keys, so the RIB, the plan and the kernel table are dicts of ints: hashed in C,
about 32 bytes each, where an ipaddress network costs a Python-level hash and a few hundred bytes.
`network()` turns a key back into an ipaddress network for display and for code that reasons about
networks (the overlay, WireGuard).
"""
from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from socket import AF_INET, AF_INET6, inet_pton

V6 = 1 << 136
_ALL6 = (1 << 128) - 1
_LENGTHS = {str(n): n for n in range(129)}  # a dict: only canonical digits, no signs, spaces or underscores


def key(net: IPv4Network | IPv6Network) -> int:
    k = int(net.network_address) << 8 | net.prefixlen
    return k | V6 if net.version == 6 else k


def parse(text: str) -> int:
    """'a.b.c.d/n' or an IPv6 'x::/n' (no length: the whole address), host bits clear; ValueError otherwise."""
    address, slash, length = text.partition("/")
    try:
        if ":" in address:
            value, bits, family = int.from_bytes(inet_pton(AF_INET6, address), "big"), 128, V6
        else:
            value, bits, family = int.from_bytes(inet_pton(AF_INET, address), "big"), 32, 0
    except OSError:
        raise ValueError(f"{text!r} is not an IP prefix") from None
    n = _LENGTHS.get(length, -1) if slash else bits
    if not 0 <= n <= bits:
        raise ValueError(f"{text!r}: bad prefix length")
    if value & ((1 << (bits - n)) - 1):
        raise ValueError(f"{text!r} has host bits set")
    return family | value << 8 | n


def network(k: int) -> IPv4Network | IPv6Network:
    return IPv6Network(((k >> 8) & _ALL6, k & 255)) if k & V6 else IPv4Network((k >> 8, k & 255))


def version(k: int) -> int:
    return 6 if k & V6 else 4


def text(k: int) -> str:
    return str(network(k))
