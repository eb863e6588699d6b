"""Endpoints from many independent entries (the datastore's), one bad entry at a time: never a whole set refused.

Each node publishes its own pods' entries, so two entries can claim the same address or interface (a dead node's
stale endpoints after its address block was claimed again, a misbehaving node). `resolve` keeps, for every claim,
the entry the caller prefers and ignores the others, each with a reason. A local pod whose entry is invalid (the
caller leaves it out) or lost a conflict is *isolated*: its interface goes into the ruleset's isolated set, whose
packets both backends drop in and out before anything else, rather than missing from the dispatch maps (which
would leave the pod unpoliced). Pure: no kernel, no datastore.

The caller (policy.datastore_sync):

    res = resolve(valid_endpoints_by_key, namespaces, prefer=lambda key, ep: (node_is_live(key), revision(key)),
                  local_interfaces=interfaces_of_this_nodes_pods)
    ruleset = compile_ruleset(policies, res.endpoints, isolated=res.isolated)
    # or, incrementally: Binding(program, res.endpoints, res.isolated), then binding.isolate(res.isolated)
    # res.rejected: {key: reason} to report; a local pod among them (or isolated) fails its CNI ADD with the reason
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from policy.model import Endpoint, Endpoints, HostEndpoint, Namespace, claims


@dataclass(frozen=True)
class Resolution:
    endpoints: Endpoints  # the accepted entries: no address or interface used twice
    rejected: dict[str, str]  # entry key -> why it is ignored
    isolated: frozenset[str]  # local pod interfaces without an accepted endpoint


def _no_preference(key: str, ep: Endpoint) -> int:
    return 0


def resolve(entries: Mapping[str, Endpoint], namespaces: Iterable[Namespace] = (),
            prefer: Callable[[str, Endpoint], Any] = _no_preference, local_interfaces: Iterable[str] = (),
            host_endpoints: Sequence[HostEndpoint] = ()) -> Resolution:
    """Accepts entries in order of preference (the highest `prefer(key, endpoint)` first, ties by key) as long as
    none of their claims (interface, addresses) is taken; host endpoints, the node's own configuration, first."""
    owner: dict[str, str] = {}
    rejected: dict[str, str] = {}

    def take(key: str, ep: Endpoint | HostEndpoint) -> bool:
        mine = claims(ep)
        if len(set(mine)) != len(mine):
            rejected[key] = "lists the same address twice"
            return False
        taken = next((c for c in mine if c in owner), None)
        if taken is not None:
            rejected[key] = f"{taken} is already used by {owner[taken]}, which is preferred"
            return False
        owner.update((c, key) for c in mine)
        return True

    hosts = [h for h in host_endpoints if take(f"hostEndpoints/{h.name}", h)]
    ordered = sorted(sorted(entries.items()), key=lambda kv: prefer(*kv), reverse=True)
    accepted = [ep for key, ep in ordered if take(key, ep)]
    known = {n.name: n for n in reversed(list(namespaces))}  # the first of a name wins
    for ep in accepted:  # a namespace nobody described yet still exists, with its name label
        known.setdefault(ep.namespace, Namespace(name=ep.namespace, labels={}))
    result = Endpoints(namespaces=sorted(known.values(), key=lambda n: n.name), endpoints=accepted,
                       hostEndpoints=hosts)
    isolated = frozenset(local_interfaces) - {ep.interface for ep in accepted}
    return Resolution(result, rejected, isolated)
