"""Applying rulesets in the current network namespace: incremental when possible, full otherwise, never fail open.

The last ruleset applied in a network namespace is kept in a state file, so that the next apply can change only
what differs. An incremental change that fails falls back to a full apply; a full apply is one transaction (one
per table with iptables), so when it fails the previous ruleset stays in force and the error is raised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter

from policy.apply_iptables import IptablesApplier
from policy.apply_nft import NftApplier
from policy.diff import diff
from policy.counters import RuleCounter
from policy.ir import Ruleset
from policy.kernel import ApplyError

Backend = Literal["nft", "iptables"]
DEFAULT_STATE_DIR = Path(os.environ.get("TORTIE_POLICY_STATE_DIR", "/run/tortie/policy"))


@dataclass(frozen=True)
class _SavedState:
    backend: str
    slot: str  # the iptables backend's ipset slot
    ruleset: Ruleset


_STATE_JSON = TypeAdapter(_SavedState)


def _netns_id() -> str:
    return f"netns-{os.stat('/proc/self/ns/net').st_ino}"


class PolicyApplier:
    """Owns Tortie's policy ruleset in the network namespace this process runs in."""

    def __init__(self, backend: Backend = "nft", state_dir: Path = DEFAULT_STATE_DIR, iptables_variant: str = "legacy",
                 persist: bool = True):
        """With persist=False the applied state is only kept in memory until `save()`: a long-running caller
        applying many small changes then does not rewrite a large state file after each one."""
        self.backend = backend
        self.persist = persist
        self.path = Path(state_dir) / f"{_netns_id()}.json"
        self.variant = iptables_variant
        self._state: tuple[str, str, Ruleset] | None = None  # (backend, ipset slot, ruleset)
        self._loaded = False

    def _kernel(self, backend: str, slot: str = "a") -> NftApplier | IptablesApplier:
        return NftApplier() if backend == "nft" else IptablesApplier(self.variant, slot)

    def current(self) -> tuple[str, str, Ruleset] | None:
        """(backend, ipset slot, ruleset) last applied here, if its kernel objects still exist."""
        if not self._loaded:
            self._loaded = True
            try:
                saved = _STATE_JSON.validate_json(self.path.read_bytes())
                state = (saved.backend, saved.slot, saved.ruleset)
            except (OSError, ValueError):
                state = None
            if state and self._kernel(state[0], state[1]).exists():
                self._state = state
        return self._state

    def _applied(self, backend: str, slot: str, rs: Ruleset) -> None:
        self._state = (backend, slot, rs)
        if self.persist:
            self.save()

    def save(self) -> None:
        if self._state is None:
            return
        backend, slot, rs = self._state
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(_STATE_JSON.dump_json(_SavedState(backend, slot, rs)))
        tmp.replace(self.path)

    def apply(self, rs: Ruleset, full: bool = False) -> str:
        """Makes `rs` the enforced ruleset; returns "unchanged", "incremental" or "full"."""
        cur = self.current()
        prev = cur[2] if cur and cur[0] == self.backend else None
        kernel = self._kernel(self.backend, cur[1] if cur and cur[0] == self.backend else "a")
        if prev is not None and not full:
            delta = diff(prev, rs)
            if delta is not None and delta.empty():
                return "unchanged"
            if delta is not None:
                try:
                    if isinstance(kernel, IptablesApplier):
                        kernel.apply_delta(delta, rs, prev)
                    else:
                        kernel.apply_delta(delta, rs)
                    self._applied(self.backend, getattr(kernel, "slot", "a"), rs)
                    return "incremental"
                except ApplyError:
                    pass  # the kernel and our state disagree: a full apply below settles it
        if isinstance(kernel, IptablesApplier):
            kernel.apply_full(rs, prev)
        else:
            kernel.apply_full(rs)
        if cur and cur[0] != self.backend:
            self._kernel(cur[0], cur[1]).flush()  # the new backend enforces before the old one is removed
        self._applied(self.backend, getattr(kernel, "slot", "a"), rs)
        return "full"

    def flush(self) -> None:
        """Removes everything Tortie applied here, with either backend."""
        for backend in ("nft", "iptables"):
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
