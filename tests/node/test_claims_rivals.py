"""A node whose owned claim another node owned first (claims crossed in a slow datastore) gives it up and claims
again, unless its pods use the block; a new pod whose address turns out to be another node's is moved to a block of
the node's own; and each node searches the pools from its own starting block. Pure parts: unit and hypothesis tests;
the I/O: a Cluster on a files datastore (the whole ADD, with a daemon: test_contested_pod_add.py)."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address as A, IPv4Network as N, ip_address, ip_network

import pytest
from hypothesis import given, strategies as st

from bgpd.agent.cluster import Cluster
from bgpd.ipam.claims import Claim, blocks_from, claims_by_block, next_free, owner, rivals, start_index
from bgpd.ipam.ownership import Beaten, Taken, beaten, foreign_endpoints, owned_prefixes, taken
from config.datastore import FilesDatastore, MqttDatastore, cidr_segment
from config.node import IPPool, NodeConfig
from tests.datastore.broker import Broker
from tests.datastore.conftest import settings
from tests.waiting import eventually

X, Y = N("10.244.0.0/30"), N("10.244.0.4/30")


def test_a_rival_releases_a_block_its_pods_do_not_use_and_keeps_one_they_do():
    by_block = {X: {"a": Claim("a", True, 1.0), "me": Claim("me", True, 2.0)},
                Y: {"b": Claim("b", True, 1.0), "me": Claim("me", True, 2.0)},
                N("10.244.0.8/30"): {"me": Claim("me", True, 0.5), "c": Claim("c", True, 3.0)},  # mine: c is the rival
                N("10.244.0.12/30"): {"me": Claim("me", False), "d": Claim("d", True, 9.0)},  # pending: the claim rule's
                ip_network("fd00::/126"): {"e": Claim("e", True, 1.0), "me": Claim("me", True, 1.0)}}  # a tie: the name
    assert beaten("me", by_block, [A("10.244.0.5"), ip_address("fd00::9")]) == Beaten(
        release={X: "a", ip_network("fd00::/126"): "e"}, keep={Y: "b"})
    assert beaten("c", by_block, []) == Beaten(release={N("10.244.0.8/30"): "me"}, keep={})
    assert beaten("a", by_block, []) == Beaten({}, {})


names = st.sampled_from(["a", "b", "c", "me"])
claims = st.dictionaries(names, st.tuples(st.booleans(), st.sampled_from([1.0, 2.0, 3.0])), max_size=4).map(
    lambda d: {n: Claim(n, owned, at) for n, (owned, at) in d.items()})
blocks = st.integers(0, 7).map(lambda i: N(f"10.244.0.{4 * i}/30"))


@given(st.dictionaries(blocks, claims, max_size=8), st.sets(st.integers(0, 31).map(lambda i: A(f"10.244.0.{i}"))))
def test_every_rival_claim_is_either_released_or_kept_for_the_pods_using_it(by_block, used):
    verdict = beaten("me", by_block, used)
    assert verdict.release.keys() | verdict.keep.keys() == {b for b, c in by_block.items() if "me" in rivals(c)}
    assert not verdict.release.keys() & verdict.keep.keys()
    assert all(any(a in b for a in used) for b in verdict.keep)
    assert not any(a in b for b in verdict.release for a in used)
    for block, first in {**verdict.release, **verdict.keep}.items():
        assert by_block[block][first].owned and first != "me"


def test_a_new_pods_address_is_taken_when_readers_give_it_to_another_node():
    W, Z = N("10.244.0.8/30"), N("10.244.0.12/30")
    by_block = {X: {"a": Claim("a", True, 1.0), "me": Claim("me", True, 2.0)},  # a owned it first: our claim a rival
                Y: {"me": Claim("me", True, 1.0), "a": Claim("a", True, 2.0)},  # ours first
                W: {"b": Claim("b", True, 1.0)}, N("10.244.0.9/32"): {"me": Claim("me", True, 1.0)},  # we borrowed .9
                N("10.244.0.10/32"): {"me": Claim("me", True, 1.0)},  # and .10, which b's pod uses
                Z: {"me": Claim("me", True, 1.0)}, N("10.244.0.13/32"): {"a": Claim("a", True, 1.0)},  # a borrowed
                ip_network("fd00::/126"): {"e": Claim("e", True, 1.0), "me": Claim("me", True, 1.0)}}  # a tie: e's
    endpoints = {"endpoints/a/default/p": {"ips": ["10.244.0.5", "10.244.0.13"]},  # in our Y, and a's borrowed .13
                 "endpoints/b/default/q": {"ips": ["10.244.0.10"]},
                 "endpoints/me/default/r": {"ips": ["10.244.0.1"]}}  # ours, in X: no matter
    owned = owned_prefixes(by_block)
    new = [A("10.244.0.1"), A("10.244.0.5"), A("10.244.0.9"), A("10.244.0.10"), A("10.244.0.13"),
           ip_address("fd00::1"), A("10.244.1.1")]  # the last in no claimed prefix (a block of the node's file)
    assert taken("me", owned, endpoints, new) == [
        Taken(A("10.244.0.1"), X, "a"), Taken(A("10.244.0.10"), W, "b"), Taken(ip_address("fd00::1"),
                                                                                ip_network("fd00::/126"), "e")]
    assert str(Taken(A("10.244.0.1"), X, "a")) == "address 10.244.0.1 is in 10.244.0.0/30, which a holds"
    assert taken("a", owned, endpoints, [A("10.244.0.1")]) == []
    assert taken("a", owned, endpoints, [A("10.244.0.6")]) == [Taken(A("10.244.0.6"), Y, "me")]


singles = st.sampled_from(["10.244.0.4/32", "10.244.0.9/32", "10.244.0.17/32"]).map(N)  # borrowed addresses
pod_ips = st.lists(st.integers(0, 31).map(lambda i: A(f"10.244.0.{i}")), min_size=1, max_size=3)


@given(st.dictionaries(blocks, claims, max_size=8), st.dictionaries(singles, claims, max_size=3),
       st.dictionaries(st.sampled_from(["a", "b", "c"]), pod_ips, max_size=3))
def test_taken_is_what_a_reader_would_ignore_of_a_prefix_another_node_holds(by_block, borrowed, pods):
    """An address taken() lets through is one every reader accepts from us, unless nobody owns it; one it refuses
    is in another node's prefix and readers ignore it from us. (Every address of the blocks, each time.)"""
    new = list(N("10.244.0.0/27"))
    owned = owned_prefixes({**by_block, **borrowed})
    endpoints = {f"endpoints/{node}/default/p": {"ips": sorted(map(str, set(ips)))} for node, ips in pods.items()}
    refused = {t.address: t for t in taken("me", owned, endpoints, new)}
    for a in new:
        ignored = "endpoints/me/default/new" in foreign_endpoints(
            {**endpoints, "endpoints/me/default/new": {"ips": [str(a)]}}, owned)
        elsewhere = [n for n, prefixes in owned.items() if n != "me" and any(a in p for p in prefixes)]
        assert (a in refused) == (ignored and bool(elsewhere))
        if a in refused:
            assert refused[a].holder in elsewhere and a in refused[a].prefix


