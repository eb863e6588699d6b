"""Per-rule packet and byte counters, mapped from kernel rules back to the policies they came from."""
from __future__ import annotations

from dataclasses import dataclass

from policy.ir import Ruleset


@dataclass(frozen=True)
class RuleCounter:
    """Packets and bytes matched by one policy rule (summed over the kernel rules it compiled to)."""

    policy: str
    direction: str
    rule: str  # rule index in the policy, or "default-deny"
    action: str
    packets: int
    bytes: int


def counters_from_sums(rs: Ruleset, sums: dict[tuple[str, str], list[int]]) -> list[RuleCounter]:
    """Maps sums keyed by (IR chain name, "r<rule index>" or "default deny") back to policies."""
    out = []
    for chain in rs.policy_chains.values():
        actions = {f"r{r.rule}": r.action for r in chain.rules}
        for key, action in sorted(actions.items(), key=lambda kv: int(kv[0][1:])):
            packets, nbytes = sums.get((chain.name, key), (0, 0))
            out.append(RuleCounter(chain.policy, chain.direction, key[1:], action, packets, nbytes))
    for chain in rs.endpoint_chains.values():
        packets, nbytes = sums.get((chain.name, "default deny"), (0, 0))
        ifaces = sorted(i for d in rs.dispatch.values() for i, c in d.items() if c == chain.name)
        out.append(RuleCounter(f"endpoint chain {chain.name} ({', '.join(ifaces)})", chain.direction,
                               "default-deny", "deny", packets, nbytes))
    return out
