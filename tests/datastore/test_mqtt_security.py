"""The shipped ACL (a node writes only its own keys), TLS, and the shipped mosquitto.conf."""
from __future__ import annotations

import asyncio
import re
import subprocess
from types import SimpleNamespace

import pytest

from config.datastore import Change, DatastoreError, MqttDatastore, TlsSettings
from tests.datastore.broker import SHIPPED, free_port, make_passwords, wait_listening
from config.datastore.base import MAX_VALUE_BYTES
from tests.datastore.conftest import collect, drain, make_certs, publish_raw, settings
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def test_node_writes_only_its_own_keys(broker, clients):
    one = await clients.mqtt(broker, "node1")
    admin = await clients.mqtt(broker, "admin")
    feed = admin.changes()
    denied = ["nodes/node2", "status/node2", "policies/default/deny", "blocks/10.244.9.0-26",
              "claims/10.244.9.0-26/node2", "claims/fd00_244__-122/node2", "endpoints/node2/default/x",
              "globalpolicies/g", "namespaces/default"]
    allowed = ["claims/10.244.1.0-26/node1", "claims/fd00_244__-122/node1", "endpoints/node1/default/web-1",
               "nodes/node1"]
    for k in denied + allowed:
        await one.put(k, {"by": "node1"})
    # the broker handles node1's writes in order: once the last allowed one arrived, the denied ones are gone
    seen = await collect(feed, lambda c: c.key == "nodes/node1")
    seen += await drain(feed)
    assert {c.key for c in seen} == set(allowed)
    await eventually(lambda: all(one.get(k) is None for k in denied), what="denied writes reverted")
    assert all(one.get(k) == {"by": "node1"} for k in allowed)
    assert await one.flush(5)

    backlog = one.changes()  # node1's first iterator: every change since start, the reverts included
    await admin.put("policies/default/allow", {"by": "admin"})
    await admin.put("nodes/node2", {"by": "admin"})
    seen = await collect(backlog, lambda c: c.value == {"by": "admin"} and c.key == "nodes/node2")
    assert Change("nodes/node2", None) in seen
    assert one.get("policies/default/allow") == {"by": "admin"}


async def test_credentials_of_another_node_cannot_write_as_it(broker, clients):
    """A client acting as node1 with node2's credentials reads, but its node1 writes (liveness too) are dropped."""
    admin = await clients.mqtt(broker, "admin")
    fake = await clients.mqtt(broker, "node1", user="node2", client_id="fake")
    await fake.put("nodes/node1", {"address": "10.66.6.6"})
    await fake.put("nodes/node2", {"address": "10.99.0.2"})  # node2's key: its user may write it
    await eventually(lambda: admin.get("nodes/node2") is not None)
    assert admin.get("nodes/node1") is None and admin.alive("node1") is None
    await eventually(lambda: fake.get("nodes/node1") is None, what="the dropped write reverted")


async def test_tls(make_broker, certs, clients, tmp_path):
    broker = make_broker(certs=certs)
    ca = certs[0]
    one = await clients.mqtt(broker, "node1", tls=TlsSettings(ca=ca))
    two = await clients.mqtt(broker, "node2", tls=TlsSettings(ca=ca))
    feed = two.changes()
    await one.put("nodes/node1", {"address": "10.99.0.1"})
    await collect(feed, lambda c: c.key == "nodes/node1")

    other_ca = make_certs(tmp_path / "other", "other")[0]
    for tls, why in [(TlsSettings(ca=other_ca), "CERTIFICATE_VERIFY_FAILED"), (None, "within 1.5 s")]:
        ds = MqttDatastore(settings(broker, "node3", tls=tls, start_timeout=1.5), "node3")
        with pytest.raises(DatastoreError, match=why):
            await ds.start()


async def test_tls_client_certificate(make_broker, certs, clients):
    broker = make_broker(certs=certs, require_client_cert=True)
    ca, pki = certs[0], certs[0].parent
    one = await clients.mqtt(broker, "node1", tls=TlsSettings(ca=ca, cert=pki / "client.crt", key=pki / "client.key"))
    assert one.connected
    ds = MqttDatastore(settings(broker, "node2", tls=TlsSettings(ca=ca), start_timeout=1.5), "node2")
    with pytest.raises(DatastoreError, match="within 1.5 s"):
        await ds.start()


