"""The datastore: the cluster state (nodes, blocks, claims, endpoints, namespaces, policies, liveness)
behind one interface, kept in a shared directory (`files`) or an MQTT broker (`mqtt`). See docs/datastore.md."""
from __future__ import annotations

from config.datastore.base import Change, Datastore
from config.datastore.errors import DatastoreError, InvalidKey
from config.datastore.files import FilesDatastore
from config.datastore.keys import KINDS, cidr_segment, key, owner, parse_cidr_segment, parse_key
from config.datastore.mqtt import MqttDatastore
from config.datastore.settings import DatastoreSettings, MqttSettings, TlsSettings

__all__ = [
    "Change", "Datastore", "DatastoreError", "DatastoreSettings", "FilesDatastore", "InvalidKey", "KINDS",
    "MqttDatastore", "MqttSettings", "TlsSettings", "cidr_segment", "key", "open_datastore", "owner",
    "parse_cidr_segment", "parse_key",
]


def open_datastore(settings: DatastoreSettings, node: str, observer: bool = False) -> Datastore:
    """The datastore client of `node` (not started: call start()). An observer (a tool) has no liveness:
    no status/<node>, no lease, no Last Will; give it a node name (MQTT client id) of its own."""
    if settings.type == "files":
        return FilesDatastore(settings.path, node, settings.lease_ttl, observer)
    return MqttDatastore(settings.mqtt, node, observer)
