"""Keys (pure), the shipped ACL against key ownership, and the settings models."""
from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.datastore import (
    KINDS, DatastoreSettings, InvalidKey, MqttSettings, cidr_segment, key, owner, parse_cidr_segment, parse_key,
)
from config.datastore.keys import SEGMENT, under
from config.load import validation_errors
from tests.datastore.broker import SHIPPED


def test_key_builds_and_validates():
    assert key("endpoints", "node1", "default", "web-1") == "endpoints/node1/default/web-1"
    assert key("blocks", cidr_segment("10.244.1.0/26")) == "blocks/10.244.1.0-26"
    assert parse_key("claims/10.244.1.0-26/node2") == ("claims", ("10.244.1.0-26", "node2"))
    for bad in ("claims/garbage/node2", "claims/10.244.1.1-26/node2", "blocks/10.244.1.0-99"):
        with pytest.raises(InvalidKey, match="invalid CIDR segment"):
            parse_key(bad)  # before: accepted, and every reader's claim parsing raised on it
    for bad, why in [("nodes", "nodes keys are nodes/<node>"), ("nodes/a/b", "nodes/<node>"),
                     ("pods/x", "unknown kind"), ("nodes/a b", "segment"), ("nodes/..", "segment"),
                     ("nodes/", "segment"), ("endpoints/n/+/x", "segment"), ("status/#", "segment")]:
        with pytest.raises(InvalidKey, match=re.escape(why)):
            parse_key(bad)


def test_owner():
    assert owner("nodes/node1") == owner("status/node1") == "node1"
    assert owner("claims/10.244.1.0-26/node2") == owner("endpoints/node2/default/x") == "node2"
    assert {owner(k) for k in ("blocks/10.0.0.0-26", "namespaces/a", "policies/a/b", "globalpolicies/g")} == {None}


def test_under():
    assert under("endpoints/node1/a/b", "endpoints/node1") and under("endpoints/node1/a/b", "endpoints/node1/")
    assert not under("endpoints/node10/a/b", "endpoints/node1")
    assert under("nodes/x", "") and under("nodes/x", "nodes/x")


@given(st.one_of(st.ip_addresses(v=4).map(lambda a: (a, 32)), st.ip_addresses(v=6).map(lambda a: (a, 128)))
       .flatmap(lambda t: st.integers(0, t[1]).map(lambda n: ipaddress.ip_network(f"{t[0]}/{n}", strict=False))))
def test_cidr_segment_round_trip(net):
    segment = cidr_segment(net)
    assert SEGMENT.fullmatch(segment)
    assert parse_cidr_segment(segment) == net


def test_cidr_segment_rejects():
    with pytest.raises(ValueError):
        cidr_segment("10.244.1.1/26")  # not a network address
    for bad in ("10.244.1.0", "10.244.1.0-33", "x-1"):
        with pytest.raises(InvalidKey):
            parse_cidr_segment(bad)


def mqtt_match(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


def shipped_acl(user: str) -> tuple[list[str], list[str]]:
    """The (read, write) topic patterns the shipped ACL gives a user (enough of mosquitto's rules for it)."""
    read, write, current = [], [], None
    for line in (SHIPPED / "acl").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            current = words[1]
        elif words[0] in ("topic", "pattern") and (words[0] == "pattern" or current == user):
            access, topic = words[1:] if len(words) == 3 else ("readwrite", words[1])
            topic = topic.replace("%u", user)
            read += [topic] if "read" in access else []
            write += [topic] if "write" in access else []
    return read, write


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_acl_lets_a_node_write_exactly_its_own_keys(kind):
    parts = {"node": "node1", "cidr": "10.244.1.0-26", "namespace": "default", "pod": "web", "name": "p"}
    k = key(kind, *(parts[name] for name in KINDS[kind]))
    other = k.replace("node1", "node2")
    read, write = shipped_acl("node1")
    assert any(mqtt_match(p, f"tortie/v1/{k}") for p in read)
    assert any(mqtt_match(p, f"tortie/v1/{k}") for p in write) == (owner(k) == "node1")
    assert not any(mqtt_match(p, f"tortie/v1/{other}") for p in write)
    assert any(mqtt_match(p, f"tortie/v1/{k}") for p in shipped_acl("admin")[1])
    assert any(mqtt_match(p, "tortie/v1/sync/node1/abc") for p in write)


def errors(model, data) -> list[str]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return validation_errors("node.yaml", e.value)


def test_settings(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    s = DatastoreSettings.model_validate({"type": "mqtt", "mqtt": {"host": "mqtt.lan", "tls": {"ca": str(ca)},
                                                                    "password": "pw"}})
    assert s.mqtt.port == 8883 and s.mqtt.secret() == "pw" and "pw" not in repr(s)
    (tmp_path / "pw").write_text("from-file\n")
    assert MqttSettings(host="h", password_file=tmp_path / "pw").secret() == "from-file"
    assert errors(DatastoreSettings, {"type": "files"}) == ["node.yaml: (top level): Value error, path is required when type is files"]
    assert errors(DatastoreSettings, {"type": "mqtt"}) == ["node.yaml: (top level): Value error, mqtt is required when type is mqtt"]
    assert errors(DatastoreSettings, {"type": "etcd"}) == ["node.yaml: (top level): Value error, etcd is required when type is etcd"]
    assert errors(DatastoreSettings, {"type": "consul"})[0].startswith("node.yaml: type: Input should be 'files', 'mqtt' or 'etcd'")
    bad = errors(DatastoreSettings, {"type": "mqtt", "mqtt": {"host": "", "port": 0, "keepalive": 1, "bogus": 1,
                                                             "tls": {"cert": str(ca), "ca": str(tmp_path / "nope")}}})
    assert [line.split(":")[1].strip() for line in bad] == ["mqtt.host", "mqtt.port", "mqtt.tls.ca", "mqtt.keepalive", "mqtt.bogus"]
    assert "cert and key go together" in errors(MqttSettings, {"host": "h", "tls": {"cert": str(ca)}})[0]
    assert "backoff_min is larger" in errors(MqttSettings, {"host": "h", "backoff_min": 5, "backoff_max": 1})[0]
    assert "not both" in errors(MqttSettings, {"host": "h", "password": "a", "password_file": str(tmp_path / "pw")})[0]
