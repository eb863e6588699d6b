"""The node's ruleset follows the datastore: policies, namespaces and endpoints in, nftables/iptables out.

Every change recompiles (the compiler is pure and fast) and applies through the policy applier's
incremental path. Input that does not validate changes nothing: the last good ruleset stays in force
(never fail open), the error is logged once per distinct problem and counted.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Mapping

from pydantic import ValidationError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from config.datastore import Datastore, key, parse_key
from config.load import validation_errors
from policy.applier import Backend, PolicyApplier
from policy.binding import compile_ruleset
from policy.kernel import ApplyError
from policy.load import parse_document
from policy.metrics import RuleCounterCollector
from policy.model import AnyPolicy, Endpoint, Endpoints, Namespace

log = logging.getLogger("tortie.policy")
WATCHED = ("policies", "globalpolicies", "namespaces", "endpoints")


def remote_interface(node: str, namespace: str, pod: str) -> str:
    """A stand-in interface name for another node's pod: it only feeds selectors here, no packet uses it.

    (Local pods' host interfaces are `tt` + hash, so the two never collide. Chains for remote pods are
    dead weight; rendering only local ones is a compiler change left for later.)
    """
    return "r" + hashlib.sha1(f"{node}/{namespace}/{pod}".encode()).hexdigest()[:14]


def parse_entry(k: str, v: dict, local: str) -> AnyPolicy | Namespace | Endpoint:
    """One datastore entry as a model; ValidationError or ValueError if it is not valid."""
    kind, parts = parse_key(k)
    if kind in ("policies", "globalpolicies"):
        return parse_document(v)
    if kind == "namespaces":
        return Namespace.model_validate({"name": parts[0], "labels": v.get("labels", {})})
    node, ns, pod = parts
    ep = {**v, "namespace": ns, "name": pod}
    if node != local:
        ep["interface"] = remote_interface(node, ns, pod)
    return Endpoint.model_validate(ep)


class LastGood:
    """Each entry as last seen valid. An entry that turns invalid keeps its last valid form in force (a broken
    policy must not open what it closed), and one that never was valid is left out; either way the other
    entries go on being applied. Every problem is reported."""

    def __init__(self) -> None:
        self.good: dict[str, AnyPolicy | Namespace | Endpoint] = {}
        self._seen: dict[str, dict] = {}  # the raw value last parsed for each key: unchanged ones are not parsed again
        self._errors: dict[str, list[str]] = {}

    def resolve(self, items: Mapping[str, dict], local: str) -> tuple[list[AnyPolicy], Endpoints, list[str]]:
        for k in [k for k in self._seen if k not in items]:
            self.good.pop(k, None)
            self._errors.pop(k, None)
            del self._seen[k]
        for k, v in items.items():
            if self._seen.get(k) == v:
                continue
            self._seen[k] = v
            self._errors.pop(k, None)
            try:
                self.good[k] = parse_entry(k, v, local)
            except ValidationError as e:
                self._errors[k] = validation_errors(k, e)
            except ValueError as e:
                self._errors[k] = [f"{k}: {e}"]
        errors = [line for k in sorted(self._errors) for line in self._errors[k]]
        entries = self.good.values()
        policies = [e for e in entries if not isinstance(e, (Namespace, Endpoint))]
        endpoints = [e for e in entries if isinstance(e, Endpoint)]
        namespaces = {e.name: e for e in entries if isinstance(e, Namespace)}
        for ep in endpoints:  # a namespace nobody described yet still exists, with its name label
            namespaces.setdefault(ep.namespace, Namespace(name=ep.namespace, labels={}))
        # the cross-entry checks (an address or interface used twice) need the whole set: ValidationError
        return policies, Endpoints(namespaces=list(namespaces.values()), endpoints=endpoints), errors


class PolicySync:
    def __init__(self, ds: Datastore, node: str, backend: Backend, state_dir: Path, registry: CollectorRegistry):
        self.ds, self.node = ds, node
        self.applier = PolicyApplier(backend, state_dir=state_dir)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_error = ""
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
        self.last_good = LastGood()
        registry.register(RuleCounterCollector(self.applier.counters))

    async def apply(self) -> bool:
        """Compiles the datastore's current state and makes it the enforced ruleset; False if it could not."""
        async with self._lock:
            items = {k: v for kind in WATCHED for k, v in self.ds.items(kind).items()}
            start = time.monotonic()
            try:
                policies, endpoints, problems = self.last_good.resolve(items, self.node)
                ruleset = compile_ruleset(policies, endpoints)
                how = await asyncio.to_thread(self.applier.apply, ruleset)
            except ValidationError as e:
                return self._failed("; ".join(validation_errors("endpoints", e)))
            except (ValueError, ApplyError) as e:
                return self._failed(str(e))
            if problems:
                self.invalid.inc()
                self._report("invalid entries left as they were (last valid form kept): " + "; ".join(problems))
            else:
                self._last_error = ""
            self.duration.observe(time.monotonic() - start)
            self.policies.set(len(policies))
            self.rules.set(sum(len(c.rules) for c in ruleset.policy_chains.values()))
            self.sets.set(len(ruleset.sets))
            self.endpoints.set(len(endpoints.endpoints))
            self.applied.set()
            if how != "unchanged":
                log.info("policy applied how=%s policies=%d endpoints=%d", how, len(policies), len(endpoints.endpoints))
            return True

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
                await asyncio.sleep(0.02)  # one apply for a burst of changes
                self._wake.clear()
                await self.apply()
        finally:
            watcher.cancel()
            await feed.aclose()

    async def _watch(self, feed) -> None:
        async for change in feed:
            if change.key.split("/", 1)[0] in WATCHED:
                self._wake.set()

    async def endpoint_added(self, namespace: str, pod: str, endpoint: dict) -> bool:
        """Publishes a local pod and returns once the ruleset that knows it is in force."""
        await self.ds.put(key("endpoints", self.node, namespace, pod), endpoint)
        return await self.apply()

    async def endpoint_removed(self, namespace: str, pod: str) -> bool:
        await self.ds.delete(key("endpoints", self.node, namespace, pod))
        return await self.apply()