def test_each_node_starts_its_search_at_its_own_block():
    pool = IPPool(cidr=N("10.244.0.0/24"), block_size=28)  # 16 blocks
    assert [start_index(f"node{i}", 16) for i in (1, 2, 3)] == [14, 12, 0]  # blake2b: the same on every run
    assert next_free([pool], [], "node1") == N("10.244.0.224/28")
    assert next_free([pool], [N("10.244.0.224/28"), N("10.244.0.240/28")], "node1") == N("10.244.0.0/28")  # wraps
    starts = {next_free([pool], [], f"node{i}") for i in range(16)}
    assert len(starts) > 8  # sixteen nodes starting together: most of them try different blocks
    huge = IPPool(cidr=ip_network("fd00::/48"), block_size=122)  # 2**74 blocks: computed, never listed
    first = next_free([huge], [], "node1")
    assert first.prefixlen == 122 and first.subnet_of(huge.cidr)
    assert next_free([huge], [first], "node1") == ip_network((int(first.network_address) + 64, 122))


@given(st.integers(0, 4), st.sets(st.integers(0, 15)), st.text(min_size=1, max_size=8))
def test_next_free_gives_a_block_of_the_pool_that_is_not_taken_or_none_when_all_are(bits, taken, node):
    pool = IPPool(cidr=N(f"10.244.0.0/{30 - bits}"), block_size=30)  # 2**bits blocks
    every = list(pool.cidr.subnets(new_prefix=30))
    assert sorted(blocks_from(pool, node)) == every  # each block once, in some order
    claimed = [every[i] for i in taken if i < len(every)]
    got = next_free([pool], claimed, node)
    assert (got is None) == (len(set(claimed)) == len(every))
    assert got is None or (got in every and got not in claimed)


