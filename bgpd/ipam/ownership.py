"""What a node's datastore entries may say, checked by every reader, pure.

The broker's ACL lets a node write only keys that carry its name (docs/datastore.md), but not what the
values say. So every reader checks, and ignores (and reports) what a node is not entitled to:

* a claim on a block another node owned first: `bgpd.ipam.claims.owner()`, `rivals()` (and what the rival node
  itself does about it: `beaten()`);
* an endpoint (endpoints/<node>/...) with an address outside the prefixes its node owns (its blocks and
  the /32s it borrowed, by the claim rule): `foreign_endpoints()`;
* an endpoint of our own about to be published, for the same reason: `taken()` (a new pod whose address another
  node holds gets another one: Cluster.move_off(), bgpd.dataplane.pods.add_pod());
* a node record (nodes/<node>) with an address (IPv4 or IPv6) another node registered first: `unique_addresses()`.
  "First" is the record's marker `since`, which `registration()` keeps for as long as the node's
  address stays the same (restarts included); equal markers: the lower name.

Markers are written by their nodes, so a node can backdate its own: what the rules stop is a node
taking over what another node already holds with a later marker, and nobody guessing wrong about it.
The limits (a backdated marker; an address registered before its node ever did) are in docs/datastore.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable, Iterable, Mapping

from bgpd.ipam.claims import Claim, Network, by_version, claims_by_block, marker, owner, rivals
from bgpd.ipam.holdings import is_host
from config.datastore.keys import cidr_segment, parse_key

log = logging.getLogger("tortie.ownership")


class Ignored:
    """The entries a reader ignores, each logged once while it lasts; `total` counts them (for a metric)."""

    def __init__(self) -> None:
        self.current: dict[str, str] = {}
        self.total = 0

    def update(self, problems: Mapping[str, str]) -> None:
        for k in sorted(problems.keys() - self.current.keys()):
            log.warning("ignoring datastore entry %s: %s", k, problems[k])
            self.total += 1
        self.current = dict(problems)


def rival_claims(by_block: Mapping[Network, Mapping[str, Claim]]) -> dict[str, str]:
    """claims/<cidr>/<node> keys -> why they are ignored: another node owned the block first."""
    return {f"claims/{cidr_segment(block)}/{node}": f"{block} is owned by {owner(claims)}, who claimed it first"
            for block, claims in by_block.items() for node in rivals(claims)}


@dataclass(frozen=True)
class Beaten:
    """This node's owned claims that another node owned first (rivals: they can only come from a claim made before
    the other's reached us, when propagation took longer than the settle time), each with its owner."""

    release: dict[Network, str]  # no pod of ours has an address in it: delete our claim, claim another block
    keep: dict[Network, str]  # pods of ours have addresses in it: keep the claim while they do (reported)


def beaten(me: str, by_block: Mapping[Network, Mapping[str, Claim]],
           in_use: Iterable[IPv4Address | IPv6Address]) -> Beaten:
    """What `me` does with its rival claims (`in_use`: the addresses of its pods).

    A claim nobody uses is given up at once: the owner keeps the block, we claim another. One that pods of ours
    use is kept, and an error logged and counted, for as long as they do: like Calico, which never takes an
    address from a running pod, we do not silently strand them (their addresses stay visible in the datastore,
    readers ignore both the rival claim and those endpoints, and the operator sees the conflict); once those
    pods are gone, the claim is released like any other."""
    used = list(in_use)
    release, keep = {}, {}
    for block, claims in by_block.items():
        if me in rivals(claims):
            (keep if any(a in block for a in used) else release)[block] = owner(claims)
    return Beaten(release, keep)


def owned_prefixes(by_block: Mapping[Network, Mapping[str, Claim]]) -> dict[str, list[Network]]:
    """node -> the prefixes it owns by the claim rule (blocks, and borrowed /32s and /128s), IPv4 first."""
    out: dict[str, list[Network]] = {}
    for block, claims in sorted(by_block.items(), key=lambda i: by_version(i[0])):
        if (node := owner(claims)) is not None:
            out.setdefault(node, []).append(block)
    return out


def endpoint_prefixes(claims: Mapping[str, dict], usable: Callable[[str], bool]) -> dict[str, list[Network]]:
    """node -> the prefixes its endpoints may use: what it owns by the claim rule among the nodes that count
    (`usable`), and what a node that does not count owned while no node that counts owns it. So a node that
    reads down (every node does while the broker restarts: mosquitto publishes every Last Will when it stops)
    keeps its pods' addresses until another node takes its block."""
    by_block = {}
    for block, every in claims_by_block(claims, lambda n: True).items():
        counting = {n: c for n, c in every.items() if usable(n)}
        by_block[block] = counting if owner(counting) is not None else every
    return owned_prefixes(by_block)


