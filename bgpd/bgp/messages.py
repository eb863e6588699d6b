"""ExaBGP 5 JSON API messages to typed events, and our commands to ExaBGP's text API. Pure.

Received prefixes become integer keys (`bgpd.prefixes`), the representation of the whole route path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Iterable, Union

from bgpd import prefixes


@dataclass(frozen=True)
class SessionState:
    peer: str
    state: str  # "up", "down", "connected"
    reason: str = ""

    @property
    def graceful(self) -> bool:
        """RFC 4724: a session that ended by a TCP close without NOTIFICATION is a restart; keep routes.

        ExaBGP reports that as "closing connection"; a hold-timer expiry or any NOTIFICATION is not.
        """
        return self.state == "down" and self.reason.startswith("closing connection")


@dataclass(frozen=True)
class Announce:
    peer: str
    next_hop: IPv4Address | IPv6Address
    prefixes: tuple[int, ...]  # keys (bgpd.prefixes) of the next hop's family


@dataclass(frozen=True)
class Withdraw:
    peer: str
    prefixes: tuple[int, ...]


@dataclass(frozen=True)
class EndOfRib:
    peer: str


@dataclass(frozen=True)
class Neighbors:
    """ExaBGP's answer to SHOW_NEIGHBORS: the sessions it runs, as (peer address, peer AS)."""

    sessions: frozenset[tuple[str, int]]


@dataclass(frozen=True)
class Malformed:
    line: str
    reason: str


Event = Union[SessionState, Announce, Withdraw, EndOfRib, Neighbors, Malformed]
# ExaBGP's family names -> IP version (one family per session: docs/ipv6.md)
FAMILIES = {"ipv4 unicast": 4, "ipv6 unicast": 6}


def parse_line(line: str) -> list[Event]:
    """One line from ExaBGP. Unknown message types (keepalive, open, notification...) give no event."""
    line = line.strip()
    if not line or line in ("done", "error"):
        return []
    try:
        msg = json.loads(line)
        if isinstance(msg, list):  # the only list ExaBGP writes: the answer to SHOW_NEIGHBORS
            return [Neighbors(frozenset((str(ip_address(n["peer"]["address"])), int(n["peer"]["as"])) for n in msg))]
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        kind = msg.get("type")
        if kind not in ("state", "update"):
            return []
        peer = msg["neighbor"]["address"]["peer"]
        if kind == "state":
            return [SessionState(peer, msg["neighbor"]["state"], msg["neighbor"].get("reason", ""))]
        return list(_update_events(peer, msg["neighbor"]["message"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return [Malformed(line[:200], f"{type(e).__name__}: {e}")]


def _update_events(peer: str, message: dict) -> Iterable[Event]:
    if "eor" in message:
        eor = message["eor"]
        if f"{eor.get('afi')} {eor.get('safi')}" in FAMILIES:
            yield EndOfRib(peer)
        return
    update = message.get("update", {})
    for family, nlris in update.get("withdraw", {}).items():
        if family in FAMILIES:
            yield Withdraw(peer, _keys(nlris, FAMILIES[family]))
    for family, by_next_hop in update.get("announce", {}).items():
        if family not in FAMILIES:
            continue
        version = FAMILIES[family]
        hops = [(_next_hop(h, version), nlris) for h, nlris in by_next_hop.items()]
        if version == 6 and any(not h.is_link_local for h, _ in hops):
            # an IPv6 next hop may come with the sender's link-local address too (RFC 2545; BIRD sends both):
            # ExaBGP repeats the prefixes under each, and only the global one is routable without a device
            hops = [(h, nlris) for h, nlris in hops if not h.is_link_local]
        for next_hop, nlris in hops:
            yield Announce(peer, next_hop, _keys(nlris, version))


def _keys(nlris: list, version: int) -> tuple[int, ...]:
    """ExaBGP's compact encoding (exabgp.api.compact) gives bare prefixes; the full one {"nlri": ...}."""
    parse = prefixes.parse
    keys = tuple([parse(n if isinstance(n, str) else n["nlri"]) for n in nlris])
    if keys and (min(keys) < prefixes.V6 if version == 6 else max(keys) >= prefixes.V6):
        raise ValueError(f"a prefix that is not IPv{version}")
    return keys


_NEXT_HOPS: dict[int, dict[str, IPv4Address | IPv6Address]] = {4: {}, 6: {}}  # by family: one object per next
# hop, which the RIB compares by identity first


def _next_hop(text: str, version: int) -> IPv4Address | IPv6Address:
    known = _NEXT_HOPS[version]
    hop = known.get(text)
    if hop is None:
        hop = ip_address(text)
        if hop.version != version:
            raise ValueError(f"next hop {text} is not IPv{version}")
        if len(known) >= 4096:
            known.clear()
        known[text] = hop
    return hop


# --- commands --------------------------------------------------------------------------------------
def _version(peer: str) -> int:
    return 6 if ":" in peer else 4


def _selectors(peers: Iterable[str]) -> dict[int, str]:
    """ExaBGP's neighbour selector per family, naming its sessions ("neighbor A , neighbor B"): a command with
    none goes to every session, and each one of the other family logs an error. "" for a family without any."""
    peers = list(peers)
    return {v: " , ".join(f"neighbor {p}" for p in peers if _version(p) == v) for v in (4, 6)}


def announce_blocks(blocks: Iterable[IPv4Network | IPv6Network], peers: Iterable[str]) -> list[str]:
    """To the sessions among `peers` of each block's family only (ExaBGP refuses the others)."""
    selector = _selectors(peers)
    return [f"{selector[b.version]} announce route {b} next-hop self" for b in blocks if selector[b.version]]


def withdraw_blocks(blocks: Iterable[IPv4Network | IPv6Network], peers: Iterable[str]) -> list[str]:
    selector = _selectors(peers)
    return [f"{selector[b.version]} withdraw route {b}" for b in blocks if selector[b.version]]


def end_of_rib(peer: str) -> str:
    return f"neighbor {peer} announce eor ipv{_version(peer)} unicast"


# ExaBGP's sessions, one JSON list (parsed as Neighbors): whether a reload took (see NodeCore.configure)
SHOW_NEIGHBORS = "show neighbor json"
CEASE_BFD_DOWN = 10  # NOTIFICATION Cease subcode "BFD Down" (RFC 9384)


def teardown(peer: str, subcode: int) -> str:
    """Closes the session with a Cease NOTIFICATION (silently when graceful restart was negotiated); ExaBGP
    then connects again as usual."""
    return f"neighbor {peer} teardown {subcode}"


def route_refresh(peers: Iterable[str]) -> list[str]:
    """Asks every session again for its routes, naming the sessions of each family (ExaBGP logs an error for
    each session of the other family otherwise)."""
    selector = _selectors(peers)
    return [f"{selector[v]} announce route-refresh ipv{v} unicast" for v in (4, 6) if selector[v]]
