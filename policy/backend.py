"""One interface for the kernel backends that enforce a ruleset (nftables; iptables with ipset), picked by name."""
from __future__ import annotations

from typing import Collection, Hashable, Literal, Protocol

from policy.counters import RuleCounter
from policy.diff import Delta
from policy.ir import Ruleset

Backend = Literal["nft", "iptables"]
BACKENDS: tuple[Backend, ...] = ("nft", "iptables")


class KernelBackend(Protocol):
    """Applies rulesets in the current network namespace. Every method raises ApplyError when a tool or the kernel
    refuses; a refused apply leaves the previous ruleset in force."""

    name: Backend
    slot: str  # which generation of named sets is in use (iptables' ipset slots; "a" for nft): kept in the state

    def available(self) -> bool:
        """The tools this backend needs are installed."""

    def exists(self) -> bool:
        """Our ruleset (some version of it) is in the kernel."""

    def apply_full(self, rs: Ruleset, prev: Ruleset | None) -> None:
        """Replaces whatever is there by `rs`; `prev` (what was applied before, if known) is restored when a
        multi-step apply fails half-way."""

    def apply_delta(self, delta: Delta, rs: Ruleset, prev: Ruleset) -> None:
        """Takes the kernel from `prev` to `rs` by applying `delta` only."""

    def flush(self) -> None:
        """Removes every object of ours."""

    def counters(self, rs: Ruleset) -> list[RuleCounter]:
        """Per-rule packet and byte counters of the applied `rs`."""

    def generation(self) -> Hashable:
        """A fingerprint that changes whenever the kernel's rules may have changed (cheap: no listing)."""

    def expected(self, rs: Ruleset) -> dict[str, int]:
        """What `census()` finds while `rs` is applied intact (pure)."""

    def census(self) -> dict[str, int]:
        """Our objects in the kernel, each with a size: "chain X" -> its rules, "set Y" -> its elements, ...,
        and each chain's rules as a fingerprint ("rules of chain X"): a rule replaced by another of the same
        count is found too (read without decoding rules: far cheaper than a listing). Raises Interrupted if
        they changed meanwhile."""

    def fingerprints(self, chains: Collection[str] | None) -> dict[str, int]:
        """The census's fingerprints of these chains (all when None) as the kernel holds them now, for a
        backend whose `expected()` cannot compute them (nft); {} for the others. Read right after our own
        writes: what they hold then is ours."""

    counts_transactions: bool  # generation() counts committed transactions, so changes of ours alone are known
    transactions: int  # transactions this object committed


def open_backend(name: str, slot: str = "a", iptables_variant: str = "legacy") -> KernelBackend:
    """The backend called `name` ("nft" or "iptables"); `iptables_variant` picks iptables-legacy or -nft."""
    if name == "nft":
        from policy.apply_nft import NftApplier
        return NftApplier()
    if name == "iptables":
        from policy.apply_iptables import IptablesApplier
        return IptablesApplier(iptables_variant, slot)
    raise ValueError(f"unknown policy backend {name!r}: use {' or '.join(BACKENDS)}")


def census_problems(want: dict[str, int], got: dict[str, int]) -> list[str]:
    """What differs between the census of a ruleset and the kernel's (pure)."""
    if want and not got:
        return ["none of our chains and sets is in the kernel"]
    problems = []
    for name in sorted(want.keys() | got.keys()):
        if name not in got:
            problems.append(f"{name} is missing")
        elif name not in want:
            problems.append(f"{name} is not ours")
        elif got[name] != want[name]:
            problems.append(f"{name} differ from ours" if "rules of chain" in name else
                            f"{name} has {got[name]}, expected {want[name]}")
    return problems
