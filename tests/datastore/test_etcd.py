"""etcd backend against a real etcd 3.4: reads, writes, changes, leases, watch resume, failover, compare-and-swap."""
from __future__ import annotations

import asyncio
import signal

import pytest

from pydantic import ValidationError

from config.datastore import Change, DatastoreError, EtcdDatastore, EtcdSettings
from tests.datastore.conftest import collect, drain
from tests.datastore.etcd_server import etcd, etcd3, etcd_settings  # noqa: F401 - fixtures
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)

EP = "endpoints/node1/default/web-1"


@pytest.fixture
async def nodes():
    started: list[EtcdDatastore] = []

    async def make(cluster: EtcdCluster, node: str, observer: bool = False, **kw) -> EtcdDatastore:
        ds = EtcdDatastore(etcd_settings(cluster, **kw), node, observer)
        await ds.start()
        started.append(ds)
        return ds

    yield make
    for ds in reversed(started):
        await asyncio.wait_for(ds.stop(), 15)


async def test_put_get_delete_changes(etcd, nodes):  # noqa: F811
    ds = await nodes(etcd, "node1")
    other = await nodes(etcd, "node2")
    changes = ds.changes()
    theirs = other.changes()
    for k, v in [("nodes/node1", {"address": "10.99.0.1"}), (EP, {"ip": "10.244.1.5"}), (EP, {"ip": "10.244.1.6"})]:
        await ds.put(k, v)
        assert ds.get(k) == v
        assert await ds.flush(5)
    await ds.delete(EP)
    assert await ds.flush(5)
    assert [c for c in await drain(changes) if c.key != "status/node2"] == [
        Change("nodes/node1", {"address": "10.99.0.1"}),
        Change(EP, {"ip": "10.244.1.5"}),
        Change(EP, {"ip": "10.244.1.6"}),
        Change(EP, None),
    ]  # own writes, each once: their echoes are not changes
    seen = await collect(theirs, lambda c: c == Change(EP, None))
    assert [c for c in seen if c.key != "status/node1"][-1] == Change(EP, None)
    assert other.get("nodes/node1") == {"address": "10.99.0.1"}
    assert other.alive("node1") is True
    with pytest.raises(DatastoreError):
        await ds.put("bogus/x", {})


async def test_initial_state_loaded_and_bad_entries_rejected(etcd, nodes):  # noqa: F811
    etcd.members[0].ctl("put", "tortie/v1/namespaces/a", '{"labels":{}}')
    etcd.members[0].ctl("put", "tortie/v1/namespaces/b", "not json")
    etcd.members[0].ctl("put", "tortie/v1/nonsense/b", "{}")
    ds = await nodes(etcd, "node1")
    assert ds.get("namespaces/a") == {"labels": {}}
    assert ds.get("namespaces/b") is None and ds.rejected == 2


async def test_lease_lapses_when_node_stops_renewing(etcd, nodes):  # noqa: F811
    watcher = await nodes(etcd, "watcher", observer=True)
    victim = await nodes(etcd, "node2", lease_ttl=2)
    await victim.put("nodes/node2", {"address": "10.99.0.2"})
    assert await victim.flush(5)
    await eventually(lambda: watcher.alive("node2") is True, what="node2 alive")
    victim._task.cancel()  # the process freezes: no more keep-alives, no revoke
    await asyncio.gather(victim._task, return_exceptions=True)
    victim._task = None
    await eventually(lambda: watcher.alive("node2") is False, timeout=8, what="lease of node2 lapsed")
    assert watcher.get("status/node2") is None and watcher.get("nodes/node2") is not None


async def test_stop_revokes_lease(etcd, nodes):  # noqa: F811
    watcher = await nodes(etcd, "watcher", observer=True)
    ds = EtcdDatastore(etcd_settings(etcd, lease_ttl=60), "node3")
    await ds.start()
    await ds.put("nodes/node3", {"address": "10.99.0.3"})
    await eventually(lambda: watcher.alive("node3") is True)
    await ds.stop()
    await eventually(lambda: watcher.alive("node3") is False, timeout=3, what="status gone at once")


