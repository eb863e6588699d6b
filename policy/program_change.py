"""Policies added, changed or removed in time proportional to them, for a long-running caller (the daemon).

`compile_policies(previous=)` recompiles only the changed policies but still walks all of them, and binding a new
program walks every endpoint against every selector: ~150 ms at 10,000 policies and 1,000 endpoints for one
changed policy. Here a `LiveProgram` replaces just the changed policies' share of the program (reference-counting
the named sets they register) and a `LiveBinding` re-evaluates just the endpoints that the added or removed
targets and the new sets can concern. The result equals a full compile (tests/node/test_policy_sync.py).
"""
from __future__ import annotations

import bisect
from collections import Counter
from itertools import compress
from operator import itemgetter, not_
from dataclasses import replace
from typing import Iterable, Sequence

from policy import names
from policy.binding import Binding, _in_group, _LabelIndex
from policy.compiler import Group, Program, _compile_policy, compile_policies
from policy.ir import Direction, NamedSet, Ruleset
from policy.model import AnyPolicy, Endpoints, policy_id, policy_order

Target = tuple[str, Direction, Group]  # (policy chain, direction, target group), as in Program.targets


def order(program: Program, chain: str) -> tuple[float, str]:
    """Where a policy chain's target sits in evaluation order."""
    return policy_order(program.compiled[program.policy_chains[chain].policy].policy)


def _merge(index: _LabelIndex, items: Iterable, sign: int) -> None:
    """Adds (sign +1) or removes (-1) items, each with its selector, to or from a label index."""
    part = _LabelIndex(items)
    for bucket, part_bucket in [*((index.by_label.setdefault(k, []), v) for k, v in part.by_label.items()),
                                (index.generic, part.generic)]:
        if sign > 0:
            bucket.extend(part_bucket)
        else:
            for item in part_bucket:
                bucket.remove(item)


class LiveProgram:
    def __init__(self, policies: Iterable[AnyPolicy], ipv6: bool, previous: LiveProgram | None = None):
        self.program = compile_policies(policies, ipv6, previous.program if previous else None)
        self.refs = Counter(name for e in self.program.compiled.values() for _, name, _, _ in e.objects)

    def change(self, upsert: Sequence[AnyPolicy], remove: Sequence[str]) -> tuple[list[Target], list[Target]]:
        """Replaces or adds `upsert` and removes the policies `remove` (policy ids) in a new program (the
        previous one, which a ruleset may share, is left as it was); returns the (removed, added) targets."""
        old = self.program
        # (dict.copy, not dict(): it clones the table of a dict that has had deletions, where dict() inserts
        # 13,000 entries one by one: 1 ms each at 10,000 policies)
        p = Program(ipv6=old.ipv6, policy_chains=old.policy_chains.copy(), targets=old.targets,
                    groups=old.groups.copy(), nets=old.nets.copy(), named_ports=old.named_ports.copy(),
                    compiled=old.compiled.copy(), _names=old._names.copy())
        removed: list[Target] = []
        for pid in dict.fromkeys([*remove, *map(policy_id, upsert)]):
            if (entry := p.compiled.pop(pid, None)) is None:
                continue
            for chain, target in entry.chains:
                del p.policy_chains[chain.name], p._names[chain.name]
                removed.append((chain.name, chain.direction, target))
            for attr, name, _, _ in entry.objects:
                self.refs[name] -= 1
                if not self.refs[name]:
                    del self.refs[name], getattr(p, attr)[name], p._names[name]
        gone = {t[0] for t in removed}
        p.targets = list(compress(old.targets, map(not_, map(gone.__contains__, map(itemgetter(0), old.targets)))))
        self.program = p
        added: list[Target] = []
        for policy in upsert:
            pid = policy_id(policy)
            entry = p.compiled[pid] = _compile_policy(p, policy, pid)
            self.refs.update(name for _, name, _, _ in entry.objects)
            for chain, target in entry.chains:
                p.policy_chains[p.claim(chain.name, f"{pid}:{chain.direction}")] = chain
                t = (chain.name, chain.direction, target)
                bisect.insort(p.targets, t, key=lambda t: order(p, t[0]))
                added.append(t)
        return removed, added


class LiveBinding(Binding):
    """A Binding whose program can change: endpoint chains order their policies by policy order, not by
    position in the program, so that a policy can be inserted."""

    def __init__(self, live: LiveProgram, endpoints: Endpoints, **kwargs):
        super().__init__(live.program, endpoints, **kwargs)
        self.live = live
        self.targets = _LabelIndex(self._targets(live.program, live.program.targets))

    @staticmethod
    def _targets(program: Program, targets: Iterable[Target]) -> Iterable[tuple]:
        return ((g.selector, (order(program, chain), chain, direction, g)) for chain, direction, g in targets)

    def change_program(self, removed: Sequence[Target], added: Sequence[Target]) -> Ruleset:
        """The ruleset after `self.live.change()` returned these targets."""
        old, new = self.program, self.live.program
        new_groups = [n for n in new.groups if n not in old.groups]
        new_ports = {new.named_ports[n][0] for n in new.named_ports if n not in old.named_ports}
        groups = _LabelIndex((g.selector, g) for g in
                             [*(g for _, _, g in (*removed, *added)), *(new.groups[n][0] for n in new_groups)])
        affected = [e for e in self.by_key.values()
                    if any(_in_group(g, e, self.ns_labels) for g in groups.candidates(e.labels))
                    or new_ports and any(p.name in new_ports for p in e.ports)]
        for e in affected:
            self._contribute(e, -1)
        _merge(self.targets, self._targets(old, removed), -1)
        _merge(self.targets, self._targets(new, added), +1)
        _merge(self.groups, ((g.selector, (n, g, fam)) for n, (g, fam) in old.groups.items() if n not in new.groups),
               -1)
        _merge(self.groups, ((new.groups[n][0].selector, (n, *new.groups[n])) for n in new_groups), +1)
        self.program = new
        for name in [n for n in self.members if n not in new.groups and n not in new.named_ports]:
            del self.members[name]
        for name in [*new_groups, *(n for n in new.named_ports if n not in old.named_ports)]:
            self.members[name] = set()
        touched: set[str] = set()
        for e in affected:
            touched |= self._contribute(e, +1)
        sets = {n: s for n, s in self.ruleset.sets.items() if n in new.groups or n in new.named_ports or n in new.nets}
        for name in touched | (new.groups.keys() | new.named_ports.keys()) - sets.keys():
            sets[name] = replace(sets[name], elements=frozenset(self.members[name])) if name in sets else \
                self._new_set(name)
        sets.update((n, s) for n, s in new.nets.items() if n not in sets)
        self.ruleset = self._ruleset(sets)
        return self.ruleset

    def _new_set(self, name: str) -> NamedSet:
        elements = frozenset(self.members[name])
        if name in self.program.groups:
            g, fam = self.program.groups[name]
            return NamedSet(name, "addr", fam, elements, names.comment(g.key()))
        port, fam = self.program.named_ports[name]
        return NamedSet(name, "nport", fam, elements, names.comment(f"named port {port}"))
