"""Kernel object names: short, stable digests of what they stand for, never built from user text.

A digest name fits every limit (iptables chains 28 characters, ipset names 31) and no label or policy name can
inject syntax into a ruleset. 12 hex digits (48 bits) make a collision among 100,000 objects about a 1 in 50,000
chance; the compiler detects one and refuses rather than merge two objects.
"""
from __future__ import annotations

import hashlib
import re

TABLE = "tortie"  # nft table (family inet)
IPT_PREFIX = "TT-"  # iptables chains
IPSET_PREFIX = "tt-"  # ipsets


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def policy_chain(policy_id: str, direction: str) -> str:
    return f"p{direction[0]}_{digest(policy_id)}"


def endpoint_chain(direction: str, policies: tuple[str, ...]) -> str:
    return f"e{direction[0]}_{digest(direction + ':' + ','.join(policies))}"


_SET_PREFIX = {"addr": "a", "net": "n", "nport": "p"}


def set_name(kind: str, family: int, key: str) -> str:
    return f"{_SET_PREFIX[kind]}{family}_{digest(key)}"


def comment(text: str) -> str:
    """Human text safe inside a quoted nft or iptables comment (at most 120 characters)."""
    return re.sub(r"[^A-Za-z0-9_./:=,;'(){}&|! -]", "_", text)[:120]