_V6 = 1 << 128  # added to an IPv6 address's integer: one number line for both versions, IPv4 below


def _number(ip: IPv4Address | IPv6Address) -> int:
    return int(ip) + (_V6 if ip.version == 6 else 0)


def endpoint_addresses(value: Mapping) -> tuple[int, ...] | str:
    """An endpoint's addresses (as integers, IPv6 ones above every IPv4 one), or why it has none that can be
    checked."""
    ips = value.get("ips")
    if not isinstance(ips, list) or not ips or not all(isinstance(ip, str) for ip in ips):
        return "ips is not a list of addresses"
    try:
        return tuple(_number(ip_address(ip)) for ip in ips)
    except ValueError as e:
        return f"not an IP address in a block of its node: {e}"


def foreign_endpoints(endpoints: Mapping[str, Mapping], owned: Mapping[str, Iterable[Network]],
                      local: str | None = None, memo: dict | None = None) -> dict[str, str]:
    """endpoints/<node>/<ns>/<pod> keys -> why they are ignored: an address outside what <node> owns.

    An address a block's owner uses for a pod of its own stays its own: a /32 another node claims over it
    (a borrow the claim protocol would never make) does not let that node use it. The `local` node's own
    endpoints are never ignored (its own pods: the policy compiler judges them). `memo` (a dict kept by the
    caller) holds each endpoint's parsed addresses for as long as its value is the same object."""
    memo = {} if memo is None else memo
    for k in memo.keys() - endpoints.keys():
        del memo[k]
    parsed: dict[str, tuple[str, tuple[int, ...] | str]] = {}
    for k, value in endpoints.items():
        if (hit := memo.get(k)) is None or hit[0] is not value:
            hit = memo[k] = (value, endpoint_addresses(value))
        parsed[k] = (k.split("/", 2)[1], hit[1])
    blocks: dict[str, list[tuple[int, int]]] = {}
    borrowed: dict[int, str] = {}  # /32s and /128s, by address
    for node, prefixes in owned.items():
        for p in prefixes:
            if is_host(p):
                borrowed[_number(p.network_address)] = node
            else:
                blocks.setdefault(node, []).append((_number(p.network_address), _number(p.broadcast_address)))
    held = set()  # borrowed addresses that their block's owner uses for a pod of its own
    for node, addresses in parsed.values():
        for a in addresses if borrowed and isinstance(addresses, tuple) else ():
            if borrowed.get(a, node) != node and any(lo <= a <= hi for lo, hi in blocks.get(node, ())):
                held.add(a)
    allowed = {node: [*blocks.get(node, ()), *((a, a) for a, n in borrowed.items() if n == node and a not in held)]
               for node in owned}
    problems = {}
    for k, (node, addresses) in parsed.items():
        if node == local:
            continue
        if isinstance(addresses, str):
            problems[k] = addresses
            continue
        ranges = allowed.get(node, ())
        for a in addresses:
            if not any(lo <= a <= hi for lo, hi in ranges):
                problems[k] = f"address {_address_of(a)} is not in a block its node owns or borrowed"
                break
    return problems


def _address_of(number: int) -> IPv4Address | IPv6Address:
    return IPv6Address(number - _V6) if number >= _V6 else IPv4Address(number)


@dataclass(frozen=True)
class Taken:
    """An address of a new pod that readers give to another node: it is in a prefix that node owns (a block it
    owned first, our claim on it being a rival; or an address it borrowed or uses), so they would ignore the pod."""

    address: IPv4Address | IPv6Address
    prefix: Network  # the other node's prefix the address is in
    holder: str

    def __str__(self) -> str:
        return f"address {self.address} is in {self.prefix}, which {self.holder} holds"


