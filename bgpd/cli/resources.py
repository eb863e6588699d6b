"""Cluster resources as `tortie apply/get/delete` read and show them (pure): YAML documents <-> datastore entries.

| document (apiVersion kind)                          | datastore key                  | value                  |
| networking.k8s.io/v1 or tortie.io/v1 NetworkPolicy  | policies/<namespace>/<name>    | the document           |
| tortie.io/v1 GlobalNetworkPolicy                    | globalpolicies/<name>          | the document           |
| tortie.io/v1 Namespace                              | namespaces/<name>              | {labels}               |
| tortie.io/v1 HostEndpoint                           | hostendpoints/<name>           | {node, labels, spec..} |
| tortie.io/v1 IPPool                                 | ippools/<name>                 | a config.node.IPPool   |
| tortie.io/v1 BGPPeer                                | bgppeers/<name>                | a config.node.Peer     |

Every document is checked by the model the readers use (policy/model.py, config/node.py) before anything is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.datastore import DatastoreError, key, parse_key
from config.datastore.base import checked
from config.datastore.keys import check_segment
from config.load import ConfigError, shorten, validation_errors, yaml_documents
from config.node import IPPool, Peer
from policy.load import parse_document
from policy.model import GlobalNetworkPolicy, HostEndpoint, Labels, Namespace

API = "tortie.io/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Meta(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,253}$")
    labels: Labels = Field(default_factory=dict)


class _HostEndpointSpec(_Strict):
    node: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="the node whose interface it is")
    interface: str
    ips: list[str] = Field(default_factory=list)
    ports: list[dict] = Field(default_factory=list)


class _BGPPeerScope(_Strict):
    node: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="the one node that peers; "
                                                                                  "none: every node")


class _Document(_Strict):
    apiVersion: str
    kind: str
    metadata: _Meta
    spec: dict = Field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    name: str  # as in documents
    prefix: str  # the datastore kind
    names: tuple[str, ...]  # what `tortie get` accepts, lower case
    columns: tuple[str, ...] = ()  # `-o wide` columns (document fields, dotted)


KINDS = [
    Kind("NetworkPolicy", "policies", ("networkpolicy", "networkpolicies", "policy", "policies", "netpol", "np"),
         ("apiVersion", "spec.order", "spec.selector")),
    Kind("GlobalNetworkPolicy", "globalpolicies", ("globalnetworkpolicy", "globalnetworkpolicies", "gnp"),
         ("spec.order", "spec.selector")),
    Kind("Namespace", "namespaces", ("namespace", "namespaces", "ns"), ("metadata.labels",)),
    Kind("HostEndpoint", "hostendpoints", ("hostendpoint", "hostendpoints", "hep"), ("spec.node", "spec.interface")),
    Kind("IPPool", "ippools", ("ippool", "ippools", "pool", "pools"), ("spec.cidr", "spec.blockSize")),
    Kind("BGPPeer", "bgppeers", ("bgppeer", "bgppeers", "peer", "peers"), ("spec.address", "spec.asn")),
]
BY_NAME = {n: k for k in KINDS for n in k.names}
BY_PREFIX = {k.prefix: k for k in KINDS}


def kind_of(name: str) -> Kind:
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise ConfigError([f"unknown resource kind {shorten(repr(name))}; one of: "
                           f"{', '.join(k.name for k in KINDS)}"]) from None


def entry(data: Any) -> tuple[str, dict]:
    """One document -> (datastore key, value); ValueError or ValidationError naming the field if it is not valid."""
    if not isinstance(data, dict):
        raise ValueError(f"(top level): expected a mapping, got {type(data).__name__}")
    if data.get("kind") in ("NetworkPolicy", "GlobalNetworkPolicy"):
        policy = parse_document(data)
        if isinstance(policy, GlobalNetworkPolicy):
            return key("globalpolicies", policy.metadata.name), data
        return key("policies", policy.metadata.namespace, policy.metadata.name), data
    if data.get("apiVersion") != API or data.get("kind") not in {k.name for k in KINDS}:
        known = ", ".join(k.name for k in KINDS)
        raise ValueError(f"apiVersion/kind: unknown {shorten(repr(data.get('apiVersion')))} "
                         f"{shorten(repr(data.get('kind')))}; known: {known} ({API}; NetworkPolicy also networking.k8s.io/v1)")
    doc = _Document.model_validate(data)
    name, spec = doc.metadata.name, doc.spec
    check_segment(name)
    if doc.kind == "Namespace":
        Namespace.model_validate({"name": name, "labels": doc.metadata.labels})
        if spec:
            raise ValueError("spec: a Namespace has none")
        return key("namespaces", name), {"labels": doc.metadata.labels}
    if doc.kind == "HostEndpoint":
        host = _HostEndpointSpec.model_validate(spec)
        HostEndpoint.model_validate({"name": name, "labels": doc.metadata.labels, "interface": host.interface,
                                     "ips": host.ips, "ports": host.ports})
        return key("hostendpoints", name), {"labels": doc.metadata.labels, **host.model_dump()}
    if doc.kind == "IPPool":
        pool = IPPool.model_validate({"cidr": spec.get("cidr"),  # blockSize: the family's default if absent
                                      **({"block_size": spec["blockSize"]} if "blockSize" in spec else {}),
                                      **{k: v for k, v in spec.items() if k not in ("cidr", "blockSize")}})
        return key("ippools", name), pool.model_dump(mode="json", exclude_unset=True)
    scope = _BGPPeerScope.model_validate({"node": spec.get("node")})  # as Calico's BGPPeer node: only that node
    peer = Peer.model_validate({"name": name, **{k: v for k, v in spec.items() if k != "node"}})
    scoped = {"node": scope.node} if scope.node is not None else {}
    return key("bgppeers", name), {**scoped, **json.loads(peer.model_dump_json(exclude_none=True))}


def document(key_: str, value: dict) -> dict:
    """A stored entry as the document `tortie get` shows (and `tortie apply` takes back)."""
    kind, parts = parse_key(key_)
    if kind in ("policies", "globalpolicies"):
        return value
    name = parts[-1]
    if kind == "namespaces":
        return {"apiVersion": API, "kind": "Namespace", "metadata": {"name": name, "labels": value.get("labels", {})}}
    labels = value.get("labels", {})
    if kind == "hostendpoints":
        spec = {k: v for k, v in value.items() if k != "labels"}
    elif kind == "ippools":
        spec = {"cidr": value.get("cidr"), "blockSize": value.get("block_size"),
                **{k: v for k, v in value.items() if k not in ("cidr", "block_size")}}
    else:
        spec = {k: v for k, v in value.items() if k != "name"}
    meta = {"name": name, **({"labels": labels} if labels else {})}
    return {"apiVersion": API, "kind": BY_PREFIX[kind].name, "metadata": meta, "spec": spec}


def load_entries(paths: Iterable[str | Path]) -> dict[str, dict]:
    """Every document of every file as datastore entries, all checked first: ConfigError listing every problem
    as `file: document N (line L): field: reason`, a resource given twice included."""
    entries: dict[str, dict] = {}
    seen: dict[str, str] = {}
    errors: list[str] = []
    for path in map(Path, paths):
        try:
            for number, line, data in yaml_documents(path):
                where = f"{path}: document {number} (line {line})"
                try:
                    k, value = entry(data)
                    checked(k, value)
                except ValidationError as e:
                    errors.extend(validation_errors(where, e))
                    continue
                except (ValueError, DatastoreError) as e:
                    errors.append(f"{where}: {e}")
                    continue
                if k in seen:
                    errors.append(f"{where}: metadata.name: {k} is already given at {seen[k]}")
                seen[k], entries[k] = where, value
        except ConfigError as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return entries


def field(doc: dict, dotted: str) -> str:
    """A document field for a table cell ('' if absent)."""
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
