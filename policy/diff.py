"""What changed between two rulesets: the input of incremental apply."""
from __future__ import annotations

from dataclasses import dataclass, field

from policy.ir import NamedSet, Ruleset


@dataclass
class Delta:
    added_sets: list[NamedSet] = field(default_factory=list)
    removed_sets: list[str] = field(default_factory=list)
    set_elements: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)  # name -> (add, remove)
    added_policy_chains: list[str] = field(default_factory=list)
    changed_policy_chains: list[str] = field(default_factory=list)
    removed_policy_chains: list[str] = field(default_factory=list)
    added_endpoint_chains: list[str] = field(default_factory=list)
    removed_endpoint_chains: list[str] = field(default_factory=list)
    dispatch: dict[str, tuple[dict[str, str], set[str]]] = field(default_factory=dict)  # map -> (add, remove)
    isolated: tuple[set[str], set[str]] = field(default_factory=lambda: (set(), set()))  # (add, remove)

    def elements_only(self) -> bool:
        """True when only set elements and interface dispatch entries change (no chain or set is touched)."""
        return not (self.added_sets or self.removed_sets or self.added_policy_chains or self.changed_policy_chains
                    or self.removed_policy_chains or self.added_endpoint_chains or self.removed_endpoint_chains)

    def empty(self) -> bool:
        return self.elements_only() and not self.set_elements and not self.dispatch and not any(self.isolated)


def diff(old: Ruleset, new: Ruleset) -> Delta | None:
    """The changes from `old` to `new`, or None when only a full apply can make them (IPv6 switched on or off)."""
    if old.ipv6 != new.ipv6:
        return None
    d = Delta()
    for name, s in new.sets.items():
        o = old.sets.get(name)
        if o is None or (o.kind, o.family) != (s.kind, s.family):
            if o is not None:
                return None
            d.added_sets.append(s)
        elif o.elements is not s.elements and o.elements != s.elements:
            d.set_elements[name] = (set(s.elements - o.elements), set(o.elements - s.elements))
    d.removed_sets = [n for n in old.sets if n not in new.sets]
    for name, c in (() if new.policy_chains is old.policy_chains else new.policy_chains.items()):
        if name not in old.policy_chains:
            d.added_policy_chains.append(name)
        elif old.policy_chains[name] is not c and old.policy_chains[name] != c:
            d.changed_policy_chains.append(name)
    if new.policy_chains is not old.policy_chains:
        d.removed_policy_chains = [n for n in old.policy_chains if n not in new.policy_chains]
    d.added_endpoint_chains = [n for n in new.endpoint_chains if n not in old.endpoint_chains]
    d.removed_endpoint_chains = [n for n in old.endpoint_chains if n not in new.endpoint_chains]
    for vmap, entries in new.dispatch.items():
        before = old.dispatch.get(vmap, {})
        add = {i: c for i, c in entries.items() if before.get(i) != c}
        remove = {i for i, c in before.items() if entries.get(i) != c}
        if add or remove:
            d.dispatch[vmap] = (add, remove)
    d.isolated = (set(new.isolated - old.isolated), set(old.isolated - new.isolated))
    return d