def taken(me: str, owned: Mapping[str, Iterable[Network]], endpoints: Mapping[str, Mapping],
          addresses: Iterable[IPv4Address | IPv6Address]) -> list[Taken]:
    """The addresses of a new pod of `me` that every reader would refuse it, by foreign_endpoints()'s rule, and that
    another node holds (`owned`: node -> prefixes, as endpoint_prefixes() gives them; `endpoints`: the datastore's
    endpoint entries). An address outside what every node owns (a block of the node's file) is not taken: another
    address would not fare better."""
    owned = {node: list(prefixes) for node, prefixes in owned.items()}
    blocks = [p for p in owned.get(me, ()) if not is_host(p)]
    addresses = [a for a in addresses if not any(a in b for b in blocks)]  # in a block of ours: never foreign
    if not addresses:
        return []  # (the usual case: no need to read every endpoint)
    others = {k: v for k, v in endpoints.items() if k.split("/", 2)[1] != me}
    probes = {f"endpoints/{me}/new/{i}": {"ips": [str(a)]} for i, a in enumerate(addresses)}
    foreign = foreign_endpoints({**others, **probes}, owned)
    out = []
    for k, a in zip(probes, addresses):
        holders = [(p, node) for node, prefixes in owned.items() if node != me for p in prefixes
                   if p.version == a.version and a in p]
        if k in foreign and holders:
            prefix, holder = max(holders, key=lambda h: h[0].prefixlen)  # a borrowed address before its block
            out.append(Taken(a, prefix, holder))
    return out


class EndpointGate:
    """For an incremental reader of endpoints (the policy sync on node `local`): lets through only the
    endpoints whose addresses their node owns, as claims and liveness change too. Sans-IO: the caller passes
    the changed keys and the current entries; the answer is the changes to apply (a foreign endpoint reads
    as deleted). A few ms per call at 1,000 endpoints (addresses are parsed once per value)."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.ignored = Ignored()
        self._memo: dict = {}
        self._down: set[str] = set()  # nodes whose status reads down

    def concerns(self, key_: str, value: dict | None) -> bool:
        """Whether a datastore change can change what the gate lets through: a claim, or a node going down or
        coming back (not every lease renewal)."""
        kind, _, node = key_.partition("/")
        if kind == "claims":
            return True
        if kind != "status":
            return False
        down = value is not None and value.get("alive") is not True
        if down == (node in self._down):
            return False
        (self._down.add if down else self._down.discard)(node)
        return True

    def filter(self, changes: Mapping[str, dict | None], endpoints: Mapping[str, dict], claims: Mapping[str, dict],
               usable: Callable[[str], bool]) -> dict[str, dict | None]:
        """changes: key -> value (None: deleted) since the last call; endpoints, claims: every current entry;
        usable: whether a node counts (alive; see endpoint_prefixes() for one that does not). Wake the caller
        on the changes concerns() names too."""
        foreign = foreign_endpoints(endpoints, endpoint_prefixes(claims, usable), self.local, self._memo)
        out = {k: None if k in foreign else v for k, v in changes.items()}
        for k in foreign.keys() - self.ignored.current.keys():
            out[k] = None  # foreign now: withdrawn
        for k in self.ignored.current.keys() - foreign.keys():
            out[k] = endpoints.get(k)  # acceptable again (or gone)
        self.ignored.update(foreign)
        return out


def registration(previous: Mapping | None, address: str | None, asn: int, router_id: str, now: float,
                 address6: str | None = None) -> dict:
    """The nodes/<name> record a node writes (`address`: IPv4, `address6`: IPv6, either may be absent): its marker
    `since` is kept while the addresses stay the same."""
    record = {"address": address, "asn": asn, "router_id": router_id, **({"address6": address6} if address6 else {})}
    keep = (previous is not None and previous.get("address") == address and previous.get("address6") == address6
            and marker(previous.get("since")) <= now)
    return {**record, "since": marker(previous.get("since")) if keep else now}


def _addresses(record: Mapping) -> list[IPv4Address | IPv6Address]:
    """The valid addresses a record gives (address: IPv4, address6: IPv6); one that is not valid conflicts with
    nobody (the mesh ignores it)."""
    out: list[IPv4Address | IPv6Address] = []
    for field, kind in (("address", IPv4Address), ("address6", IPv6Address)):
        if isinstance(value := record.get(field), str):
            try:
                out.append(kind(value))
            except ValueError:
                pass
    return out


def unique_addresses(records: Mapping[str, Mapping]) -> tuple[dict[str, Mapping], dict[str, str]]:
    """nodes/<name> records -> (the ones kept, {ignored key: why}): of the records that give an address (of
    either family), the first registered (earliest `since`, then lowest name) keeps it, and a later record giving
    it is ignored as a whole."""
    holders: dict[IPv4Address | IPv6Address, str] = {}
    kept, ignored = {}, {}
    for k in sorted(records, key=lambda k: (marker(records[k].get("since")), parse_key(k)[1][0])):
        addresses = _addresses(records[k])
        if taken := [a for a in addresses if a in holders]:
            ignored[k] = f"address {taken[0]} is registered by {parse_key(holders[taken[0]])[1][0]} since earlier"
            continue
        kept[k] = records[k]
        holders.update(dict.fromkeys(addresses, k))
    return kept, ignored
