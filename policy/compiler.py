"""The policy compiler, first stage: policies -> Program (policy chains, and the endpoint groups and targets
they refer to). Pure: no kernel, no files. `policy.binding` binds a program to endpoints, giving the ruleset.

Every selector (with its namespace scope) becomes one shared named set per address family, so that an endpoint
joining or leaving a selector changes set elements only.
"""
from __future__ import annotations

import gc
import ipaddress
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from policy import names
from policy import selector as sel
from policy.ir import AddrMatch, Direction, IrRule, Match, NamedPortMatch, NamedSet, PolicyChain, PortMatch, Side
from policy.model import (PROTOCOLS, AnyPolicy, EntityRule, Endpoints, GlobalNetworkPolicy, IPNetwork,
                          K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PortRange, Rule, policy_id,
                          policy_order)


class CompileError(ValueError):
    """Two different objects would get the same kernel name (a digest collision)."""


@dataclass(frozen=True, slots=True)
class Group:
    """A set of endpoints: workloads in `namespace` (or in namespaces matching `ns_selector`, or anywhere)
    whose labels match `selector`; host endpoints too when `hosts`."""

    selector: sel.Selector
    namespace: str | None = None
    ns_selector: sel.Selector | None = None
    hosts: bool = False

    def key(self) -> str:
        return f"ns={self.namespace or ''};nssel={self.ns_selector or ''};sel={self.selector};hosts={self.hosts}"


@dataclass(frozen=True, slots=True)
class _AddrAtom:
    side: Side
    negate: bool
    group: Group | None = None
    nets: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class _NamedPortAtom:
    side: Side
    negate: bool
    port: str


@dataclass(frozen=True, slots=True)
class _Alternative:
    """One conjunction before it is split by address family."""

    protocol: int | None = None
    not_protocol: int | None = None
    addrs: tuple[_AddrAtom, ...] = ()
    ports: tuple[PortMatch, ...] = ()
    named: tuple[_NamedPortAtom, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None


@dataclass
class _Compiled:
    """One policy's share of a program, reused when the same policy object is compiled again."""

    policy: AnyPolicy
    chains: list[tuple[PolicyChain, Group]]
    objects: list[tuple[str, str, str, object]]  # (Program attribute, set name, name key, value)


@dataclass
class Program:
    """Compiled policies, not yet bound to endpoints."""

    ipv6: bool
    policy_chains: dict[str, PolicyChain] = field(default_factory=dict)
    # (policy chain, direction, target group) in evaluation order
    targets: list[tuple[str, Direction, Group]] = field(default_factory=list)
    groups: dict[str, tuple[Group, int]] = field(default_factory=dict)  # set name -> (group, family)
    nets: dict[str, NamedSet] = field(default_factory=dict)
    named_ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # set name -> (port name, family)
    compiled: dict[str, _Compiled] = field(default_factory=dict)  # policy identity -> its share
    _names: dict[str, str] = field(default_factory=dict)
    _record: list[tuple[str, str, str, object]] | None = None

    def claim(self, name: str, key: str) -> str:
        if self._names.setdefault(name, key) != key:
            raise CompileError(f"name collision: {name} stands for both {self._names[name]!r} and {key!r}")
        return name

    def register(self, attr: str, name: str, key: str, value: object) -> str:
        """Adds a set to `groups`, `nets` or `named_ports`, remembering it for the policy being compiled."""
        getattr(self, attr)[self.claim(name, key)] = value
        if self._record is not None:
            self._record.append((attr, name, key, value))
        return name


def _merge_ranges(ranges: Iterable[PortRange]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for r in sorted(ranges, key=lambda r: (r.first, r.last)):
        if out and r.first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], r.last)
        else:
            out.append([r.first, r.last])
    return [(a, b) for a, b in out]


