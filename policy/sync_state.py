"""The datastore's policy entries as a ruleset, kept up to date one changed entry at a time. Pure: no I/O.

`SyncState.update(changes)` takes the entries that changed since the last call (key -> value, None: deleted) and
returns the ruleset that should now be enforced. The work done is proportional to what changed: an endpoint that
joins or leaves goes through `Binding.change`; a changed policy is compiled alone (`compile_policies(previous=)`
reuses every other one) and the program bound again; namespace labels rebind, and so do host endpoints
(hostendpoints/<name> whose `node` is this node; another node's are not this node's concern). The first call,
and any call after an unexpected error (`reset()`), starts from scratch.

Every entry is validated on its own; an entry that turns invalid keeps its last valid form in force (a broken
policy must not open what it closed), one that never was valid is left out; both are reported, per key, and the
other entries go on being applied. A policy whose content names another identity than its key is invalid.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
import re
from typing import Callable, Mapping

from pydantic import BaseModel, ValidationError

from bgpd.ipam.ownership import EndpointGate
from config.datastore.keys import KINDS, parse_key
from config.load import validation_errors
from policy.compiler import gc_paused, needs_ipv6
from policy.ir import Ruleset
from policy.load import parse_document
from policy.model import (AnyPolicy, Endpoint, Endpoints, GlobalNetworkPolicy, HostEndpoint, Namespace, claims,
                          policy_id)
from policy.program_change import LiveBinding, LiveProgram
from policy.resolve import Resolution, resolve

WATCHED = ("policies", "globalpolicies", "namespaces", "endpoints", "hostendpoints")
Model = AnyPolicy | Namespace | Endpoint | HostEndpoint
_NOT_POLICIES = (Endpoint, Namespace, HostEndpoint)
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # policy.model.InterfaceName


def _digest(node: str, namespace: str, pod: str) -> str:
    return hashlib.sha1(f"{node}/{namespace}/{pod}".encode()).hexdigest()


def remote_interface(node: str, namespace: str, pod: str) -> str:
    """A stand-in interface name for another node's pod: it only feeds selectors here, no packet uses it (the
    pod gets no endpoint chain or dispatch entry here: SyncState.enforced).

    (Local pods' host interfaces are `tt` + hash, so the two never collide.)
    """
    return "r" + _digest(node, namespace, pod)[:14]


def remote_name(node: str, namespace: str, pod: str) -> str:
    """Another node's pod's name in the ruleset's endpoints: pods are named per node (two nodes may each run a
    default/web), while the compiler knows an endpoint by namespace/name. The name feeds no selector."""
    return "r" + _digest(node, namespace, pod)[:24]


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
    if kind == "hostendpoints":  # as bgpd/cli/resources.py writes it: {node, labels, interface, ips, ports}
        return HostEndpoint.model_validate({"name": seg["name"], **{f: v[f] for f in v if f != "node"}})
    ep = {**v, "namespace": seg["namespace"], "name": seg["pod"]}
    if seg["node"] != local:
        ep["interface"] = remote_interface(seg["node"], seg["namespace"], seg["pod"])
        ep["name"] = remote_name(seg["node"], seg["namespace"], seg["pod"])
    return Endpoint.model_validate(ep)


_FIELD_SETS: dict[frozenset[str], set[str]] = {}  # one set object per distinct set of fields given


def _share(value: object) -> None:
    """Lets a parsed model share what its like repeat: pydantic gives every model instance its own set of the
    fields it was given (about 150,000 models, a third of the daemon's memory, at 10,000 policies: -30 MiB) and
    every string its own copy. The models are frozen, so nothing writes to a shared set."""
    if isinstance(value, BaseModel):
        given = value.__pydantic_fields_set__
        object.__setattr__(value, "__pydantic_fields_set__", _FIELD_SETS.setdefault(frozenset(given), given))
        fields = value.__dict__
        for name, v in fields.items():
            if isinstance(v, str):
                fields[name] = sys.intern(v)
            else:
                _share(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                value[i] = sys.intern(v)
            else:
                _share(v)
    elif isinstance(value, dict):
        for v in value.values():
            _share(v)


def entry_errors(k: str, v: object, local: str) -> tuple[Model | None, list[str]]:
    """(the model, []) or (None, the reasons it is not valid). Never raises: no content may stop the caller."""
    try:
        model = parse_entry(k, v, local)
        _share(model)
        return model, []
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
    problems: list[str] = field(default_factory=list)  # one line per problem of every invalid entry
    ignored: dict[str, str] = field(default_factory=dict)  # valid endpoint entries left out -> why


class SyncState:
    """`prefer(node)`: whether a node's endpoints win address conflicts (is alive); `local_interface(ns, pod)`: the
    host interface of a local pod, isolated when its entry cannot be compiled."""

    def __init__(self, node: str, prefer: Callable[[str], bool] = lambda node: True,
                 local_interface: Callable[[str, str], str] | None = None):
        self.node, self.prefer, self.local_interface = node, prefer, local_interface
        self._local_prefix = f"endpoints/{node}/"
        self.reset()

    def reset(self) -> None:
        """Forgets everything: the next update must be given every entry, and compiles from scratch."""
        self.raw: dict[str, object] = {}
        self.good: dict[str, Model] = {}  # every key's last valid form
        self.endpoints: dict[str, Endpoint] = {}  # the endpoints among them
        self.namespaces: dict[str, Namespace] = {}  # the namespaces among them
        self.hosts: dict[str, HostEndpoint] = {}  # the host endpoints among them (this node's only)
        self.local: dict[str, dict[str, str]] = {}  # this node's endpoint keys -> their segments
        self.errors: dict[str, list[str]] = {}
        self.gate = EndpointGate(self.node)
        self.resolution: Resolution | None = None
        self._claims: dict[str, list[str]] | None = None  # accepted endpoint key -> its claims
        self._held: dict[str, str] | None = None  # claim -> the accepted endpoint key that holds it
        self.live: LiveProgram | None = None
        self.binding: LiveBinding | None = None

    def refusal(self, k: str) -> str | None:
        """Why a local endpoint entry is not enforced as written (None: it is)."""
        if k in self.errors:
            return "; ".join(self.errors[k])
        if (why := self.gate.ignored.current.get(k)) is not None:
            return f"{k}: {why}"
        if self.resolution is not None and (why := self.resolution.rejected.get(k)) is not None:
            return f"{k}: {why}"
        return None

    def enforced(self, ep: Endpoint | HostEndpoint) -> bool:
        """Whether an endpoint's packets pass this node (its own pods and host endpoints get endpoint chains;
        another node's pods only feed selectors)."""
        return isinstance(ep, HostEndpoint) or f"{self._local_prefix}{ep.namespace}/{ep.name}" in self.local

    def _policies(self) -> list[AnyPolicy]:
        return [m for m in self.good.values() if not isinstance(m, _NOT_POLICIES)]

    def _resolve(self) -> Resolution:
        eps = self.endpoints
        local = [eps[k].interface if k in eps else self._interface(k, seg) for k, seg in self.local.items()]
        preferred: dict[str, bool] = {}

        def prefer(k: str, ep: Endpoint) -> bool:
            node = k.split("/", 2)[1]  # endpoints/<node>/...
            if node not in preferred:
                preferred[node] = self.prefer(node)
            return preferred[node]

        return resolve(eps, self.namespaces.values(), prefer=prefer, local_interfaces=[i for i in local if i],
                       host_endpoints=list(self.hosts.values()))

    def _hold(self) -> None:
        """Remembers which entry holds which claim after a full resolve(), for _resolve_changes()."""
        accepted = {id(e) for e in self.resolution.endpoints.endpoints}  # type: ignore[union-attr]
        self._claims = {k: claims(e) for k, e in self.endpoints.items() if id(e) in accepted}
        self._held = {c: k for k, cs in self._claims.items() for c in cs}
        self._held.update((c, f"hostEndpoints/{h.name}")  # held by a host endpoint: a pod taking it needs resolve()
                          for h in self.resolution.endpoints.hostEndpoints for c in claims(h))  # type: ignore[union-attr]
        if len(self._claims) != len(accepted):
            self._claims = self._held = None  # (resolve() did not keep our objects: no shortcut)

    def _resolve_changes(self, keys: list[str]) -> tuple[list[Endpoint], list[str]] | None:
        """The resolution after these endpoint entries changed, when it does not take deciding the others again
        (each changed entry's claims are free, none was rejected or isolated, no new namespace), and what to
        change in the binding; None otherwise. About a millisecond where resolve() takes some 20 at 1,000
        endpoints."""
        res = self.resolution
        if res is None or self._held is None or self._claims is None:
            return None
        known = {n.name for n in res.endpoints.namespaces}
        if any(k in res.rejected or k not in self._claims and k not in self.endpoints or  # (maybe isolated)
               k in self.endpoints and self.endpoints[k].namespace not in known for k in keys) or \
                res.rejected and any(k in self._claims for k in keys):  # someone rejected may win now
            return None
        remove = []
        for k in keys:
            if (held := self._claims.pop(k, None)) is not None:
                remove.append(self._binding_key(k))
                for c in held:
                    del self._held[c]
        upsert = []
        for k in keys:
            if (ep := self.endpoints.get(k)) is None:
                continue
            mine = claims(ep)
            if len(set(mine)) != len(mine) or any(c in self._held for c in mine):
                return None  # a conflict: resolve() decides
            self._claims[k] = mine
            self._held.update((c, k) for c in mine)
            upsert.append(ep)
        endpoints = [self.endpoints[k] for k in self._claims]
        local = {self.endpoints[k].interface for k in keys if k in self.local and k in self.endpoints}
        self.resolution = Resolution(
            Endpoints.model_construct(namespaces=res.endpoints.namespaces, endpoints=endpoints,
                                      hostEndpoints=res.endpoints.hostEndpoints),
            res.rejected, res.isolated - local)
        return upsert, remove

    def _binding_key(self, k: str) -> str:
        """An endpoint entry's key in the Binding: <namespace>/<name as parse_entry gives it>."""
        seg = _segments(k)[1]
        name = seg["pod"] if seg["node"] == self.node else remote_name(seg["node"], seg["namespace"], seg["pod"])
        return f"{seg['namespace']}/{name}"

    def _interface(self, k: str, seg: dict[str, str]) -> str | None:
        """The host interface of a local pod whose entry never was valid, to isolate it."""
        given = self.raw[k].get("interface") if isinstance(self.raw[k], dict) else None  # type: ignore[union-attr]
        if isinstance(given, str) and _INTERFACE.fullmatch(given):
            return given
        return self.local_interface(seg["namespace"], seg["pod"]) if self.local_interface else None

    def update(self, changes: Mapping[str, object | None], endpoints: Mapping[str, dict] | None = None,
               claims: Mapping[str, dict] | None = None, recheck: bool = False) -> Outcome:
        """The ruleset after these entries changed. With `endpoints` and `claims` (every current endpoints/ and
        claims/ entry: give them whenever endpoints, claims or a node's liveness changed), which endpoints their
        node may publish is decided again (bgpd.ipam.ownership); with `recheck` (a node's liveness changed), which
        endpoints win conflicts, for every endpoint. ValueError (e.g. CompileError) if it cannot be
        compiled: then call reset() and update with every entry again."""
        if endpoints is not None:
            changes = self.gate.filter(changes, endpoints, claims or {}, self.prefer)
        changed: dict[str, tuple[Model | None, Model | None]] = {}  # key -> (old, new) valid form
        touched = []  # the keys whose value changed (an echo of what we saw already is not a change)
        for k, v in changes.items():
            if k.startswith("hostendpoints/") and isinstance(v, dict) and v.get("node") != self.node:
                v = None  # another node's interface
            if v is None:
                if k not in self.raw:
                    continue
                touched.append(k)
                self.raw.pop(k, None)
                self.local.pop(k, None)
                self.errors.pop(k, None)
                self.endpoints.pop(k, None)
                self.namespaces.pop(k, None)
                self.hosts.pop(k, None)
                if (old := self.good.pop(k, None)) is not None:
                    changed[k] = (old, None)
                continue
            if k in self.raw and self.raw[k] == v:
                continue
            touched.append(k)
            self.raw[k] = v
            if k.startswith(self._local_prefix):
                self.local[k] = _segments(k)[1]
            model, errors = entry_errors(k, v, self.node)
            if errors:
                self.errors[k] = errors
                continue
            self.errors.pop(k, None)
            old = self.good.get(k)
            if old != model:
                self.good[k] = model  # type: ignore[assignment]
                if isinstance(model, Endpoint):
                    self.endpoints[k] = model
                elif isinstance(model, Namespace):
                    self.namespaces[k] = model
                elif isinstance(model, HostEndpoint):
                    self.hosts[k] = model
                changed[k] = (old, model)
        kinds = {parse_key(k)[0] for k in touched}
        with gc_paused():
            self._recompile(changed, kinds, recheck, [k for k in touched if k.startswith("endpoints/")])
        assert self.binding is not None and self.live is not None and self.resolution is not None
        return Outcome(self.binding.ruleset, len(self.live.program.compiled), len(self.binding.by_key),
                       [line for k in sorted(self.errors) for line in self.errors[k]], self.resolution.rejected)

    def _recompile(self, changed: dict[str, tuple[Model | None, Model | None]], kinds: set[str],
                   recheck: bool, endpoint_keys: list[str]) -> None:
        delta = None  # (upsert, remove) for Binding.change, when only these endpoints changed
        if self.resolution is None or recheck or kinds & {"namespaces", "hostendpoints"} or \
                "endpoints" in kinds and (delta := self._resolve_changes(endpoint_keys)) is None:
            self.resolution = self._resolve()
            self._hold()
        endpoints = self.resolution.endpoints
        new_policies = [new for _, new in changed.values() if new is not None and not isinstance(new, _NOT_POLICIES)]
        if self.live is None or self.binding is None or not self.live.program.ipv6 and needs_ipv6(new_policies, endpoints):
            policies = self._policies()
            self.live = LiveProgram(policies, needs_ipv6(policies, endpoints), self.live)
            self.binding = LiveBinding(self.live, endpoints, isolated=self.resolution.isolated,
                                       enforced=self.enforced)
            return
        if kinds & {"policies", "globalpolicies"}:
            removed, added = self.live.change(new_policies, [
                policy_id(old) for old, _ in changed.values() if old is not None and not isinstance(old, _NOT_POLICIES)])
            self.binding.change_program(removed, added)
        if delta is not None:
            self.binding.change(*delta)
            self.binding.endpoints = endpoints
        elif self.binding.endpoints is not endpoints:
            self.binding.update(endpoints)
        if self.binding.isolated != self.resolution.isolated:
            self.binding.isolate(self.resolution.isolated)