async def test_shipped_mosquitto_conf(tmp_path, certs, clients):
    """The shipped configuration, with its paths and ports moved into a temporary directory."""
    ca, cert, key = certs
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    for src, name in [(ca, "ca.crt"), (cert, "server.crt"), (key, "server.key"), (SHIPPED / "acl", "acl")]:
        (etc / name).write_bytes(src.read_bytes())
    make_passwords(etc / "passwd")
    tls_port, plain_port = free_port(), free_port()
    conf = (SHIPPED / "mosquitto.conf").read_text()
    for old, new in [("/etc/mosquitto/tortie/", f"{etc}/"), ("/var/lib/mosquitto/", f"{data}/"),
                     ("listener 8883", f"listener {tls_port} 127.0.0.1"), ("listener 1883", f"listener {plain_port}")]:
        assert old in conf
        conf = conf.replace(old, new)
    (etc / "mosquitto.conf").write_text(conf + "user root\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(etc / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        wait_listening(tls_port, proc)

        one = await clients.mqtt(SimpleNamespace(port=tls_port), "node1", tls=TlsSettings(ca=ca))
        admin = await clients.mqtt(SimpleNamespace(port=plain_port), "admin")
        for i in range(1500):  # more than mosquitto queues per client by default
            await admin.put(f"policies/default/p{i}", {"i": i})
        assert await admin.flush(10)
        two = await clients.mqtt(SimpleNamespace(port=plain_port), "node2")
        assert len(two.items("policies/default")) == 1500
        feed = admin.changes()
        await one.put("nodes/node2", {"address": "10.99.0.1"})  # denied
        await one.put("nodes/node1", {"address": "10.99.0.1"})
        seen = await collect(feed, lambda c: c.key == "nodes/node1")
        assert "nodes/node2" not in {c.key for c in seen}
        # message_size_limit: a value over the datastore's limit never reaches a node (the broker drops it)
        big = b'{"a":"' + b"x" * MAX_VALUE_BYTES + b'"}'
        await publish_raw(SimpleNamespace(port=plain_port), "admin", [("tortie/v1/policies/default/big", big),
                                                                     ("tortie/v1/policies/default/after", b"{}")])
        await collect(feed, lambda c: c.key == "policies/default/after")
        assert admin.get("policies/default/big") is None and admin.rejected == 0
        assert one.connected and one.resyncs == 0
        for ds in (one, two, admin):
            await asyncio.wait_for(ds.stop(), 10)
    finally:
        proc.terminate()
        proc.wait(5)
    assert (data / "tortie.db").exists()


def test_make_passwords(tmp_path):
    script = SHIPPED / "make-passwords.sh"
    out = subprocess.run([script, tmp_path / "passwd", "node9", "admin:given"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split("\n")
    assert re.fullmatch(r"node9 [0-9a-f]{32}", out[0]) and out[1] == "admin given"
    assert [line.split(":")[0] for line in (tmp_path / "passwd").read_text().split()] == ["node9", "admin"]
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o640
    bad = subprocess.run([script, tmp_path / "passwd", "bad/user"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    assert "node9" in (tmp_path / "passwd").read_text()  # the old file is kept
    assert not [p for p in tmp_path.iterdir() if p.name != "passwd"]


async def test_observer_beside_its_node(broker, clients):
    """A tool with node1's credentials beside node1's daemon: no liveness of its own, no takeover."""
    one = await clients.mqtt(broker, "node1")
    admin = await clients.mqtt(broker, "admin")
    tool = await clients.add(MqttDatastore(settings(broker, "node1"), "node1-cli", observer=True))
    await one.put("nodes/node1", {"address": "10.99.0.1"})
    await eventually(lambda: tool.get("nodes/node1") is not None)
    await tool.put("endpoints/node1/default/x", {"ip": "10.244.1.9"})  # node1's key: allowed for its user
    await eventually(lambda: admin.get("endpoints/node1/default/x") is not None)
    await tool.stop()
    assert admin.alive("node1") is True and one.connected and one.resyncs == 0
    admin_tool = await clients.add(MqttDatastore(settings(broker, "admin"), "admin-cli", observer=True))
    await admin_tool.delete("endpoints/node1/default/x")
    assert await admin_tool.flush(5)
    await eventually(lambda: one.get("endpoints/node1/default/x") is None)
    await eventually(lambda: admin.get("endpoints/node1/default/x") is None)
    # the broker delivers admin-cli's messages in order: a status it had published would be here by now
    assert admin.get("status/admin-cli") is None and admin.connected and admin.resyncs == 0
    await admin_tool.stop()
    assert admin.alive("admin") is True