def _port_alternatives(side: Side, ports: Sequence[PortRange | str]) -> list[tuple[PortMatch | None, _NamedPortAtom | None]]:
    """OR over ports: one alternative per merged numeric range and per port name; [no constraint] when empty."""
    if not ports:
        return [(None, None)]
    numeric = _merge_ranges(p for p in ports if isinstance(p, PortRange))
    alts: list[tuple[PortMatch | None, _NamedPortAtom | None]] = [
        (PortMatch(side, False, a, b), None) for a, b in numeric]
    alts += [(None, _NamedPortAtom(side, False, name)) for name in sorted({p for p in ports if isinstance(p, str)})]
    return alts


def _not_ports(side: Side, ports: Sequence[PortRange | str]) -> tuple[tuple[PortMatch, ...], tuple[_NamedPortAtom, ...]]:
    numeric = tuple(PortMatch(side, True, a, b) for a, b in _merge_ranges(p for p in ports if isinstance(p, PortRange)))
    named = tuple(_NamedPortAtom(side, True, n) for n in sorted({p for p in ports if isinstance(p, str)}))
    return numeric, named


def _entity(side: Side, e: EntityRule, namespace: str | None) -> list[_Alternative]:
    """A Calico source/destination: AND of its fields, OR over its ports."""
    atoms: list[_AddrAtom] = []
    if e.nets:
        atoms.append(_AddrAtom(side, False, nets=tuple(e.nets)))
    if e.notNets:
        atoms.append(_AddrAtom(side, True, nets=tuple(e.notNets)))
    scope = dict(namespace=None, ns_selector=e.namespaceSelector, hosts=False) if e.namespaceSelector else \
        dict(namespace=namespace, ns_selector=None, hosts=namespace is None)
    if e.selector is not None or e.namespaceSelector is not None:
        atoms.append(_AddrAtom(side, False, group=Group(e.selector or sel.All(), **scope)))
    if e.notSelector is not None:
        atoms.append(_AddrAtom(side, True, group=Group(e.notSelector, **scope)))
    not_numeric, not_named = _not_ports(side, e.notPorts)
    return [_Alternative(addrs=tuple(atoms), ports=((p,) if p else ()) + not_numeric,
                         named=((n,) if n else ()) + not_named)
            for p, n in _port_alternatives(side, e.ports)]


def _and(a: _Alternative, b: _Alternative) -> _Alternative:
    return replace(a, addrs=a.addrs + b.addrs, ports=a.ports + b.ports, named=a.named + b.named)


def _icmp_alternatives(rule: Rule) -> list[_Alternative]:
    """notICMP with a code is `type != t OR (type == t AND code != c)`: two alternatives."""
    base = _Alternative(protocol=rule.protocol, not_protocol=rule.notProtocol,
                        icmp_type=rule.icmp.type if rule.icmp else None, icmp_code=rule.icmp.code if rule.icmp else None)
    n = rule.notICMP
    if n is None:
        return [base]
    alts = [replace(base, not_icmp_type=n.type)] if base.icmp_type != n.type else []
    if n.code is None:
        return alts
    if base.icmp_type in (None, n.type):
        alts.append(replace(base, icmp_type=n.type, not_icmp_code=n.code))
    return alts


def _tortie_rule(rule: Rule, namespace: str | None) -> list[_Alternative]:
    return [_and(_and(base, s), d) for base, s, d in itertools.product(
        _icmp_alternatives(rule), _entity("src", rule.source, namespace), _entity("dst", rule.destination, namespace))]


def _exclude(net: IPNetwork, excepts: list[IPNetwork]) -> list[IPNetwork]:
    """`net` minus `excepts` (all inside it), by halving: each except descends one path, so the work is
    excepts x prefix bits, where removing them one by one from an ever longer list was quadratic."""
    if not excepts:
        return [net]
    if any(net.subnet_of(e) for e in excepts):  # type: ignore[arg-type]
        return []
    halves = list(net.subnets())
    return [piece for h in halves for piece in _exclude(h, [e for e in excepts if e.subnet_of(h)])]  # type: ignore[arg-type]


