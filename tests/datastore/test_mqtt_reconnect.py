"""Losing the broker: last known state kept, writes queued, then resynchronised and converged."""
from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from config.datastore import Change
from tests.datastore.conftest import drain
from tests.datastore.proxy import Proxy
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def test_partition_then_resync(broker, clients):
    proxy = Proxy(broker.port)
    await proxy.heal()
    one = await clients.mqtt(proxy, "node1")  # through the proxy
    two = await clients.mqtt(broker, "node2")
    admin = await clients.mqtt(broker, "admin")
    for k in ("policies/default/a", "policies/default/b", "namespaces/default"):
        await admin.put(k, {"v": 1})
    await one.put("endpoints/node1/default/web-1", {"ip": "10.244.1.5"})
    await eventually(lambda: one.get("namespaces/default") and two.get("endpoints/node1/default/web-1"))
    await eventually(lambda: two.alive("node1") is True)
    feed = one.changes()
    await drain(feed, 0.2)

    await proxy.cut()
    await eventually(lambda: not one.connected, what="node1 disconnected")
    await eventually(lambda: two.alive("node1") is False, what="node1's Last Will")
    assert one.get("policies/default/a") == {"v": 1}  # last known state kept
    await one.put("endpoints/node1/default/web-2", {"ip": "10.244.1.6"})  # queued
    await one.delete("endpoints/node1/default/web-1")
    await admin.delete("policies/default/a")
    await admin.put("policies/default/b", {"v": 2})
    await admin.put("policies/default/c", {"v": 3})
    await admin.put("endpoints/node1/default/ghost", {"ip": "10.244.1.99"})  # node1 owns its keys: undone
    assert await admin.flush(5)
    while_away = await drain(feed, 0.5)
    assert while_away == [Change("endpoints/node1/default/web-2", {"ip": "10.244.1.6"}),
                          Change("endpoints/node1/default/web-1", None)]  # own writes only, nothing deleted
    assert one.resyncs == 0

    await proxy.heal()
    await eventually(lambda: one.connected, timeout=10, what="node1 reconnected")
    assert one.resyncs == 1
    seen = await drain(feed, 0.5)
    assert {c.key: c.value for c in seen if not c.key.startswith("status/")} == {
        "policies/default/a": None, "policies/default/b": {"v": 2}, "policies/default/c": {"v": 3},
    }  # exactly the differences
    await eventually(lambda: two.get("endpoints/node1/default/web-2") == {"ip": "10.244.1.6"})
    await eventually(lambda: two.get("endpoints/node1/default/web-1") is None and two.alive("node1") is True)
    await eventually(lambda: two.get("endpoints/node1/default/ghost") is None)
    assert one.get("endpoints/node1/default/ghost") is None
    assert await one.flush(5)
    await proxy.cut()


@pytest.mark.parametrize("persistence", [True, False])
async def test_broker_restart(make_broker, clients, persistence):
    broker = make_broker(persistence=persistence)
    one = await clients.mqtt(broker, "node1")
    two = await clients.mqtt(broker, "node2")
    admin = await clients.mqtt(broker, "admin")
    await admin.put("policies/default/p", {"v": 1})
    await one.put("nodes/node1", {"address": "10.99.0.1"})
    await one.put("claims/10.244.1.0-26/node1", {"node": "node1"})
    await two.put("endpoints/node2/default/db", {"ip": "10.244.2.9"})
    for ds in (one, two, admin):
        assert await ds.flush(5)
    await eventually(lambda: len(one.items("")) == 7 and len(two.items("")) == 7)
    feed = one.changes()
    await drain(feed, 0.2)

    broker.stop()
    await eventually(lambda: not one.connected and not two.connected)
    assert one.get("endpoints/node2/default/db") == {"ip": "10.244.2.9"}
    await one.put("endpoints/node1/default/web", {"ip": "10.244.1.7"})  # made while the broker is away
    broker.start()
    await eventually(lambda: one.resyncs == 1 and two.resyncs == 1 and admin.resyncs == 1, timeout=10)
    await eventually(lambda: two.get("endpoints/node1/default/web") == {"ip": "10.244.1.7"})

    # owners re-publish their keys: a client that starts now sees them, with or without persistence
    three = await clients.mqtt(broker, "node3")
    await eventually(lambda: three.get("claims/10.244.1.0-26/node1") and three.get("endpoints/node2/default/db")
                     and three.get("nodes/node1") == {"address": "10.99.0.1"})
    seen = [c for c in await drain(feed, 0.5) if not c.key.startswith("status/")]
    if persistence:
        assert three.get("policies/default/p") == {"v": 1}
        assert seen == [Change("endpoints/node1/default/web", {"ip": "10.244.1.7"})]
    else:  # the admin's keys are gone with the broker's memory: node1 is told so (docs/datastore.md)
        assert three.get("policies/default/p") is None
        assert Change("policies/default/p", None) in seen
        await eventually(lambda: one.get("endpoints/node2/default/db") is not None)


