"""MQTT backend against a real mosquitto with the shipped ACL: reads, writes, changes, sync, liveness."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from config.datastore import Change, DatastoreError, MqttDatastore
from tests.datastore.broker import USERS
from tests.datastore.conftest import collect, drain, settings
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

EP = "endpoints/node1/default/web-1"


async def test_put_get_delete_items_changes(broker, clients):
    ds = await clients.mqtt(broker, "node1")
    assert ds.connected and ds.resyncs == 0
    changes = ds.changes()
    await ds.put("nodes/node1", {"address": "10.99.0.1"})
    await ds.put(EP, {"ip": "10.244.1.5"})
    await ds.put(EP, {"ip": "10.244.1.6"})
    assert ds.get(EP) == {"ip": "10.244.1.6"}
    assert ds.items("endpoints/node1") == {EP: {"ip": "10.244.1.6"}}
    assert ds.items("endpoints/node10") == {}
    await ds.delete(EP)
    assert ds.get(EP) is None
    assert await ds.flush(5)
    seen = await drain(changes)
    assert seen == [
        Change("nodes/node1", {"address": "10.99.0.1"}),
        Change(EP, {"ip": "10.244.1.5"}),
        Change(EP, {"ip": "10.244.1.6"}),
        Change(EP, None),
    ]  # own writes, each once: their echoes from the broker are not changes
    with pytest.raises(DatastoreError):
        await ds.put("nodes/a/b", {})
    with pytest.raises(DatastoreError):
        await ds.put("nodes/node1", {"x": {1, 2}})


async def test_two_clients_see_each_other(broker, clients):
    one = await clients.mqtt(broker, "node1")
    two = await clients.mqtt(broker, "node2")
    feed = two.changes()
    await one.put(EP, {"ip": "10.244.1.5"})
    await collect(feed, lambda c: c == Change(EP, {"ip": "10.244.1.5"}))
    assert two.get(EP) == {"ip": "10.244.1.5"}
    feed_one = one.changes()
    await one.delete(EP)
    await collect(feed, lambda c: c == Change(EP, None))
    await two.put("nodes/node2", {"address": "10.99.0.2"})
    await collect(feed_one, lambda c: c.key == "nodes/node2")
    assert one.alive("node2") is True and two.alive("node1") is True
    assert one.alive("node7") is None


async def test_initial_sync_loads_retained_state(broker, clients):
    admin = await clients.mqtt(broker, "admin")
    state = {f"policies/default/p{i}": {"spec": {"n": i}} for i in range(200)}
    state["blocks/10.244.1.0-26"] = {"node": "node1"}
    for k, v in state.items():
        await admin.put(k, v)
    assert await admin.flush(10)
    one = await clients.mqtt(broker, "node1")
    assert one.items("policies/") | one.items("blocks/") == state
    assert await drain(one.changes()) == []  # the initial state is not a change


async def test_clean_stop_marks_node_down(broker, clients):
    one = await clients.mqtt(broker, "node1")
    two = MqttDatastore(settings(broker, "node2"), "node2")
    await two.start()
    await eventually(lambda: one.alive("node2") is True)
    await two.stop()
    await eventually(lambda: one.alive("node2") is False)
    assert one.get("status/node2") == {"alive": False}


async def test_last_will_when_client_is_killed(broker, clients, spawn_node):
    one = await clients.mqtt(broker, "node1")
    pid = await spawn_node(broker, "node3")
    await eventually(lambda: one.alive("node3") is True)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: one.alive("node3") is False, what="Last Will")


async def test_wrong_password_is_refused(broker):
    ds = MqttDatastore(settings(broker, "node1", password="wrong", start_timeout=10), "node1")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DatastoreError, match="refused node1"):
        await ds.start()
    assert loop.time() - t0 < 5  # refused at once, not retried until start_timeout


async def test_unreachable_broker_times_out_and_start_can_be_retried(broker):
    broker.stop()
    ds = MqttDatastore(settings(broker, "node1", start_timeout=1.5), "node1")
    with pytest.raises(DatastoreError, match="within 1.5 s"):
        await ds.start()
    broker.start()
    await ds.start()  # a failed start can be retried
    try:
        assert ds.connected and ds.alive("node1") is True
    finally:
        await ds.stop()


async def test_malformed_messages_are_ignored(broker, clients, caplog):
    one = await clients.mqtt(broker, "node1")
    feed = one.changes()
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "admin", "-P", USERS["admin"], "-q", "1"]
    for topic, payload in [("tortie/v1/nodes/bad", "{oops"), ("tortie/v1/nodes/list", "[1]"),
                           ("tortie/v1/nodes/a/b", "{}"), ("tortie/v1/nodes/good", '{"ok": true}')]:
        subprocess.run([*pub, "-r", "-t", topic, "-m", payload], check=True, timeout=10)
    await collect(feed, lambda c: c == Change("nodes/good", {"ok": True}))
    assert one.get("nodes/bad") is None and one.get("nodes/list") is None
    assert "tortie/v1/nodes/bad" in caplog.text and "tortie/v1/nodes/a/b" in caplog.text
    two = await clients.mqtt(broker, "node2")  # the same retained garbage at sync
    assert two.items("nodes/") == {"nodes/good": {"ok": True}}
