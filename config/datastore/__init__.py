"""The datastore: the cluster state (nodes, blocks, claims, endpoints, namespaces, policies, liveness)
behind one interface, kept in a shared directory (`files`), an MQTT broker (`mqtt`) or an etcd cluster
(`etcd`). See docs/datastore.md.

Importing this package costs only the settings models and key helpers (config.node needs them, and so
does every CLI call and tortie-cni run); the clients and their libraries (asyncio, watchfiles, aiomqtt,
grpc) load on first use of `Change`, `Datastore`, `EtcdDatastore`, `FilesDatastore`, `MqttDatastore` or
`open_datastore`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from config.datastore.errors import DatastoreError, InvalidKey
from config.datastore.keys import KINDS, cidr_segment, key, owner, parse_cidr_segment, parse_key
from config.datastore.settings import DatastoreSettings, EtcdSettings, MqttSettings, TlsSettings

if TYPE_CHECKING:
    from config.datastore.base import Change, Datastore
    from config.datastore.etcd import EtcdDatastore
    from config.datastore.files import FilesDatastore
    from config.datastore.mqtt import MqttDatastore

__all__ = [
    "Change", "Datastore", "DatastoreError", "DatastoreSettings", "EtcdDatastore", "EtcdSettings", "FilesDatastore",
    "InvalidKey", "KINDS", "MqttDatastore", "MqttSettings", "TlsSettings", "cidr_segment", "key", "open_datastore", "owner",
    "parse_cidr_segment", "parse_key",
]
_CLIENTS = {"Change": "base", "Datastore": "base", "EtcdDatastore": "etcd", "FilesDatastore": "files",
            "MqttDatastore": "mqtt"}


def __getattr__(name: str):
    if name in _CLIENTS:
        return getattr(importlib.import_module(f"config.datastore.{_CLIENTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_datastore(settings: DatastoreSettings, node: str, observer: bool = False) -> Datastore:
    """The datastore client of `node` (not started: call start()). An observer (a tool) has no liveness:
    no status/<node>, no lease, no Last Will; give it a node name (MQTT client id) of its own."""
    if settings.type == "files":
        from config.datastore.files import FilesDatastore
        return FilesDatastore(settings.path, node, settings.lease_ttl, observer)
    if settings.type == "etcd":
        from config.datastore.etcd import EtcdDatastore
        return EtcdDatastore(settings.etcd, node, observer)
    from config.datastore.mqtt import MqttDatastore
    return MqttDatastore(settings.mqtt, node, observer)