def claim_key(block, node: str) -> str:
    return f"claims/{cidr_segment(block)}/{node}"


@pytest.mark.timeout(60)
async def test_a_running_node_gives_up_rival_claims_and_claims_again(tmp_path, caplog):
    """Node b runs on a files datastore. It starts with a rival claim left from before (given up at start); then c
    writes an owned claim, marked earlier, on b's block (as when their claims crossed): b gives it up and claims
    another. The same on a block a pod of b uses: b keeps its claim (an error, the `contested` count) until the pod's
    endpoint is gone, then gives it up."""
    pool = {"cidr": "10.244.0.0/28", "block_size": 30}  # 4 blocks
    node = NodeConfig.model_validate({"name": "b", "router_id": "10.0.0.2", "asn": 64512, "listen_address": "10.0.0.2",
                                      "claim_settle": 0.1, "state_dir": str(tmp_path / "b"), "pools": [pool]})
    node.state_dir.mkdir()  # the daemon makes it at start
    other = FilesDatastore(tmp_path / "ds", "admin", observer=True)  # writes c's keys (files: no ACL)
    await other.start()
    start = next_free([IPPool.model_validate(pool)], [], "b")
    await other.put(claim_key(start, "c"), {"owned": True, "at": 1.0})
    await other.put(claim_key(start, "b"), {"owned": True, "at": 2.0})  # a rival claim from b's previous run
    ds = FilesDatastore(tmp_path / "ds", "b", lease_ttl=60)  # started by Cluster.run
    applied = []

    async def apply(config):
        applied.append(config.blocks)
    cluster = Cluster(ds, node, apply)
    task = asyncio.create_task(cluster.run())
    try:
        with caplog.at_level("WARNING", "tortie.cluster"):
            await eventually(lambda: cluster.ready.is_set() or task.done(), timeout=10)
            assert not task.done(), task.exception()
            assert ds.get(claim_key(start, "b")) is None and f"giving up block={start}: c owned it first" in caplog.text
            (first,) = cluster.owned_blocks()
            assert first != start and applied[-1] == [first]

            await other.put(claim_key(first, "c"), {"owned": True, "at": 1.0})  # c's claim crossed ours
            await eventually(lambda: ds.get(claim_key(first, "b")) is None and len(cluster.owned_blocks()) == 1,
                             timeout=10)
            (second,) = cluster.owned_blocks()
            assert second not in (start, first)
            await eventually(lambda: applied[-1] == [second], timeout=10)

            await ds.put("endpoints/b/default/web", {"ips": [str(second.network_address + 1)]})
            await other.put(claim_key(second, "c"), {"owned": True, "at": 1.0})
            await eventually(lambda: cluster.contested == {second: "c"} and len(cluster.owned_blocks()) == 1,
                             timeout=10)
            (third,) = cluster.owned_blocks()  # a block of its own for new pods meanwhile
            assert ds.get(claim_key(second, "b")) is not None and "pods of this node have addresses in it" in caplog.text
            await ds.delete("endpoints/b/default/web")  # the pod is gone: the claim goes too
            await eventually(lambda: ds.get(claim_key(second, "b")) is None and not cluster.contested, timeout=10)
            assert cluster.owned_blocks() == [third] and applied[-1] == [third]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ds.stop()
        await other.stop()