def _k8s_peer(side: Side, peer: NetworkPolicyPeer, namespace: str) -> _AddrAtom:
    if peer.ipBlock:
        nets = _exclude(peer.ipBlock.cidr, list(peer.ipBlock.except_))
        return _AddrAtom(side, False, nets=tuple(sorted(nets, key=lambda n: (n.version, n))))
    pods = peer.podSelector.to_selector() if peer.podSelector else sel.All()
    if peer.namespaceSelector is None:
        return _AddrAtom(side, False, group=Group(pods, namespace=namespace))
    return _AddrAtom(side, False, group=Group(pods, ns_selector=peer.namespaceSelector.to_selector()))


def _k8s_port(port: NetworkPolicyPort) -> _Alternative:
    proto = PROTOCOLS[port.protocol.lower()]
    if port.port is None:
        return _Alternative(protocol=proto)
    if isinstance(port.port, str):
        return _Alternative(protocol=proto, named=(_NamedPortAtom("dst", False, port.port),))
    return _Alternative(protocol=proto, ports=(PortMatch("dst", False, port.port, port.endPort or port.port),))


def _k8s_rule(side: Side, peers: list[NetworkPolicyPeer], ports: list[NetworkPolicyPort],
              namespace: str) -> list[_Alternative]:
    peer_alts = [_Alternative(addrs=(_k8s_peer(side, p, namespace),)) for p in peers] or [_Alternative()]
    port_alts = [_k8s_port(p) for p in ports] or [_Alternative()]
    return [replace(_and(pa, qa), protocol=qa.protocol) for pa, qa in itertools.product(peer_alts, port_alts)]


class _Splitter:
    """Turns alternatives into per-family Matches, registering the named sets they need in the program."""

    def __init__(self, program: Program):
        self.p = program

    def families(self, alt: _Alternative) -> list[int | None]:
        if not alt.addrs and not alt.named:
            return [None]
        fams = [4, 6]
        if alt.protocol == PROTOCOLS["icmp"]:
            fams = [4]
        elif alt.protocol == PROTOCOLS["icmpv6"]:
            fams = [6]
        return fams

    def addr(self, atom: _AddrAtom, fam: int) -> AddrMatch | None | bool:
        """The family's match; None to drop a vacuous negative atom; False if the alternative cannot match."""
        if atom.group is not None:
            if fam == 6 and not self.p.ipv6:
                return None if atom.negate else False
            key = atom.group.key()
            name = self.p.register("groups", names.set_name("addr", fam, key), f"addr{fam}:{key}", (atom.group, fam))
            return AddrMatch(atom.side, atom.negate, set=name)
        nets = sorted({n for n in atom.nets if n.version == fam})
        if not nets:
            return None if atom.negate else False
        if len(nets) == 1:
            return AddrMatch(atom.side, atom.negate, cidr=str(nets[0]))
        elements = frozenset(map(str, ipaddress.collapse_addresses(nets)))  # type: ignore[arg-type]
        key = ",".join(sorted(elements))
        name = names.set_name("net", fam, key)
        self.p.register("nets", name, f"net{fam}:{key}", NamedSet(name, "net", fam, elements, names.comment(key)))
        return AddrMatch(atom.side, atom.negate, set=name)

    def named(self, atom: _NamedPortAtom, fam: int) -> NamedPortMatch | None | bool:
        if fam == 6 and not self.p.ipv6:
            return None if atom.negate else False
        name = self.p.register("named_ports", names.set_name("nport", fam, atom.port), f"nport{fam}:{atom.port}",
                               (atom.port, fam))
        return NamedPortMatch(atom.side, atom.negate, name)

    def split(self, alt: _Alternative) -> list[Match]:
        if alt.protocol is not None and alt.not_protocol is not None:
            if alt.protocol == alt.not_protocol:
                return []  # cannot match
            alt = replace(alt, not_protocol=None)  # implied by the protocol
        out = []
        for fam in self.families(alt):
            if fam is None:
                out.append(Match(None, alt.protocol, alt.not_protocol, (), alt.ports, (), alt.icmp_type, alt.icmp_code,
                                 alt.not_icmp_type, alt.not_icmp_code))
                continue
            addrs = [self.addr(a, fam) for a in alt.addrs]
            named = [self.named(a, fam) for a in alt.named]
            if any(x is False for x in addrs + named):
                continue
            out.append(Match(fam, alt.protocol, alt.not_protocol, tuple(a for a in addrs if a),
                             alt.ports, tuple(n for n in named if n), alt.icmp_type, alt.icmp_code,
                             alt.not_icmp_type, alt.not_icmp_code))
        return out


