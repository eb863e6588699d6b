"""The node's ruleset follows the datastore: policies, namespaces and endpoints in, nftables/iptables out.

Only the entries that changed are parsed and compiled again (`policy.sync_state.SyncState`), and the applier
changes only what differs in the kernel. Compiling and applying run on one worker thread, never on the event loop
that also programs BGP routes: the loop only collects which keys changed.

Nothing in the datastore can stop this task: every entry is validated on its own and problems are reported per
entry (the others applied); a ruleset that cannot be compiled or applied leaves the previous one in force (never
fail open), the error is logged once per distinct problem and counted, and the next change starts from scratch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from config.datastore import Datastore, key
from policy.applier import Backend, PolicyApplier
from policy.kernel import ApplyError
from policy.metrics import RuleCounterCollector
from policy.sync_state import WATCHED, Outcome, SyncState

log = logging.getLogger("tortie.policy")
SAVE_AFTER = 2.0  # seconds: the state file (megabytes at 10,000 policies) is rewritten at most this often


class PolicySync:
    def __init__(self, ds: Datastore, node: str, backend: Backend, state_dir: Path, registry: CollectorRegistry):
        self.ds, self.node = ds, node
        self.applier = PolicyApplier(backend, state_dir=state_dir, persist=False)
        self.state = SyncState(node)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tortie-policy")  # owns state and applier
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        self._fresh = True  # the next apply reads every entry and replaces the kernel's ruleset in full
        self._wake = asyncio.Event()
        self._last_error = ""
        self._saved = 0.0
        self.applied = asyncio.Event()  # a first ruleset is in force
        self.duration = Histogram("tortie_policy_apply_duration_seconds", "compile and apply of the ruleset",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
        self.failures = Counter("tortie_policy_apply_failures", "rulesets that could not be compiled or applied",
                                registry=registry)
        self.policies = Gauge("tortie_policy_policies", "policies in force", registry=registry)
        self.endpoints = Gauge("tortie_policy_endpoints", "endpoints the ruleset knows", registry=registry)
        self.rules = Gauge("tortie_policy_rules", "policy rules in the applied ruleset", registry=registry)
        self.sets = Gauge("tortie_policy_sets", "named address sets in the applied ruleset", registry=registry)
        self.invalid = Counter("tortie_policy_invalid_entries", "applies that met invalid datastore entries "
                               "(their last valid form stayed in force)", registry=registry)
        registry.register(RuleCounterCollector(self.applier.counters))

    async def apply(self) -> bool:
        """Makes the datastore's current state the enforced ruleset; False if it could not be."""
        async with self._lock:
            if self._fresh:
                self._dirty.clear()
                changes = {k: v for kind in WATCHED for k, v in self.ds.items(kind).items()}
            else:
                changes = {k: self.ds.get(k) for k in self._dirty}
                self._dirty.clear()
            fresh, self._fresh = self._fresh, False
            start = time.monotonic()
            try:
                outcome, how = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._compile_and_apply, changes, fresh)
            except (ValueError, ApplyError) as e:
                self._fresh = True
                return self._failed(str(e))
            except Exception as e:  # noqa: BLE001  (a bug must not leave the node unpoliced or stop the task)
                log.exception("policy apply failed unexpectedly")
                self._fresh = True
                return self._failed(repr(e))
            self._applied(outcome, how, time.monotonic() - start)
            return True

    def _compile_and_apply(self, changes: dict[str, dict | None], fresh: bool) -> tuple[Outcome, str]:
        """On the worker thread."""
        if fresh:
            self.state.reset()
        outcome = self.state.update(changes)
        how = self.applier.apply(outcome.ruleset, full=fresh)
        if how != "unchanged" and time.monotonic() - self._saved > SAVE_AFTER:
            self.applier.save()  # for `tortie policy show` and the counters; the daemon's first apply is full
            self._saved = time.monotonic()
        return outcome, how

    def _applied(self, outcome: Outcome, how: str, seconds: float) -> None:
        if outcome.problems:
            self.invalid.inc()
            self._report("invalid entries left as they were (last valid form kept): " + "; ".join(outcome.problems))
        else:
            self._last_error = ""
        rs = outcome.ruleset
        self.duration.observe(seconds)
        self.policies.set(outcome.policies)
        self.rules.set(sum(len(c.rules) for c in rs.policy_chains.values()))
        self.sets.set(len(rs.sets))
        self.endpoints.set(outcome.endpoints)
        self.applied.set()
        if how != "unchanged":
            log.info("policy applied how=%s policies=%d endpoints=%d seconds=%.3f", how, outcome.policies,
                     outcome.endpoints, seconds)

    def settled(self, key_: str) -> bool:
        """True when the datastore's current value of this key has been through an apply (in force, or refused
        and reported), and no apply is pending."""
        return not self._dirty and not self._lock.locked() and not self._fresh and \
            self.state.raw.get(key_) == self.ds.get(key_)

    def _report(self, message: str) -> None:
        if message != self._last_error:
            log.error("%s", message)
            self._last_error = message

    def _failed(self, why: str) -> bool:
        self.failures.inc()
        self._report(f"policy not applied, the previous ruleset stays in force: {why}")
        return False

    async def run(self) -> None:
        feed = self.ds.changes()
        watcher = asyncio.create_task(self._watch(feed))
        try:
            await self.apply()
            while True:
                await self._wake.wait()
                await asyncio.sleep(0.005)  # one apply for a burst of changes
                self._wake.clear()
                await self.apply()
        finally:
            watcher.cancel()
            await feed.aclose()
            await asyncio.get_running_loop().run_in_executor(self._worker, self.applier.save)
            self._worker.shutdown(wait=False)

    async def _watch(self, feed) -> None:
        async for change in feed:
            if change.key.split("/", 1)[0] in WATCHED:
                self._dirty.add(change.key)
                self._wake.set()

    async def endpoint_added(self, namespace: str, pod: str, endpoint: dict) -> bool:
        """Publishes a local pod and returns once the ruleset that knows it is in force."""
        k = key("endpoints", self.node, namespace, pod)
        await self.ds.put(k, endpoint)
        self._dirty.add(k)
        return await self.apply()

    async def endpoint_removed(self, namespace: str, pod: str) -> bool:
        k = key("endpoints", self.node, namespace, pod)
        await self.ds.delete(k)
        self._dirty.add(k)
        return await self.apply()
