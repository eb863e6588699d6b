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
from policy.model import Endpoints

log = logging.getLogger("tortie.policy")
WATCHED = ("policies", "globalpolicies", "namespaces", "endpoints")


def remote_interface(node: str, namespace: str, pod: str) -> str:
    """A stand-in interface name for another node's pod: it only feeds selectors here, no packet uses it.

    (Local pods' host interfaces are `tt` + hash, so the two never collide. Chains for remote pods are
    dead weight; rendering only local ones is a compiler change left for later.)
    """
    return "r" + hashlib.sha1(f"{node}/{namespace}/{pod}".encode()).hexdigest()[:14]


def desired_input(items: Mapping[str, dict], local: str) -> tuple[list, Endpoints]:
    """Policies and endpoints from datastore entries (`local`: this node); ValueError listing every problem."""
    policies, errors = [], []
    namespaces: dict[str, dict] = {}
    endpoints = []
    for k, v in sorted(items.items()):
        kind, parts = parse_key(k)
        try:
            if kind in ("policies", "globalpolicies"):
                policies.append(parse_document(v))
            elif kind == "namespaces":
                namespaces[parts[0]] = {"name": parts[0], "labels": v.get("labels", {})}
            elif kind == "endpoints":
                node, ns, pod = parts
                ep = {**v, "namespace": ns, "name": pod}
                if node != local:
                    ep["interface"] = remote_interface(node, ns, pod)
                endpoints.append(ep)
        except ValidationError as e:
            errors.extend(validation_errors(k, e))
        except ValueError as e:
            errors.append(f"{k}: {e}")
    for ep in endpoints:  # a namespace nobody described yet still exists, with its name label
        namespaces.setdefault(ep["namespace"], {"name": ep["namespace"], "labels": {}})
    try:
        eps = Endpoints.model_validate({"namespaces": list(namespaces.values()), "endpoints": endpoints})
    except ValidationError as e:
        errors.extend(validation_errors("endpoints", e))
        eps = None
    if errors:
        raise ValueError("\n".join(errors))
    return policies, eps


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
        registry.register(RuleCounterCollector(self.applier.counters))

    async def apply(self) -> bool:
        """Compiles the datastore's current state and makes it the enforced ruleset; False if it could not."""
        async with self._lock:
            items = {k: v for kind in WATCHED for k, v in self.ds.items(kind).items()}
            start = time.monotonic()
            try:
                policies, endpoints = desired_input(items, self.node)
                ruleset = compile_ruleset(policies, endpoints)
                how = await asyncio.to_thread(self.applier.apply, ruleset)
            except (ValueError, ApplyError) as e:
                self.failures.inc()
                if str(e) != self._last_error:
                    log.error("policy not applied, the previous ruleset stays in force: %s", e)
                    self._last_error = str(e)
                return False
            self._last_error = ""
            self.duration.observe(time.monotonic() - start)
            self.policies.set(len(policies))
            self.endpoints.set(len(endpoints.endpoints))
            self.applied.set()
            if how != "unchanged":
                log.info("policy applied how=%s policies=%d endpoints=%d", how, len(policies), len(endpoints.endpoints))
            return True

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
