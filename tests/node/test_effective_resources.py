"""IP pools and BGP peers applied with `tortie apply` (ippools/, bgppeers/) join the node file's in the effective
configuration: pure merge rules, then a Cluster over a real files datastore written by the CLI's own loader."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network as N

import pytest

from bgpd.agent.cluster import Cluster, datastore_peers, datastore_pools
from bgpd.cli.resources import document, entry, load_entries
from config.datastore.files import FilesDatastore
from config.effective import ClusterView, effective
from config.load import ConfigError
from config.node import IPPool, NodeConfig, Peer

pytestmark = pytest.mark.timeout(30)


def node(tmp_path, **extra) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": "node1", "router_id": "10.99.0.1", "asn": 64512, "listen_address": "10.99.0.1",
        "pools": [{"cidr": "10.244.0.0/16", "block_size": 26}], "state_dir": str(tmp_path / "node1"),
        "peers": [{"address": "10.98.0.254", "asn": 65000}], **extra})


def test_pools_and_peers_of_the_view_join_the_files(tmp_path):
    pool = IPPool(cidr="10.250.0.0/24", block_size=28, vxlan="always", nat_outgoing=False)
    peer = Peer(address="10.98.0.1", asn=65001, name="tor2")
    eff = effective(node(tmp_path), ClusterView(pools=(pool,), peers=(peer,), blocks=(N("10.250.0.16/28"),)))
    assert [str(p.cidr) for p in eff.pools] == ["10.244.0.0/16", "10.250.0.0/24"]
    assert eff.pools[1].vxlan == "always" and eff.uses_vxlan()
    assert eff.blocks == [N("10.250.0.16/28")]
    assert {str(p.address) for p in eff.bgp_peers()} == {"10.98.0.254", "10.98.0.1"}


def test_a_removed_pool_with_a_block_in_use_is_refused(tmp_path):
    """The pool is gone but the node still owns a block of it: the view is refused (Cluster keeps the last one)."""
    with pytest.raises(ConfigError) as e:
        effective(node(tmp_path), ClusterView(blocks=(N("10.250.0.16/28"),)))
    assert any("10.250.0.16/28 is not inside any pool" in line for line in e.value.errors), e.value.errors


def test_datastore_pools_overlapping_the_file_or_each_other_are_ignored(tmp_path):
    entries = {"ippools/a": {"cidr": "10.250.0.0/24", "block_size": 28},
               "ippools/b": {"cidr": "10.250.0.128/25", "block_size": 28},  # overlaps a
               "ippools/c": {"cidr": "10.244.8.0/24", "block_size": 26},  # inside the file's pool
               "ippools/d": {"cidr": "10.251.0.0/24", "block_size": 12},  # invalid
               "ippools/e": {"cidr": "fd00:250::/64"}}
    pools = datastore_pools(entries, node(tmp_path).pools)
    assert [str(p.cidr) for p in pools] == ["10.250.0.0/24", "fd00:250::/64"]
    assert pools[1].block_size == 122


def test_datastore_peers_yield_to_the_files_and_need_bgp(tmp_path):
    entries = {"bgppeers/tor1": {"address": "10.98.0.254", "asn": 65009},  # the file's address: the file wins
               "bgppeers/tor2": {"address": "10.98.0.2", "asn": 65002},
               "bgppeers/tor3": {"address": "10.98.0.2", "asn": 65003},  # taken by tor2
               "bgppeers/bad": {"address": "10.98.0.9"}}  # no asn
    peers = datastore_peers(entries, node(tmp_path))
    assert [(p.name, str(p.address), p.asn) for p in peers] == [("tor2", "10.98.0.2", 65002)]
    unrouted = node(tmp_path, peers=[], bgp={"enabled": False}, datastore={"type": "files",
                                                                          "path": str(tmp_path / "ds")})
    assert datastore_peers(entries, unrouted) == []


def write_resources(tmp_path, text: str) -> dict[str, dict]:
    f = tmp_path / "resources.yaml"
    f.write_text(text)
    return load_entries([f])


RESOURCES = """
apiVersion: tortie.io/v1
kind: IPPool
metadata: {name: extra}
spec: {cidr: 10.250.0.0/24, blockSize: 28, vxlan: cross-subnet}
---
apiVersion: tortie.io/v1
kind: BGPPeer
metadata: {name: bird}
spec: {address: 10.98.0.7, asn: 65007}
"""


async def test_cluster_claims_from_an_applied_pool_and_peers_with_an_applied_peer(tmp_path):
    """The file's pool is full (its only block is another node's), so the node claims from the applied pool."""
    full = node(tmp_path, pools=[{"cidr": "10.244.0.0/26", "block_size": 26}])
    ds = FilesDatastore(tmp_path / "ds", "node1")
    await ds.start()
    try:
        await ds.put("claims/10.244.0.0-26/node2", {"owned": True, "at": 1.0})
        for k, v in write_resources(tmp_path, RESOURCES).items():
            await ds.put(k, v)
        applied = []

        async def apply(config):
            applied.append(config)
        cluster = Cluster(ds, full, apply)
        block = await asyncio.wait_for(cluster.claim_more(4), 10)
        assert block is not None and block.subnet_of(N("10.250.0.0/24")) and block.prefixlen == 28
        eff = cluster.desired()
        assert eff.blocks == [block] and eff.pools[1].vxlan == "cross-subnet"
        assert [(p.name, p.address) for p in eff.peers] == [(None, IPv4Address("10.98.0.254")),
                                                              ("bird", IPv4Address("10.98.0.7"))]
        await ds.delete("ippools/extra")  # the block is in use: refused, the last good configuration stays
        with pytest.raises(ConfigError):
            cluster.desired()
        await cluster._apply_desired()
        assert applied == []
    finally:
        await asyncio.wait_for(ds.stop(), 15)


async def test_a_reloaded_file_is_merged_with_the_view_made_for_it(tmp_path):
    """A reload's new file takes a peer address an applied BGPPeer had: the view for the new file leaves it out."""
    ds = FilesDatastore(tmp_path / "ds", "node1")
    await ds.start()
    try:
        for k, v in write_resources(tmp_path, RESOURCES).items():
            await ds.put(k, v)
        cluster = Cluster(ds, node(tmp_path), apply=None)
        assert [p.name for p in cluster.view().peers] == ["bird"]
        reloaded = node(tmp_path, peers=[{"address": "10.98.0.7", "asn": 65007, "name": "bird-in-file"}])
        assert cluster.view(reloaded).peers == ()
        assert [p.name for p in effective(reloaded, cluster.view(reloaded)).peers] == ["bird-in-file"]
    finally:
        await asyncio.wait_for(ds.stop(), 15)


def test_a_peer_scoped_to_a_node_is_that_nodes_only(tmp_path):
    written = write_resources(tmp_path, RESOURCES.replace("spec: {address: 10.98.0.7, asn: 65007}",
                                                          "spec: {address: 10.98.0.7, asn: 65007, node: node1}"))
    assert written["bgppeers/bird"] == {"node": "node1", "name": "bird", "address": "10.98.0.7", "asn": 65007,
                                        "hold_time": 90, "passive": False,
                                        "bfd": written["bgppeers/bird"]["bfd"]}
    assert entry(document("bgppeers/bird", written["bgppeers/bird"])) == ("bgppeers/bird", written["bgppeers/bird"])
    assert entry(document("ippools/extra", written["ippools/extra"])) == ("ippools/extra", written["ippools/extra"])
    assert [p.name for p in datastore_peers(written, node(tmp_path))] == ["bird"]
    other = node(tmp_path, name="node2", router_id="10.99.0.2", listen_address="10.99.0.2")
    assert datastore_peers(written, other) == []
