"""Applies rulesets with nftables: one transaction per change, so the kernel keeps the old ruleset on any error."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from typing import Collection

from policy import nft_elements, nft_inspect, render_nft
from policy.counters import RuleCounter, counters_from_sums
from policy.diff import Delta
from policy.ir import Ruleset
from policy.kernel import run
from policy.names import TABLE
from policy.nft_rules import Unsupported


def _named(table: str, rules: dict[str, int], elements: dict[str, int]) -> dict[str, int]:
    return {f"table inet {table}": 1, **{f"chain {n}": k for n, k in rules.items()},
            **{f"set {n}": k for n, k in elements.items()}}


def _rules_of(fingerprints: dict[str, int]) -> dict[str, int]:
    return {f"rules of chain {n}": f for n, f in fingerprints.items()}


class NftApplier:
    """The `KernelBackend` for nftables (policy.backend)."""

    name = "nft"
    slot = "a"
    counts_transactions = True

    def __init__(self) -> None:
        self.transactions = 0

    def apply_full(self, rs: Ruleset, prev: Ruleset | None = None) -> None:
        run(["nft", "-f", "-"], render_nft.render(rs))
        self.transactions += 1

    def apply_delta(self, delta: Delta, rs: Ruleset, prev: Ruleset | None = None) -> None:
        """Changes of elements and chains (pods coming and going, policies changing) go over netlink; new or
        removed sets, and rules nft_rules cannot encode, as one `nft -f` transaction."""
        try:
            batches = nft_elements.batches_for(delta, rs) if nft_elements.can_send(delta) else None
        except Unsupported:
            batches = None
        if batches is not None:
            for batch in batches:
                nft_elements.send(batch)
                self.transactions += 1
            return
        script = render_nft.render_delta(delta, rs)
        if script:
            run(["nft", "-f", "-"], script)
            self.transactions += 1

    def available(self) -> bool:
        return shutil.which("nft") is not None

    def exists(self) -> bool:
        return f"table inet {TABLE}" in run(["nft", "list", "tables"]).splitlines()

    def flush(self) -> None:
        if self.exists():
            run(["nft", "delete", "table", "inet", TABLE])

    def generation(self) -> int:
        return nft_inspect.generation()

    def expected(self, rs: Ruleset) -> dict[str, int]:
        return _named(TABLE, {n: len(r) for n, r in render_nft.chain_rules(rs).items()}, render_nft.set_sizes(rs))

    def census(self) -> dict[str, int]:
        found = nft_inspect.census(TABLE)
        return _named(TABLE, found.rules, found.elements) | _rules_of(found.fingerprints) if found.exists else {}

    def fingerprints(self, chains: Collection[str] | None) -> dict[str, int]:
        """nft lists a rule as the kernel re-encodes it, which only the kernel knows: read back after our
        writes."""
        if chains is None:
            return _rules_of(nft_inspect.census(TABLE).fingerprints)
        return _rules_of(nft_inspect.fingerprints(TABLE, chains))

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
