"""Files backend: a directory shared by clients (as by the nodes of a lab), leases, bad files."""
from __future__ import annotations

import asyncio
import json
import os
import logging
import time

import pytest

from config.datastore import Change, DatastoreError, DatastoreSettings, FilesDatastore, open_datastore
from tests.datastore.conftest import collect, drain
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

EP = "endpoints/node1/default/web-1"


async def test_put_get_delete_items_changes(tmp_path, clients):
    ds = await clients.files(tmp_path, "node1")
    assert ds.connected and ds.alive("node1") is True
    feed = ds.changes()
    await ds.put("blocks/10.244.1.0-26", {"node": "node1"})
    await ds.put(EP, {"ip": "10.244.1.5"})
    assert json.loads((tmp_path / "endpoints/node1/default/web-1.json").read_text()) == {"ip": "10.244.1.5"}
    assert ds.items("endpoints/") == {EP: {"ip": "10.244.1.5"}}
    await ds.delete(EP)
    await ds.delete(EP)
    assert ds.get(EP) is None and not (tmp_path / "endpoints/node1/default/web-1.json").exists()
    assert [c for c in await drain(feed) if not c.key.startswith("status/")] == [
        Change("blocks/10.244.1.0-26", {"node": "node1"}), Change(EP, {"ip": "10.244.1.5"}), Change(EP, None)]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(DatastoreError):
        await ds.put("../x", {})


async def test_two_clients_share_a_directory(tmp_path, clients):
    await (FilesDatastore(tmp_path, "admin")).put("policies/default/p", {"v": 1})  # written before anyone starts
    one = await clients.files(tmp_path, "node1")
    two = await clients.files(tmp_path, "node2")
    assert two.get("policies/default/p") == {"v": 1} and two.alive("node1") is True
    feed = two.changes()
    await one.put(EP, {"ip": "10.244.1.5"})
    await collect(feed, lambda c: c == Change(EP, {"ip": "10.244.1.5"}))
    await one.delete(EP)
    await collect(feed, lambda c: c == Change(EP, None))
    await one.stop()
    await collect(feed, lambda c: c.key == "status/node1" and c.value == {"alive": False})
    assert two.alive("node1") is False


async def test_lease_expiry_emits_a_change(tmp_path, clients):
    one = await clients.files(tmp_path, "node1", lease_ttl=1.5)
    two = await clients.files(tmp_path, "node2", lease_ttl=1.5)
    feed = one.changes()
    await eventually(lambda: one.alive("node2") is True)
    (tmp_path / "status/node9.json").write_text(json.dumps({"alive": True, "expires": time.time() + 0.5}))
    await collect(feed, lambda c: c.key == "status/node9" and c.value["alive"] is True)
    await collect(feed, lambda c: c.key == "status/node9" and c.value["alive"] is False, timeout=3)
    assert one.alive("node9") is False
    await asyncio.sleep(1.6)  # longer than a lease: renewals keep node1 and node2 alive
    assert one.alive("node2") is True and two.alive("node1") is True


async def test_malformed_files_are_ignored(tmp_path, clients, caplog):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes/bad.json").write_text("{not json")
    (tmp_path / "nodes/list.json").write_text("[1, 2]")
    (tmp_path / "bogus").mkdir()
    (tmp_path / "bogus/x.json").write_text("{}")  # not a key: ignored quietly
    with caplog.at_level(logging.WARNING):
        ds = await clients.files(tmp_path, "node1")
    assert ds.get("nodes/bad") is None and ds.get("nodes/list") is None
    assert "nodes/bad.json" in caplog.text
    feed = ds.changes()
    (tmp_path / "nodes/good.json").write_text('{"ok": true}')
    await collect(feed, lambda c: c == Change("nodes/good", {"ok": True}))
    (tmp_path / "nodes/good.json").write_text("{trunc")  # keeps the last good value
    (tmp_path / "nodes/good2.json").write_text('{"ok": 2}')
    await collect(feed, lambda c: c.key == "nodes/good2")
    assert ds.get("nodes/good") == {"ok": True}


async def test_open_datastore_files(tmp_path):
    ds = open_datastore(DatastoreSettings(type="files", path=tmp_path / "state", lease_ttl=3), "node1")
    await ds.start()
    try:
        assert ds.alive("node1") is True and ds.items("status") == {"status/node1": ds.get("status/node1")}
    finally:
        await ds.stop()
    assert ds.get("status/node1") == {"alive": False}
    assert [c async for c in ds.changes()] == [Change("status/node1", {"alive": False})]


async def test_unusable_directory(tmp_path):
    (tmp_path / "file").write_text("")
    ds = FilesDatastore(tmp_path / "file" / "sub", "node1")
    with pytest.raises(DatastoreError, match="datastore directory"):
        await ds.start()
    (tmp_path / "file").unlink()
    await ds.start()  # a failed start can be retried
    try:
        assert ds.alive("node1") is True
    finally:
        await ds.stop()


async def test_directories_made_and_removed_by_others(tmp_path, clients):
    """Files written in a new directory before the watch on it exists, and a directory moved away."""
    ds = await clients.files(tmp_path / "state", "node1")
    feed = ds.changes()
    staged = tmp_path / "staged"
    for pod in range(20):
        (staged / "node2/default").mkdir(parents=True, exist_ok=True)
        (staged / f"node2/default/p{pod}.json").write_text(json.dumps({"ip": f"10.244.2.{pod}"}))
    (tmp_path / "state/endpoints").mkdir(exist_ok=True)
    os.rename(staged / "node2", tmp_path / "state/endpoints/node2")
    await eventually(lambda: len(ds.items("endpoints/node2")) == 20)
    os.rename(tmp_path / "state/endpoints/node2", tmp_path / "gone")
    await eventually(lambda: not ds.items("endpoints/node2"))
    seen = await drain(feed)
    assert len({c.key for c in seen if c.value is None and c.key.startswith("endpoints/node2/")}) == 20


async def test_change_feeds(tmp_path, clients):
    ds = await clients.files(tmp_path, "node1")
    await ds.put("nodes/a", {"n": 1})  # before anyone asked for a feed
    first, second, third = ds.changes(), ds.changes(), ds.changes()
    await ds.put("nodes/b", {"n": 2})
    await third.aclose()
    await ds.put("nodes/c", {"n": 3})
    keys = lambda seen: [c.key for c in seen if not c.key.startswith("status/")]  # noqa: E731
    assert keys(await drain(first, 0.05)) == ["nodes/a", "nodes/b", "nodes/c"]
    assert keys(await drain(second, 0.05)) == ["nodes/b", "nodes/c"]
    assert keys(await drain(third, 0.05)) == ["nodes/b"]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(second.__anext__(), 0.05)
    await ds.put("nodes/d", {"n": 4})
    assert (await asyncio.wait_for(second.__anext__(), 1)).key == "nodes/d"  # the cancelled wait lost nothing


async def test_observer_has_no_lease(tmp_path, clients):
    tool = await clients.add(FilesDatastore(tmp_path, "node1-cli", observer=True))
    await tool.put("nodes/node1", {"address": "10.99.0.1"})
    await tool.stop()
    assert not (tmp_path / "status").exists() and tool.alive("node1-cli") is None