_ACTIONS = {"Allow": "allow", "Deny": "deny", "Log": "log", "Pass": "pass"}


def _compile_policy(program: Program, p: AnyPolicy, pid: str) -> _Compiled:
    if isinstance(p, K8sNetworkPolicy):
        ns = p.metadata.namespace
        target = Group(p.spec.podSelector.to_selector(), namespace=ns)
        types = p.spec.types()
        rules: dict[str, list[tuple[int, str, list[_Alternative]]]] = {
            "Ingress": [(i, "allow", _k8s_rule("src", r.from_, r.ports, ns)) for i, r in enumerate(p.spec.ingress)],
            "Egress": [(i, "allow", _k8s_rule("dst", r.to, r.ports, ns)) for i, r in enumerate(p.spec.egress)],
        }
    else:
        ns = None if isinstance(p, GlobalNetworkPolicy) else p.metadata.namespace
        target = Group(p.spec.selector, namespace=ns, hosts=ns is None)
        types = p.spec.policy_types()
        rules = {
            "Ingress": [(i, _ACTIONS[r.action], _tortie_rule(r, ns)) for i, r in enumerate(p.spec.ingress)],
            "Egress": [(i, _ACTIONS[r.action], _tortie_rule(r, ns)) for i, r in enumerate(p.spec.egress)],
        }
    entry = _Compiled(p, [], [])
    program._record = entry.objects
    split = _Splitter(program).split
    for t in types:
        direction: Direction = "ingress" if t == "Ingress" else "egress"
        name = names.policy_chain(pid, direction)
        ir = tuple(IrRule(m, action, idx) for idx, action, alts in rules[t] for a in alts for m in split(a))
        entry.chains.append((PolicyChain(name, pid, direction, ir), target))
    program._record = None
    return entry


def compile_policies(policies: Iterable[AnyPolicy], ipv6: bool, previous: Program | None = None) -> Program:
    """With `previous`, a policy that is the very same object as one compiled there is not compiled again: after
    one policy changed, only that policy is."""
    program = Program(ipv6=ipv6)
    reuse = previous.compiled if previous is not None and previous.ipv6 == ipv6 else {}
    for p in sorted(policies, key=policy_order):
        pid = policy_id(p)
        entry = reuse.get(pid)
        if entry is not None and entry.policy is p:
            for attr, name, key, value in entry.objects:
                program.register(attr, name, key, value)
        else:
            entry = _compile_policy(program, p, pid)
        program.compiled[pid] = entry
        for chain, target in entry.chains:
            program.policy_chains[program.claim(chain.name, f"{pid}:{chain.direction}")] = chain
            program.targets.append((chain.name, chain.direction, target))
    return program


def needs_ipv6(policies: Iterable[AnyPolicy], endpoints: Endpoints) -> bool:
    """IPv6 matches are compiled only when an endpoint or a policy uses IPv6 (it halves the rule count)."""
    if any(ip.version == 6 for ep in [*endpoints.endpoints, *endpoints.hostEndpoints] for ip in ep.ips):
        return True
    return any(":" in text for p in policies for text in _cidr_texts(p))


def _cidr_texts(p: AnyPolicy) -> Iterable[str]:
    if isinstance(p, K8sNetworkPolicy):
        for peer in [*(x for r in p.spec.ingress for x in r.from_), *(x for r in p.spec.egress for x in r.to)]:
            if peer.ipBlock:
                yield str(peer.ipBlock.cidr)
    else:
        for r in [*p.spec.ingress, *p.spec.egress]:
            for e in (r.source, r.destination):
                yield from (str(n) for n in [*e.nets, *e.notNets])


@contextmanager
def gc_paused() -> Iterator[None]:
    """Compiling allocates many long-lived objects: the cyclic collector's passes would double the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