async def test_watch_resumes_after_outage_without_resync(etcd, nodes):  # noqa: F811
    ds = await nodes(etcd, "node1", lease_ttl=30)
    changes = ds.changes()
    await ds.put("nodes/node1", {"address": "10.99.0.1"})
    assert await ds.flush(5)
    await drain(changes)
    member = etcd.members[0]
    member.stop(signal.SIGKILL)
    await eventually(lambda: not ds.connected, what="disconnected")
    await ds.put("endpoints/node1/default/p0", {"ips": ["10.244.0.1"]})  # written while etcd is down
    assert ds.get("endpoints/node1/default/p0") is not None
    etcd.restart(member)
    for i in range(50):  # written by someone else before node1 is back
        member.ctl("put", f"tortie/v1/namespaces/ns{i}", "{}")
    await eventually(lambda: ds.connected and len(ds.items("namespaces")) == 50, timeout=15, what="caught up")
    assert await ds.flush(5)
    assert ds.resyncs == 0 and ds.resumes >= 1
    seen = await drain(changes)
    assert sorted(c.key for c in seen if c.key.startswith("namespaces/")) == sorted(f"namespaces/ns{i}" for i in range(50))
    assert "tortie/v1/endpoints/node1/default/p0" in member.ctl("get", "--keys-only", "--prefix", "tortie/v1/endpoints").stdout


async def test_failover_to_another_member(etcd3, nodes):  # noqa: F811
    ds = await nodes(etcd3, "node1", lease_ttl=10)
    observer = await nodes(etcd3, "obs", observer=True, endpoints=etcd3.endpoints[::-1])
    obs_changes = observer.changes()
    etcd3.members[0].stop(signal.SIGKILL)
    await ds.put("namespaces/after", {"x": 1})
    assert await ds.flush(10)
    await eventually(lambda: observer.get("namespaces/after") == {"x": 1}, timeout=10, what="write after failover")
    assert ds.failovers >= 1 and ds.resyncs == 0
    # the lease survived the failover: node1 never read down
    assert all(c.key != "status/node1" for c in await drain(obs_changes))


async def test_claims_one_after_another_each_go_through(etcd, nodes):  # noqa: F811
    """A node's claim right after its own previous one is not refused for that one (the cache caught up with it
    before put_if_unchanged() returned): seen once in a CI run, the watch's event for the first claim not yet in."""
    a = await nodes(etcd, "a")
    for i in range(40):
        block = f"10.244.{i}.0-26"
        assert await a.put_if_unchanged(f"claims/{block}/a", {"owned": True, "at": float(i)}, f"claims/{block}"), i


async def test_put_if_unchanged_is_compare_and_swap(etcd, nodes):  # noqa: F811
    a = await nodes(etcd, "a")
    b = await nodes(etcd, "b")
    scope = "claims/10.244.0.0-26"
    assert await a.put_if_unchanged(f"{scope}/a", {"owned": True, "at": 1.0}, scope)
    await eventually(lambda: b.get(f"{scope}/a") is not None, what="b saw a's claim")
    ctl = etcd.members[0].ctl
    # written by another client while b's loop is blocked (ctl is synchronous): b's cache cannot have seen it
    ctl("put", "tortie/v1/claims/c/10.244.0.0-26", '{"owned": true, "at": 3}')  # claims are stored by node
    assert not await b.put_if_unchanged(f"{scope}/b", {"owned": True, "at": 2.0}, scope)
    assert b.get(f"{scope}/c") == {"owned": True, "at": 3}  # the refusal returns once the cache caught up
    assert b.get(f"{scope}/b") is None
    ctl("put", "tortie/v1/namespaces/x", "{}")  # outside the scope: no conflict
    assert await b.put_if_unchanged(f"{scope}/b", {"owned": True, "at": 2.0}, scope)
    ctl("del", "tortie/v1/claims/c/10.244.0.0-26")  # a deletion only frees: not a change
    assert await b.put_if_unchanged("claims/10.244.0.64-26/b", {"owned": True, "at": 2.0}, "claims/10.244.0.64-26")
    assert "tortie/v1/claims/b/10.244.0.64-26" in ctl("get", "--prefix", "--keys-only", "tortie/v1/claims/b/").stdout


async def test_refused_credentials_are_a_clear_error(etcd):  # noqa: F811
    etcd.members[0].ctl("user", "add", "root:rootpw")
    etcd.members[0].ctl("auth", "enable")
    ds = EtcdDatastore(etcd_settings(etcd, username="node1", password="wrong"), "node1")
    with pytest.raises(DatastoreError, match="refused node1"):
        await ds.start()


def test_settings(tmp_path):
    s = EtcdSettings(endpoints=["10.0.0.1:2379", "etcd2.lan:2379"], username="node1", password="pw")
    assert s.secret() == "pw" and "pw" not in repr(s)
    for bad, reason in [({"endpoints": []}, "at least 1"), ({"endpoints": ["10.0.0.1"]}, "not host:port"),
                        ({"endpoints": ["h:99999"]}, "not host:port"),
                        ({"endpoints": ["h:1"], "password": "x"}, "needs a username"),
                        ({"endpoints": ["h:1"], "tls": {"insecure": True}}, "not supported")]:
        with pytest.raises(ValidationError, match=reason):
            EtcdSettings(**bad)
