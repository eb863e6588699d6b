"""Applies rulesets with nftables: one transaction per change, so the kernel keeps the old ruleset on any error."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict

from policy import nft_elements, nft_inspect, render_nft
from policy.backend import census_problems
from policy.counters import RuleCounter, counters_from_sums
from policy.diff import Delta
from policy.ir import Ruleset
from policy.kernel import run
from policy.names import TABLE


class NftApplier:
    """The `KernelBackend` for nftables (policy.backend)."""

    name = "nft"
    slot = "a"

    def apply_full(self, rs: Ruleset, prev: Ruleset | None = None) -> None:
        run(["nft", "-f", "-"], render_nft.render(rs))

    def apply_delta(self, delta: Delta, rs: Ruleset, prev: Ruleset | None = None) -> None:
        """Element-only changes go over netlink (about 1 ms); anything else is one `nft -f` transaction."""
        if delta.elements_only():
            for batch in nft_elements.batches_for(delta, rs):
                nft_elements.send(batch)
            return
        script = render_nft.render_delta(delta, rs)
        if script:
            run(["nft", "-f", "-"], script)

    def available(self) -> bool:
        return shutil.which("nft") is not None

    def exists(self) -> bool:
        return f"table inet {TABLE}" in run(["nft", "list", "tables"]).splitlines()

    def flush(self) -> None:
        if self.exists():
            run(["nft", "delete", "table", "inet", TABLE])

    def generation(self) -> int:
        return nft_inspect.generation()

    def verify(self, rs: Ruleset) -> list[str]:
        found = nft_inspect.census(TABLE)
        if not found.exists:
            return [f"table inet {TABLE} is missing"]
        return census_problems({n: len(r) for n, r in render_nft.chain_rules(rs).items()}, found.rules,
                               render_nft.set_sizes(rs), found.elements)

    def counters(self, rs: Ruleset) -> list[RuleCounter]:
        if not self.exists():
            return []
        data = json.loads(run(["nft", "-j", "list", "table", "inet", TABLE]))
        per_chain: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if rule:
                c = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), None)
                per_chain[rule["chain"]].append((c["packets"], c["bytes"]) if c else (0, 0))
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for chain in rs.policy_chains.values():
            for r, (packets, nbytes) in zip(chain.rules, per_chain[chain.name]):
                acc = sums[chain.name, f"r{r.rule}"]
                acc[0] += packets
                acc[1] += nbytes
        for name in rs.endpoint_chains:
            if per_chain[name]:
                sums[name, "default deny"] = list(per_chain[name][-1])
        return counters_from_sums(rs, sums)