@pytest.mark.timeout(60)
async def test_a_node_moves_a_new_pod_off_a_block_another_node_owned_first(tmp_path, caplog):
    """Node b owns a block; c's owned claim on it, marked earlier, and c's pod on its second address come after b
    chose that address for a new pod. b finds the address c's, keeps its claim while another pod of b uses the block
    (contested), claims a block of its own and applies it; once that pod is gone, the same gives the block up."""
    pool = {"cidr": "10.244.0.0/28", "block_size": 30}
    node = NodeConfig.model_validate({"name": "b", "router_id": "10.0.0.2", "asn": 64512, "listen_address": "10.0.0.2",
                                      "claim_settle": 0.05, "state_dir": str(tmp_path / "b"), "pools": [pool]})
    node.state_dir.mkdir()
    other = FilesDatastore(tmp_path / "ds", "admin", observer=True)
    ds = FilesDatastore(tmp_path / "ds", "b", lease_ttl=60)
    applied = []

    async def apply(config):
        applied.append(config.blocks)
    cluster = Cluster(ds, node, apply)
    await other.start()
    await ds.start()
    try:
        await cluster.claim_missing()
        (block,) = cluster.owned_blocks()
        old, new = list(block.hosts())  # a /30: two pod addresses
        await ds.put("endpoints/b/default/old", {"ips": [str(old)]})
        await other.put(claim_key(block, "c"), {"owned": True, "at": 1.0})
        await other.put("endpoints/c/default/web", {"ips": [str(new)]})
        await eventually(lambda: ds.get("endpoints/c/default/web") is not None and ds.get(claim_key(block, "c")),
                         timeout=10)
        assert cluster.taken({new}) == [Taken(new, block, "c")]
        with caplog.at_level("ERROR", "tortie.cluster"):
            await cluster.move_off({new})
        assert ds.get(claim_key(block, "b")) is not None and cluster.contested == {block: "c"}
        (mine,) = cluster.owned_blocks()
        assert mine != block and applied[-1] == [mine] and cluster.taken({next(mine.hosts())}) == []

        await ds.delete("endpoints/b/default/old")
        assert cluster.taken({old}) == [Taken(old, block, "c")]
        with caplog.at_level("WARNING", "tortie.cluster"):
            await cluster.move_off({old})
        assert ds.get(claim_key(block, "b")) is None and not cluster.contested
        assert f"giving up block={block}: c owned it first" in caplog.text
        assert cluster.owned_blocks() == [mine] and applied[-1] == [mine]  # no further block claimed
    finally:
        await ds.stop()
        await other.stop()


@pytest.mark.timeout(120)
async def test_nodes_starting_together_on_a_real_broker_end_with_one_block_each(tmp_path):
    """Twelve nodes start at once on one mosquitto with a settle time (5 ms) far below its propagation delay, so
    claims cross and rival claims arise (or not: the outcome must not depend on it). Every node ends owning a block
    of its own, and no rival claim is left in the datastore. (Without the give-up, 20 such nodes left 9 to 11 of them
    with only a rival claim after 30 s: docs/datastore.md.)"""
    broker = Broker(tmp_path / "broker").start()
    names = [f"n{i:02}" for i in range(12)]
    admin = MqttDatastore(settings(broker, "admin"), "admin-cli", observer=True)
    clusters = []
    for name in names:
        config = NodeConfig.model_validate({
            "name": name, "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "claim_settle": 0.005,
            "state_dir": str(tmp_path / name), "pools": [{"cidr": "10.244.0.0/24", "block_size": 28}]})  # 16 blocks
        config.state_dir.mkdir()

        async def apply(_config):
            pass
        clusters.append(Cluster(MqttDatastore(settings(broker, "admin", start_timeout=30), name), config, apply))
    tasks = []
    try:
        await admin.start()
        tasks = [asyncio.create_task(c.run()) for c in clusters]

        def settled() -> bool:
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            by_block = claims_by_block(admin.items("claims"), lambda n: True)
            owners = [owner(c) for c in by_block.values()]
            return (all(c.ready.is_set() for c in clusters) and sorted(o for o in owners if o) == names
                    and not any(rivals(c) for c in by_block.values())
                    and all(len(c.owned_blocks()) == 1 for c in clusters))  # as each node sees it too
        await eventually(settled, timeout=60)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.ds.stop() for c in clusters), admin.stop(), return_exceptions=True)
        broker.stop()