async def test_stop_while_the_broker_is_away(broker, clients):
    ds = await clients.mqtt(broker, "node1")
    feed = ds.changes()
    broker.stop()
    await eventually(lambda: not ds.connected)
    await ds.put("nodes/node1", {"address": "10.99.0.1"})
    await asyncio.wait_for(ds.stop(), 2)  # does not wait for the broker
    assert [c async for c in feed] == [Change("nodes/node1", {"address": "10.99.0.1"})]


def state(ds) -> dict:
    return {k: v for k, v in ds.items("").items() if not k.startswith("status/")}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_writes_and_partitions_converge(broker, clients, seed):
    """Three writers, each key with one writer, node1 partitioned at random: all end with the last writes."""
    rng = random.Random(seed)
    proxy = Proxy(broker.port)
    await proxy.heal()
    one = await clients.mqtt(proxy, "node1")  # through the proxy
    two = await clients.mqtt(broker, "node2")
    admin = await clients.mqtt(broker, "admin")
    pools = {
        ds: [f"endpoints/{n}/default/p{i}" for i in range(5)] + [f"nodes/{n}", f"claims/10.244.{i}.0-26/{n}"]
        for i, (ds, n) in enumerate([(one, "node1"), (two, "node2")], 1)
    }
    pools[admin] = [f"policies/default/p{i}" for i in range(5)] + ["namespaces/default", "blocks/10.244.1.0-26"]
    last: dict[str, dict | None] = {}
    cut = False
    for round_ in range(8):
        if rng.random() < 0.5:
            await (proxy.heal() if cut else proxy.cut())
            cut = not cut
        for _ in range(rng.randint(1, 15)):
            ds = rng.choice(list(pools))
            k = rng.choice(pools[ds])
            last[k] = None if rng.random() < 0.3 else {"round": round_, "n": rng.randrange(1000)}
            await (ds.delete(k) if last[k] is None else ds.put(k, last[k]))
        await asyncio.sleep(rng.uniform(0, 0.4))
    if cut:
        await proxy.heal()
    expected = {k: v for k, v in last.items() if v is not None}
    await eventually(lambda: one.connected, timeout=10)
    for ds in pools:
        assert await ds.flush(10)
    three = await clients.mqtt(broker, "node3")
    assert state(three) == expected
    await eventually(lambda: all(state(ds) == expected for ds in pools), what="convergence")
    assert one.resyncs >= 1, "the seed gave no partition"
    await proxy.cut()


async def test_node_dying_while_the_broker_is_stopped_reads_down(broker, clients, spawn_node):
    """mosquitto publishes the wills of its clients when it stops: a node that does not come back is down."""
    pid = await spawn_node(broker, "node3")
    broker.stop()
    os.kill(pid, signal.SIGKILL)
    broker.start()
    one = await clients.mqtt(broker, "node1")
    assert one.alive("node3") is False
