"""The intermediate ruleset: what the compiler produces and both renderers and appliers consume.

A ruleset is plain data (frozen dataclasses), so that two of them can be compared to find what changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["ingress", "egress"]
Action = Literal["allow", "deny", "log", "pass"]
SetKind = Literal["addr", "net", "nport"]
Side = Literal["src", "dst"]

# The four interface dispatch maps: which endpoint chain a packet goes through, by interface.
# Workload ingress applies where packets leave the host towards the pod (postrouting: forwarded or sent by the host),
# workload egress where they arrive from the pod (prerouting); host endpoint maps on input / output only.
DISPATCH_MAPS = ("workload_ingress", "workload_egress", "host_ingress", "host_egress")


@dataclass(frozen=True, slots=True)
class NamedSet:
    """A kernel set. Elements: addresses ("addr"), CIDRs ("net") or "address,protocol,port" ("nport")."""

    name: str
    kind: SetKind
    family: int
    elements: frozenset[str]
    comment: str


@dataclass(frozen=True, slots=True)
class AddrMatch:
    """The packet's source or destination address is (not) in a named set, or (not) inside a literal CIDR."""

    side: Side
    negate: bool
    set: str | None = None
    cidr: str | None = None


@dataclass(frozen=True, slots=True)
class PortMatch:
    side: Side
    negate: bool
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class NamedPortMatch:
    """(address, protocol, port) of the packet's source or destination side is (not) in a named-port set."""

    side: Side
    negate: bool
    set: str


@dataclass(frozen=True, slots=True)
class Match:
    """A conjunction: every field that is set must hold."""

    family: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    addrs: tuple[AddrMatch, ...] = ()
    ports: tuple[PortMatch, ...] = ()
    named_ports: tuple[NamedPortMatch, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class IrRule:
    match: Match
    action: Action
    rule: int  # index of the source rule in the policy's ingress or egress list, for counters


@dataclass(frozen=True, slots=True)
class PolicyChain:
    name: str
    policy: str
    direction: Direction
    rules: tuple[IrRule, ...]


@dataclass(frozen=True, slots=True)
class EndpointChain:
    """The ordered policy chains of every endpoint with this exact list: shared, so that an endpoint joining
    a policy's selector usually only moves its interface to another existing chain."""

    name: str
    direction: Direction
    policies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ruleset:
    sets: dict[str, NamedSet] = field(default_factory=dict)
    policy_chains: dict[str, PolicyChain] = field(default_factory=dict)
    endpoint_chains: dict[str, EndpointChain] = field(default_factory=dict)
    dispatch: dict[str, dict[str, str]] = field(default_factory=lambda: {m: {} for m in DISPATCH_MAPS})
    ipv6: bool = False
    # interfaces of local pods that could not be compiled: every packet in or out of them is dropped, before
    # anything else (established flows included), so that a pod is never left unpoliced
    isolated: frozenset[str] = frozenset()
