"""The policy compiler, second stage: a Program bound to endpoints gives the Ruleset. Pure: no kernel, no files.

A Binding can be updated with a new endpoints list: only the endpoints that changed are re-evaluated, against
only the selectors that can match them (a `key == 'value'` term indexes each selector by that label), so an
endpoint joining a selector costs well under a millisecond with 10,000 policies loaded.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable, Generic, Iterable, Sequence, TypeVar

from policy import names
from policy import selector as sel
from policy.compiler import Group, Program, compile_policies, gc_paused, needs_ipv6
from policy.ir import DISPATCH_MAPS, EndpointChain, NamedSet, Ruleset
from policy.model import PROTOCOLS, AnyPolicy, Endpoint, Endpoints, HostEndpoint

AnyEndpoint = Endpoint | HostEndpoint
T = TypeVar("T")


def _in_group(g: Group, ep: AnyEndpoint, ns_labels: dict[str, dict[str, str]]) -> bool:
    if isinstance(ep, HostEndpoint):
        ok = g.hosts
    elif g.namespace is not None:
        ok = ep.namespace == g.namespace
    elif g.ns_selector is not None:
        ok = g.ns_selector.matches(ns_labels.get(ep.namespace, {}))
    else:
        ok = True
    return ok and g.selector.matches(ep.labels)


class _LabelIndex(Generic[T]):
    """Items keyed by a selector: those with a `key == 'value'` term are only candidates for endpoints with
    that label."""

    def __init__(self, items: Iterable[tuple[sel.Selector, T]]):
        self.by_label: dict[tuple[str, str], list[T]] = {}
        self.generic: list[T] = []
        for s, item in items:
            terms = s.terms if isinstance(s, sel.BoolOp) and s.op == "&&" else (s,)
            eq = next((t for t in terms if isinstance(t, sel.Compare) and t.op == "=="), None)
            if eq is None:
                self.generic.append(item)
            else:
                self.by_label.setdefault((eq.key, eq.value), []).append(item)

    def candidates(self, labels: dict[str, str]) -> list[T]:
        out = list(self.generic)
        for kv in labels.items():
            out += self.by_label.get(kv, ())
        return out


def _key(ep: AnyEndpoint) -> str:
    return f"host/{ep.name}" if isinstance(ep, HostEndpoint) else f"{ep.namespace}/{ep.name}"


class Binding:
    def __init__(self, program: Program, endpoints: Endpoints, isolated: Iterable[str] = (),
                 enforced: Callable[[AnyEndpoint], bool] | None = None):
        """`isolated`: interfaces whose every packet is dropped (local pods that could not be compiled).
        `enforced`: which endpoints get an endpoint chain and dispatch entries (default: all); the others only
        feed selectors' sets (another node's pods, whose packets never pass here: every chain reachable from
        a base chain costs kernel time at each commit that adds a rule or a jump)."""
        self.program = program
        self.isolated = frozenset(isolated)
        self.enforced = enforced
        self.groups = _LabelIndex((g.selector, (name, g, fam)) for name, (g, fam) in program.groups.items())
        self.targets = _LabelIndex((g.selector, (i, chain, direction, g))
                                   for i, (chain, direction, g) in enumerate(program.targets))
        self._bind(endpoints)

    def _bind(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.by_key: dict[str, AnyEndpoint] = {_key(e): e for e in (*endpoints.endpoints, *endpoints.hostEndpoints)}
        self.ns_labels = {n.name: n.labels for n in endpoints.namespaces}
        self.members: dict[str, set[str]] = {name: set() for name in (*self.program.groups, *self.program.named_ports)}
        self.chain_refs: Counter[str] = Counter()
        self.chains: dict[str, EndpointChain] = {}
        self.enforced_keys: set[str] = set()  # as `enforced` decided when each endpoint was added
        self.dispatch: dict[str, dict[str, str]] = {m: {} for m in DISPATCH_MAPS}
        for ep in (*endpoints.endpoints, *endpoints.hostEndpoints):
            self._contribute(ep, +1)
        self.ruleset = self._ruleset(
            {name: NamedSet(name, "addr", fam, frozenset(self.members[name]), names.comment(g.key()))
             for name, (g, fam) in self.program.groups.items()} |
            {name: NamedSet(name, "nport", fam, frozenset(self.members[name]), names.comment(f"named port {port}"))
             for name, (port, fam) in self.program.named_ports.items()} | self.program.nets)

    def _ruleset(self, sets: dict[str, NamedSet]) -> Ruleset:
        return Ruleset(sets=sets, policy_chains=self.program.policy_chains, endpoint_chains=dict(self.chains),
                       dispatch={m: dict(d) for m, d in self.dispatch.items()}, ipv6=self.program.ipv6,
                       isolated=self.isolated)

    def _contribute(self, ep: AnyEndpoint, sign: int) -> set[str]:
        """Adds (sign +1) or removes (-1) what one endpoint puts in sets and dispatch maps; returns the sets
        it touched."""
        touched = set()
        for name, g, fam in self.groups.candidates(ep.labels):
            if _in_group(g, ep, self.ns_labels):
                touched.add(name)
                self._update(name, (str(ip) for ip in ep.ips if ip.version == fam), sign)
        for name, (port_name, fam) in self.program.named_ports.items():
            elements = [f"{ip},{PROTOCOLS[p.protocol.lower()]},{p.port}"
                        for p in ep.ports if p.name == port_name for ip in ep.ips if ip.version == fam]
            if elements:
                touched.add(name)
                self._update(name, elements, sign)
        k = _key(ep)
        if sign > 0 and (self.enforced is None or self.enforced(ep)):
            self.enforced_keys.add(k)
        elif sign < 0 and k in self.enforced_keys:
            self.enforced_keys.remove(k)
        else:
            return touched
        lists: dict[str, list[tuple[int, str]]] = {"ingress": [], "egress": []}
        for i, chain, direction, g in self.targets.candidates(ep.labels):
            if _in_group(g, ep, self.ns_labels):
                lists[direction].append((i, chain))
        kind = "host" if isinstance(ep, HostEndpoint) else "workload"
        for direction, found in lists.items():
            if not found:
                continue
            policies = tuple(chain for _, chain in sorted(found))
            name = names.endpoint_chain(direction, policies)
            vmap = self.dispatch[f"{kind}_{direction}"]
            if sign > 0:
                self.chains[name] = EndpointChain(name, direction, policies)  # type: ignore[arg-type]
                self.chain_refs[name] += 1
                vmap[ep.interface] = name
            else:
                self.chain_refs[name] -= 1
                if not self.chain_refs[name]:
                    del self.chains[name], self.chain_refs[name]
                vmap.pop(ep.interface, None)
        return touched

    def _update(self, name: str, elements: Iterable[str], sign: int) -> None:
        if sign > 0:
            self.members[name].update(elements)
        else:
            self.members[name].difference_update(elements)

    def update(self, endpoints: Endpoints) -> Ruleset:
        """The ruleset for a new endpoints list."""
        if {n.name: n.labels for n in endpoints.namespaces} != self.ns_labels or \
                needs_ipv6([], endpoints) and not self.program.ipv6:
            self._bind(endpoints)  # namespace labels or the address family changed: everything may move
            return self.ruleset
        new = {_key(e): e for e in (*endpoints.endpoints, *endpoints.hostEndpoints)}
        upsert = [e for k, e in new.items() if self.by_key.get(k) is not e and self.by_key.get(k) != e]
        self.change(upsert, [k for k in self.by_key if k not in new])
        self.endpoints = endpoints
        return self.ruleset

    def change(self, upsert: Sequence[AnyEndpoint] = (), remove: Sequence[str] = ()) -> Ruleset:
        """Adds or replaces some endpoints and removes others (by "namespace/name" or "host/name"), as a
        datastore watch reports them. Their addresses must stay unique, and IPv4 if the program is IPv4-only;
        namespaces do not change here."""
        touched: set[str] = set()
        for k in [*remove, *(_key(e) for e in upsert)]:  # all removals first: an address or interface may move
            if (old := self.by_key.pop(k, None)) is not None:
                touched |= self._contribute(old, -1)
        for e in upsert:
            self.by_key[_key(e)] = e
            touched |= self._contribute(e, +1)
        sets = dict(self.ruleset.sets)
        for name in touched:
            sets[name] = replace(sets[name], elements=frozenset(self.members[name]))
        self.ruleset = self._ruleset(sets)
        return self.ruleset


    def isolate(self, interfaces: Iterable[str]) -> Ruleset:
        """The ruleset with exactly these interfaces isolated."""
        self.isolated = frozenset(interfaces)
        self.ruleset = replace(self.ruleset, isolated=self.isolated)
        return self.ruleset


def bind_endpoints(program: Program, endpoints: Endpoints, isolated: Iterable[str] = (),
                   enforced: Callable[[AnyEndpoint], bool] | None = None) -> Ruleset:
    return Binding(program, endpoints, isolated, enforced).ruleset


def compile_ruleset(policies: Sequence[AnyPolicy], endpoints: Endpoints, isolated: Iterable[str] = (),
                    enforced: Callable[[AnyEndpoint], bool] | None = None) -> Ruleset:
    """The whole compiler: a pure function of policies and endpoints (and the interfaces to isolate, and which
    endpoints are enforced here: Binding)."""
    with gc_paused():
        return bind_endpoints(compile_policies(policies, needs_ipv6(policies, endpoints)), endpoints, isolated,
                              enforced)
