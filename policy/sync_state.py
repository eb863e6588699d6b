"""The datastore's policy entries as a ruleset, kept up to date one changed entry at a time. Pure: no I/O.

`SyncState.update(changes)` takes the entries that changed since the last call (key -> value, None: deleted) and
returns the ruleset that should now be enforced. The work done is proportional to what changed: an endpoint that
joins or leaves goes through `Binding.change`; a changed policy is compiled alone (`compile_policies(previous=)`
reuses every other one) and the program bound again; namespace labels rebind. The first call, and any call after an
unexpected error (`reset()`), starts from scratch.

Every entry is validated on its own; an entry that turns invalid keeps its last valid form in force (a broken
policy must not open what it closed), one that never was valid is left out; both are reported, per key, and the
other entries go on being applied. A policy whose content names another identity than its key is invalid.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from pydantic import ValidationError

from config.datastore.keys import KINDS, parse_key
from config.load import validation_errors
from policy.compiler import gc_paused, needs_ipv6
from policy.ir import Ruleset
from policy.load import parse_document
from policy.model import AnyPolicy, Endpoint, Endpoints, GlobalNetworkPolicy, Namespace, policy_id
from policy.program_change import LiveBinding, LiveProgram

WATCHED = ("policies", "globalpolicies", "namespaces", "endpoints")
Model = AnyPolicy | Namespace | Endpoint


def remote_interface(node: str, namespace: str, pod: str) -> str:
    """A stand-in interface name for another node's pod: it only feeds selectors here, no packet uses it.

    (Local pods' host interfaces are `tt` + hash, so the two never collide. Chains for remote pods are
    dead weight; rendering only local ones is a compiler change left for later.)
    """
    return "r" + hashlib.sha1(f"{node}/{namespace}/{pod}".encode()).hexdigest()[:14]


def _segments(k: str) -> tuple[str, dict[str, str]]:
    kind, parts = parse_key(k)
    return kind, dict(zip(KINDS[kind], parts))


def parse_entry(k: str, v: object, local: str) -> Model:
    """One datastore entry as a model; ValidationError or ValueError if it is not valid."""
    kind, seg = _segments(k)
    if not isinstance(v, dict):
        raise ValueError(f"expected a JSON object, got {type(v).__name__}")
    if kind in ("policies", "globalpolicies"):
        p = parse_document(v)
        if kind == "globalpolicies" and not isinstance(p, GlobalNetworkPolicy):
            raise ValueError(f"kind: a {p.kind} is not a GlobalNetworkPolicy")
        if kind == "policies" and isinstance(p, GlobalNetworkPolicy):
            raise ValueError("kind: a GlobalNetworkPolicy belongs under globalpolicies/")
        ns = getattr(p.metadata, "namespace", None)
        if (p.metadata.name, ns) != (seg["name"], seg.get("namespace")):
            raise ValueError(f"metadata: names {ns + '/' if ns else ''}{p.metadata.name}, not its key")
        return p
    if kind == "namespaces":
        return Namespace.model_validate({"name": seg["namespace"], "labels": v.get("labels", {})})
    ep = {**v, "namespace": seg["namespace"], "name": seg["pod"]}
    if seg["node"] != local:
        ep["interface"] = remote_interface(seg["node"], seg["namespace"], seg["pod"])
    return Endpoint.model_validate(ep)


def entry_errors(k: str, v: object, local: str) -> tuple[Model | None, list[str]]:
    """(the model, []) or (None, the reasons it is not valid). Never raises: no content may stop the caller."""
    try:
        return parse_entry(k, v, local), []
    except ValidationError as e:
        return None, validation_errors(k, e)
    except RecursionError:
        return None, [f"{k}: nested too deeply"]
    except Exception as e:  # noqa: BLE001  (any other refusal of the content: TypeError on odd shapes, ...)
        return None, [f"{k}: {e}"]


@dataclass
class Outcome:
    ruleset: Ruleset
    policies: int
    endpoints: int
    problems: list[str] = field(default_factory=list)  # one line per problem, every invalid entry


class SyncState:
    def __init__(self, node: str):
        self.node = node
        self.reset()

    def reset(self) -> None:
        """Forgets everything: the next update must be given every entry, and compiles from scratch."""
        self.raw: dict[str, object] = {}
        self.good: dict[str, Model] = {}
        self.errors: dict[str, list[str]] = {}
        self.live: LiveProgram | None = None
        self.binding: LiveBinding | None = None

    def problems(self) -> list[str]:
        return [line for k in sorted(self.errors) for line in self.errors[k]]

    def _policies(self) -> list[AnyPolicy]:
        return [m for m in self.good.values() if not isinstance(m, (Namespace, Endpoint))]

    def _endpoints(self) -> Endpoints:
        entries = self.good.values()
        endpoints = [e for e in entries if isinstance(e, Endpoint)]
        namespaces = {e.name: e for e in entries if isinstance(e, Namespace)}
        for ep in endpoints:  # a namespace nobody described yet still exists, with its name label
            namespaces.setdefault(ep.namespace, Namespace(name=ep.namespace, labels={}))
        return Endpoints.model_construct(namespaces=list(namespaces.values()), endpoints=endpoints, hostEndpoints=[])

    def update(self, changes: Mapping[str, object | None]) -> Outcome:
        """The ruleset after these entries changed. ValueError (e.g. CompileError) if it cannot be compiled:
        then call reset() and update with every entry again."""
        changed: dict[str, tuple[Model | None, Model | None]] = {}  # key -> (old, new) valid form
        for k, v in changes.items():
            if v is None:
                self.raw.pop(k, None)
                self.errors.pop(k, None)
                if (old := self.good.pop(k, None)) is not None:
                    changed[k] = (old, None)
                continue
            if k in self.raw and self.raw[k] == v:
                continue
            self.raw[k] = v
            model, errors = entry_errors(k, v, self.node)
            if errors:
                self.errors[k] = errors
                continue
            self.errors.pop(k, None)
            old = self.good.get(k)
            if old != model:
                self.good[k] = model  # type: ignore[assignment]
                changed[k] = (old, model)
        kinds = {parse_key(k)[0] for k in changed}
        with gc_paused():
            self._recompile(changed, kinds)
        assert self.binding is not None
        rs = self.binding.ruleset
        return Outcome(rs, len(self.live.program.compiled) if self.live else 0, len(self.binding.by_key),
                       self.problems())

    def _recompile(self, changed: dict[str, tuple[Model | None, Model | None]], kinds: set[str]) -> None:
        new_endpoints = [new for _, new in changed.values() if isinstance(new, Endpoint)]
        new_policies = [new for _, new in changed.values() if new is not None and not isinstance(new, (Endpoint, Namespace))]
        if self.live is None or self.binding is None or \
                not self.live.program.ipv6 and needs_ipv6(new_policies, Endpoints.model_construct(
                    namespaces=[], endpoints=new_endpoints, hostEndpoints=[])):
            policies, endpoints = self._policies(), self._endpoints()
            self.live = LiveProgram(policies, needs_ipv6(policies, endpoints), self.live)
            self.binding = LiveBinding(self.live, endpoints)
            return
        if kinds & {"policies", "globalpolicies"}:
            removed, added = self.live.change(new_policies, [
                policy_id(old) for old, _ in changed.values() if old is not None and not isinstance(old, (Endpoint, Namespace))])
            self.binding.change_program(removed, added)
        if "namespaces" in kinds:
            self.binding.update(self._endpoints())
        elif kinds & {"endpoints"}:
            self.binding.change(new_endpoints, [f"{old.namespace}/{old.name}" for old, new in changed.values()
                                                if isinstance(old, Endpoint) and new is None])
