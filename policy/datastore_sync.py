"""The node's ruleset follows the datastore: policies, namespaces and endpoints in, nftables/iptables out.

Only the entries that changed are parsed and compiled again (`policy.sync_state.SyncState`), and the applier
changes only what differs in the kernel. Compiling and applying run on one worker thread, never on the event loop
that also programs BGP routes: the loop only collects which keys changed.

Nothing in the datastore can stop this task: every entry is validated on its own and problems are reported per
entry (the others applied); endpoints their node may not publish (bgpd.ipam.ownership) and the losers of address
or interface conflicts (the live node's entry wins: policy.resolve) are ignored and reported; a local pod that cannot be
compiled is isolated (its traffic dropped) and its CNI ADD refused with the reason. A ruleset that cannot be
compiled or applied leaves the previous one in force (never fail open), the error is logged once per distinct
problem and counted, and the next change starts from scratch.

Drift: every CHECK_EVERY seconds the applier checks that the kernel still holds our ruleset and re-applies it in
full when it does not (`PolicyApplier.repair`); each repair is logged and counted. A check is one netlink round
trip while the kernel changed only by our own transactions (PolicyApplier); after a change by someone else it takes
a census (0.5-1 s of CPU at 10,000 policies), which also finds a rule replaced by another (chain fingerprints):
while applies follow each other, checks wait until they pause, CHECK_BUSY seconds at most.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bgpd.dataplane.pods import host_interface
from config.datastore import Datastore, key
from policy.applier import Backend, PolicyApplier
from policy.kernel import ApplyError
from policy.metrics import RepairCollector, RuleCounterCollector
from policy.sync_state import WATCHED, Outcome, SyncState

log = logging.getLogger("tortie.policy")
# The state file (for `tortie policy show`; 14 MB at 10,000 policies, and encoding it holds the GIL ~0.1 s, which
# the event loop feels) is written once applies pause this long, and at least this often while they go on:
SAVE_AFTER, SAVE_BUSY = 10.0, 60.0
CHECK_EVERY = 1.0  # seconds between drift checks of the kernel's ruleset, once applies pause that long
CHECK_BUSY = 5.0  # seconds between drift checks at the latest while applies go on
OWNERSHIP = ("claims", "status")  # a change here can decide again which endpoints count


class PolicySync:
    def __init__(self, ds: Datastore, node: str, backend: Backend, state_dir: Path, registry: CollectorRegistry):
        self.ds, self.node = ds, node
        self.applier = PolicyApplier(backend, state_dir=state_dir, persist=False)
        self.state = SyncState(node, prefer=lambda n: ds.alive(n) is True, local_interface=host_interface)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tortie-policy")  # owns state and applier
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="tortie-policy-check")  # drift checks, lock-free
        self._owned: dict[str, dict[str, dict]] = {"endpoints": {}, "claims": {}}  # mirrors: ds.items() scans all
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        self._recheck = False  # claims or liveness changed
        self._fresh = True  # the next apply reads every entry and replaces the kernel's ruleset in full
        self._wake = asyncio.Event()
        self._last_error = ""
        self.timing: dict[str, float] = {}  # the last apply's seconds (and thread CPU) compiling and in the kernel
        self._last_apply = 0.0  # when the kernel last changed by an apply of ours
        self._rules = 0  # rules in the applied ruleset
        self._last_values: dict[str, dict | None] = {}  # each key's value as the last apply was given it
        self._ignored: dict[str, str] = {}
        self._isolated: frozenset[str] = frozenset()
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
        registry.register(RepairCollector(lambda: self.applier.repairs))

    async def apply(self) -> bool:
        """Makes the datastore's current state the enforced ruleset; False if it could not be."""
        async with self._lock:
            if self._fresh:
                changes = {k: v for kind in WATCHED for k, v in self.ds.items(kind).items()}
                self._owned = {kind: self.ds.items(kind) for kind in self._owned}
            else:
                changes = {k: self.ds.get(k) for k in self._dirty}
            ownership = None
            if self._fresh or self._recheck or any(k.startswith("endpoints/") for k in self._dirty):
                ownership = dict(self._owned["endpoints"]), dict(self._owned["claims"])
            fresh, recheck, self._fresh, self._recheck = self._fresh, self._recheck, False, False
            self._dirty.clear()
            start = time.monotonic()
            try:
                outcome, how = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._compile_and_apply, changes, ownership, fresh, recheck)
            except (ValueError, ApplyError) as e:
                self._fresh = True
                return self._failed(str(e))
            except Exception as e:  # noqa: BLE001  (a bug must not leave the node unpoliced or stop the task)
                log.exception("policy apply failed unexpectedly")
                self._fresh = True
                return self._failed(repr(e))
            self._applied(outcome, how, time.monotonic() - start)
            self._last_values.update(changes)
            if how != "unchanged":
                self._last_apply = time.monotonic()
            return True

    def _compile_and_apply(self, changes: dict[str, dict | None], ownership: tuple[dict, dict] | None,
                           fresh: bool, recheck: bool) -> tuple[Outcome, str]:
        """On the worker thread."""
        if fresh:
            self.state.reset()
        before = self.state.binding.ruleset if self.state.binding else None
        start, cpu = time.perf_counter(), time.thread_time()
        gc.disable()
        try:
            outcome = self.state.update(changes, *(ownership or ()), recheck=recheck)
            if fresh:  # what was compiled lives on: no collection need walk its millions of objects, and the
                gc.freeze()  # first one after the compile would, holding the GIL for seconds
        finally:
            gc.enable()
        compiled, compiled_cpu = time.perf_counter(), time.thread_time()
        if outcome.ruleset is before:  # nothing changed (e.g. the echo of our own write): no need to compare it all
            return outcome, "unchanged"
        how = self.applier.apply(outcome.ruleset, full=fresh)
        self._rules = sum(len(c.rules) for c in outcome.ruleset.policy_chains.values())  # (here: 20,000 chains)
        self.timing = {"compile_s": compiled - start, "apply_s": time.perf_counter() - compiled,
                       "compile_cpu_s": compiled_cpu - cpu, "apply_cpu_s": time.thread_time() - compiled_cpu}
        return outcome, how

    def _applied(self, outcome: Outcome, how: str, seconds: float) -> None:
        if outcome.problems:
            self.invalid.inc()
            self._report("invalid entries left as they were (last valid form kept): " + "; ".join(outcome.problems))
        else:
            self._last_error = ""
        if outcome.ignored != self._ignored:
            for k in sorted(outcome.ignored.keys() - self._ignored.keys()):
                log.warning("ignoring endpoint %s: %s", k, outcome.ignored[k])
            self._ignored = outcome.ignored
        if outcome.ruleset.isolated != self._isolated:
            if outcome.ruleset.isolated:
                log.warning("isolated local pods (every packet dropped) interfaces=%s",
                            ",".join(sorted(outcome.ruleset.isolated)))
            self._isolated = outcome.ruleset.isolated
        rs = outcome.ruleset
        self.duration.observe(seconds)
        self.policies.set(outcome.policies)
        self.rules.set(self._rules)
        self.sets.set(len(rs.sets))
        self.endpoints.set(outcome.endpoints)
        self.applied.set()
        if how != "unchanged":
            log.info("policy applied how=%s policies=%d endpoints=%d seconds=%.3f compile=%.3f kernel=%.3f", how,
                     outcome.policies, outcome.endpoints, seconds, self.timing["compile_s"], self.timing["apply_s"])

    def settled(self, key_: str) -> bool:
        """True when the datastore's current value of this key has been through an apply (in force, or refused
        and reported), and no apply is pending."""
        return not self._dirty and not self._lock.locked() and not self._fresh and \
            self._last_values.get(key_) == self.ds.get(key_)

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
        upkeep = asyncio.create_task(self._upkeep())
        try:
            await self.apply()
            while True:
                await self._wake.wait()
                await asyncio.sleep(0.005)  # one apply for a burst of changes
                self._wake.clear()
                await self.apply()
        finally:
            watcher.cancel()
            upkeep.cancel()
            await feed.aclose()
            await asyncio.get_running_loop().run_in_executor(self._worker, self._save)
            self._worker.shutdown(wait=False)
            self._checker.shutdown(wait=False)

    def _mirror(self, k: str, kind: str) -> None:
        if kind in self._owned:
            if (value := self.ds.get(k)) is None:
                self._owned[kind].pop(k, None)
            else:
                self._owned[kind][k] = value

    async def _watch(self, feed) -> None:
        async for change in feed:
            kind = change.key.split("/", 1)[0]
            self._mirror(change.key, kind)
            if kind in WATCHED:
                self._dirty.add(change.key)
                self._wake.set()
            elif kind in OWNERSHIP and self.state.gate.concerns(change.key, change.value):
                self._recheck = True
                self._wake.set()

    async def _upkeep(self) -> None:
        """Saves the state file and checks for drift. Checks run on a thread of their own, so that applies do
        not wait for them; repairs on the worker, under the lock (repair() checks again)."""
        await self.applied.wait()
        loop = asyncio.get_running_loop()
        checked, saved = time.monotonic(), 0.0
        while True:
            await asyncio.sleep(CHECK_EVERY)
            now = time.monotonic()
            if self._last_apply > saved and (now - self._last_apply >= SAVE_AFTER or now - saved >= SAVE_BUSY):
                saved = now
                async with self._lock:
                    await loop.run_in_executor(self._worker, self._save)
            if now - self._last_apply < CHECK_EVERY and now - checked < CHECK_BUSY:
                continue
            checked = now
            try:
                if not await loop.run_in_executor(self._checker, self.applier.check):
                    continue
                async with self._lock:
                    problems = await loop.run_in_executor(self._worker, self.applier.repair)
            except Exception as e:  # noqa: BLE001  (tried again at the next check; the task must go on)
                self._failed(f"the ruleset was changed in the kernel and could not be restored: {e!r}")
                continue
            if problems:
                log.error("policy ruleset changed in the kernel by someone else, restored in full: %s",
                          "; ".join(problems))

    def _save(self) -> None:
        try:
            self.applier.save()
        except OSError as e:
            log.warning("policy state file not written: %s", e)

    async def endpoint_added(self, namespace: str, pod: str, endpoint: dict) -> str | None:
        """Publishes a local pod and returns once the ruleset that knows it is in force: None, or why the pod
        is not enforced as published (an invalid entry, an address or name another entry holds, a ruleset that
        could not be applied); then its traffic is dropped until the pod goes."""
        k = key("endpoints", self.node, namespace, pod)
        await self.ds.put(k, endpoint)
        self._mirror(k, "endpoints")
        self._dirty.add(k)
        if not await self.apply():
            return f"the policy could not be applied: {self._last_error}"
        return self.state.refusal(k)

    async def endpoint_removed(self, namespace: str, pod: str) -> bool:
        k = key("endpoints", self.node, namespace, pod)
        await self.ds.delete(k)
        self._mirror(k, "endpoints")
        self._dirty.add(k)
        return await self.apply()
