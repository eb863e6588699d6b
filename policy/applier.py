"""Applying rulesets in the current network namespace: incremental when possible, full otherwise, never fail open.

The last ruleset applied in a network namespace is kept in a state file, so that the next apply can change only
what differs. An incremental change that fails falls back to a full apply; a full apply is one transaction (one
per table with iptables), so when it fails the previous ruleset stays in force and the error is raised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter

from policy.backend import BACKENDS, Backend, KernelBackend, census_problems, open_backend
from policy.counters import RuleCounter
from policy.diff import Delta, diff
from policy.ir import Ruleset
from policy.kernel import ApplyError, Interrupted

DEFAULT_STATE_DIR = Path(os.environ.get("TORTIE_POLICY_STATE_DIR", "/run/tortie/policy"))
LAYOUT = 4  # the kernel layout rulesets are rendered in (and the state kept): another one is replaced in full


@dataclass(frozen=True)
class _SavedState:
    backend: str
    slot: str  # the iptables backend's ipset slot
    ruleset: Ruleset
    layout: int = 1
    fingerprints: dict[str, int] = field(default_factory=dict)  # KernelBackend.fingerprints() after our writes


_STATE_JSON = TypeAdapter(_SavedState)


def _netns_id() -> str:
    return f"netns-{os.stat('/proc/self/ns/net').st_ino}"


def _summary(problems: list[str]) -> list[str]:
    return problems if len(problems) <= 6 else [*problems[:5], f"and {len(problems) - 5} more"]


class PolicyApplier:
    """Owns Tortie's policy ruleset in the network namespace this process runs in.

    Drift: `check()` says whether the applied ruleset is still what the kernel holds, `repair()` puts it back in
    full when it is not and counts that in `repairs`. Call `repair()` periodically (every second) or on nftables
    events, never at the same time as `apply()`; while nothing changed in the kernel it costs one generation read
    (a netlink round trip for nft, a getsockopt per table plus `ipset list -t` for iptables), after a change one
    census of our objects and of each chain's rules (only after changes of others: ours are recognised by the
    generation, nft's a count of transactions, iptables' the tables as they are right after our restore).
    """

    def __init__(self, backend: Backend = "nft", state_dir: Path = DEFAULT_STATE_DIR, iptables_variant: str = "legacy",
                 persist: bool = True):
        """With persist=False the applied state is only kept in memory until `save()`: a long-running caller
        applying many small changes then does not rewrite a large state file after each one."""
        self.backend = backend
        self.persist = persist
        self.path = Path(state_dir) / f"{_netns_id()}.json"
        self.variant = iptables_variant
        self.repairs = 0  # full re-applies after the kernel was found changed behind our back
        self._state: tuple[str, str, Ruleset] | None = None  # (backend, ipset slot, ruleset)
        self._fingerprints: dict[str, int] = {}  # the census's chain fingerprints that only the kernel knows
        self._loaded = False
        self._full_next = False  # the kernel's objects are gone, or another version rendered them: replace in full
        self._verified: object = None  # the kernel generation last found holding our ruleset intact
        self._expected: tuple[tuple[str, str, Ruleset], dict[str, int]] | None = None  # census of the state
        self._unrepairable: list[str] = []  # differences a full apply did not remove: not repaired again until
        # the next apply (a repair never loops)

    def _kernel(self, backend: str, slot: str = "a") -> KernelBackend:
        return open_backend(backend, slot, self.variant)

    def current(self) -> tuple[str, str, Ruleset] | None:
        """(backend, ipset slot, ruleset) last applied here (its kernel objects may have been removed since)."""
        if not self._loaded:
            self._loaded = True
            try:
                saved = _STATE_JSON.validate_json(self.path.read_bytes())
            except (OSError, ValueError):
                return None
            self._state = (saved.backend, saved.slot, saved.ruleset)
            self._fingerprints = saved.fingerprints
            self._full_next = saved.layout != LAYOUT or not self._kernel(saved.backend, saved.slot).exists()
        return self._state

    def _before(self, kernel: KernelBackend) -> object:
        """The generation before a change, when the kernel was last found holding our ruleset intact: then the
        change can be recognised as ours alone afterwards."""
        return kernel.generation() if self._verified is not None else None

    def _applied(self, kernel: KernelBackend, rs: Ruleset, before: object = None, delta: Delta | None = None) -> None:
        """After `rs` was applied in full, or by `delta`."""
        if self._state is None or rs is not self._state[2]:
            self._unrepairable = []  # a new ruleset: its differences are new
        self._state = (kernel.name, kernel.slot, rs)
        self._fingerprints = self._read_back(kernel, delta)
        self._full_next = False
        verified = None  # the next check takes a census, unless the kernel saw our transactions and nothing else
        if before is not None and before == self._verified:  # nobody else changed anything since we looked
            after = kernel.generation()
            # nft counts transactions: ours alone moved it by exactly ours. iptables has no counter: the xtables
            # lock keeps other iptables tools out while our restore runs, and what changes in the moments between
            # our reads and the restore is taken for ours (the census after any change by others finds it)
            if not kernel.counts_transactions or after == before + kernel.transactions:  # type: ignore[operator]
                verified = after
        self._verified = verified
        if self.persist:
            self.save()

    def _read_back(self, kernel: KernelBackend, delta: Delta | None) -> dict[str, int]:
        """The fingerprints of what we just wrote, as the kernel holds it (a change by someone else within the
        moment between our commit and this read would be taken for ours)."""
        out = {} if delta is None else dict(self._fingerprints)
        if delta is not None:
            for name in (*delta.removed_policy_chains, *delta.removed_endpoint_chains):
                out.pop(f"rules of chain {name}", None)
        wrote = None if delta is None else \
            [*delta.added_policy_chains, *delta.changed_policy_chains, *delta.added_endpoint_chains]
        for _ in range(3):
            try:
                return out | kernel.fingerprints(wrote) if wrote != [] else out
            except Interrupted:
                continue  # someone else committed during the dump: read again
        raise ApplyError("could not read back the applied chains: the ruleset kept changing")

    def save(self) -> None:
        if self._state is None:
            return
        backend, slot, rs = self._state
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(_STATE_JSON.dump_json(_SavedState(backend, slot, rs, LAYOUT, self._fingerprints)))
        tmp.replace(self.path)

    def apply(self, rs: Ruleset, full: bool = False) -> str:
        """Makes `rs` the enforced ruleset; returns "unchanged", "incremental" or "full"."""
        cur = self.current()
        same = cur is not None and cur[0] == self.backend
        prev = cur[2] if cur is not None and same else None
        kernel = self._kernel(self.backend, cur[1] if cur is not None and same else "a")
        before = self._before(kernel) if same else None
        if prev is not None and not (full or self._full_next):
            delta = diff(prev, rs)
            if delta is not None and delta.empty():
                return "unchanged"
            if delta is not None:
                try:
                    kernel.apply_delta(delta, rs, prev)
                    self._applied(kernel, rs, before, delta)
                    return "incremental"
                except ApplyError:
                    pass  # the kernel and our state disagree: a full apply below settles it
        kernel.apply_full(rs, prev)
        if cur is not None and not same:
            self._kernel(cur[0], cur[1]).flush()  # the new backend enforces before the old one is removed
        self._applied(kernel, rs, before)
        return "full"

    def check(self) -> list[str]:
        """What differs between the applied ruleset and the kernel ([] when intact or nothing was applied)."""
        return _summary(self._differences())

    def _differences(self) -> list[str]:
        cur = self.current()
        if cur is None:
            return []
        kernel = self._kernel(cur[0], cur[1])
        generation = kernel.generation()
        if generation == self._verified:
            return []
        if self._expected is None or self._expected[0][:2] != cur[:2] or self._expected[0][2] is not cur[2]:
            self._expected = (cur, kernel.expected(cur[2]))
        try:
            found = kernel.census()
        except Interrupted:
            return []  # changed while we looked: the generation moved, so the next check looks again
        want = self._expected[1] | self._fingerprints
        problems = [p for p in census_problems(want, found) if p not in self._unrepairable]
        if not problems:
            self._verified = generation
        return problems

    def repair(self) -> list[str]:
        """Checks, and when the kernel differs re-applies the last ruleset in full (one transaction per table, so
        the moment it commits every pod is policed again); returns what was wrong. Raises ApplyError when the
        re-apply fails: the next call tries again."""
        problems = self._differences()
        if problems and self._state is not None:
            backend, slot, rs = self._state
            kernel = self._kernel(backend, slot)
            kernel.apply_full(rs, rs)
            self.repairs += 1
            self._applied(kernel, rs)
            remaining = self._differences()
            if remaining:  # a difference a full apply does not remove (e.g. a duplicate of our jump): never loop
                self._unrepairable += remaining
                raise ApplyError("policy ruleset re-applied, but the kernel still differs (not repaired again "
                                 "until the next apply): " + "; ".join(_summary(remaining)))
        return _summary(problems)

    def flush(self) -> None:
        """Removes everything Tortie applied here, with either backend."""
        for backend in BACKENDS:
            kernel = self._kernel(backend)
            if kernel.available():  # a host may have only one of them
                kernel.flush()
        self.path.unlink(missing_ok=True)
        self._state = None

    def counters(self) -> list[RuleCounter]:
        cur = self.current()
        if cur is None:
            return []
        return self._kernel(cur[0], cur[1]).counters(cur[2])
