"""Applies rulesets with nftables: one transaction per change, so the kernel keeps the old ruleset on any error."""
from __future__ import annotations

import json
from collections import defaultdict

from policy import render_nft
from policy.diff import Delta
from policy.ir import Ruleset
from policy.kernel import RuleCounter, run
from policy.names import TABLE


class NftApplier:
    backend = "nft"

    def apply_full(self, rs: Ruleset) -> None:
        run(["nft", "-f", "-"], render_nft.render(rs))

    def apply_delta(self, delta: Delta, rs: Ruleset) -> None:
        script = render_nft.render_delta(delta, rs)
        if script:
            run(["nft", "-f", "-"], script)

    def exists(self) -> bool:
        return f"table inet {TABLE}" in run(["nft", "list", "tables"]).splitlines()

    def flush(self) -> None:
        if self.exists():
            run(["nft", "delete", "table", "inet", TABLE])

    def counters(self, rs: Ruleset) -> list[RuleCounter]:
        if not self.exists():
            return []
        data = json.loads(run(["nft", "-j", "list", "table", "inet", TABLE]))
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    acc = sums[rule["chain"], rule["comment"]]
                    acc[0] += expr["counter"]["packets"]
                    acc[1] += expr["counter"]["bytes"]
        return counters_from_sums(rs, sums)


def counters_from_sums(rs: Ruleset, sums: dict[tuple[str, str], list[int]]) -> list[RuleCounter]:
    """Maps (IR chain name, rule comment) sums back to policies; both backends comment rules alike."""
    out = []
    for chain in rs.policy_chains.values():
        actions = {f"r{r.rule}": r.action for r in chain.rules}
        for comment, action in sorted(actions.items(), key=lambda kv: int(kv[0][1:])):
            packets, nbytes = sums.get((chain.name, comment), (0, 0))
            out.append(RuleCounter(chain.policy, chain.direction, comment[1:], action, packets, nbytes))
    for chain in rs.endpoint_chains.values():
        packets, nbytes = sums.get((chain.name, "default deny"), (0, 0))
        ifaces = sorted(i for d in rs.dispatch.values() for i, c in d.items() if c == chain.name)
        out.append(RuleCounter(f"endpoint chain {chain.name} ({', '.join(ifaces)})", chain.direction,
                               "default-deny", "deny", packets, nbytes))
    return out
