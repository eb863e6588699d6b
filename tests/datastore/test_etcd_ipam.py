"""Block claims and borrowing by compare-and-swap on a real etcd: many simultaneous claimers, no duplicates."""
from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from ipaddress import IPv4Network as N

import pytest

from bgpd.ipam.claiming import BlockClaims
from bgpd.ipam.claims import owner
from config.datastore import EtcdDatastore
from config.node import NodeConfig
from tests.datastore.etcd_server import etcd, etcd_settings  # noqa: F401 - the fixture
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def node_config(tmp_path, name: str, pool: str, block_size: int) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": name, "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "listen_address6": "fd99::1",
        "claim_settle": 30,
        "state_dir": str(tmp_path / name), "pools": [{"cidr": pool, "block_size": block_size}]})


@contextlib.asynccontextmanager
async def claimers(etcd, names, counts=lambda _: True):  # noqa: F811
    """BlockClaims of each node name on its own etcd client, in the order of `names`; stopped afterwards."""
    stores = [EtcdDatastore(etcd_settings(etcd, lease_ttl=30, start_timeout=60, sync_timeout=10), n) for n in names]
    await asyncio.gather(*(ds.start() for ds in stores))
    try:
        yield {ds.node: BlockClaims(ds, counts) for ds in stores}
    finally:
        await asyncio.gather(*(ds.stop() for ds in stores))


async def claim_all(claims: dict[str, BlockClaims], tmp_path, pool: str, block_size: int, version: int) -> list:
    """Every node claims a block of `pool` at once; their answers in the order of `claims`."""
    configs = {n: node_config(tmp_path, n, pool, block_size) for n in claims}
    return await asyncio.gather(*(claims[n].claim_block(configs[n], version) for n in claims))


def stored_claims(etcd) -> Counter:  # noqa: F811
    """Claims per block as etcd has them (tortie/v1/claims/<node>/<cidr>)."""
    keys = etcd.members[0].ctl("get", "--prefix", "--keys-only", "tortie/v1/claims/").stdout.split()
    return Counter(k.split("/")[4] for k in keys)


async def test_100_simultaneous_claimers_get_100_distinct_blocks(etcd, tmp_path):  # noqa: F811
    names = [f"n{i:03}" for i in range(100)]
    async with claimers(etcd, names) as claims:
        got = await claim_all(claims, tmp_path, "10.244.0.0/16", 26, 4)
        # claim_settle is 30 s: finishing within the test's timeout shows the settle time is not waited
        assert None not in got and len(set(got)) == 100
        assert set(stored_claims(etcd).values()) == {1}
        await eventually(lambda: len(claims["n000"].by_block()) == 100, timeout=10, what="every claim seen")
        view = claims["n000"].by_block()
        assert {owner(view[b]) for b in got} == set(names)


async def test_more_claimers_than_blocks(etcd, tmp_path):  # noqa: F811
    names = [f"n{i:02}" for i in range(40)]
    async with claimers(etcd, names) as claims:
        got = await claim_all(claims, tmp_path, "10.244.0.0/24", 28, 4)  # 16 blocks
        won = [b for b in got if b is not None]
        assert len(won) == 16 and len(set(won)) == 16
        assert stored_claims(etcd) == Counter({seg: 1 for seg in stored_claims(etcd)}) and len(stored_claims(etcd)) == 16


async def test_simultaneous_borrowers_get_distinct_addresses(etcd, tmp_path):  # noqa: F811
    names = ["owner"] + [f"b{i:02}" for i in range(20)]
    async with claimers(etcd, names) as claims:
        configs = {n: node_config(tmp_path, n, "10.244.0.0/27", 27) for n in names}  # one block of 32
        assert await claims["owner"].claim_block(configs["owner"], 4) == N("10.244.0.0/27")
        for c in claims.values():
            await eventually(lambda c=c: c.by_block().get(N("10.244.0.0/27")), what="the owner's claim seen")
        got = await asyncio.gather(*(claims[n].borrow_address(configs[n], set(), 4) for n in names[1:]))
        assert None not in got and len(set(got)) == 20 and all(g.prefixlen == 32 for g in got)
        assert set(stored_claims(etcd).values()) == {1}


async def test_claim_of_a_node_that_no_longer_counts_is_taken_over(etcd, tmp_path):  # noqa: F811
    etcd.members[0].ctl("put", "tortie/v1/claims/gone/10.244.0.0-26", '{"owned": true, "at": 1}')
    async with claimers(etcd, ["a"], counts=lambda n: n != "gone") as claims:
        assert await claims["a"].claim_block(node_config(tmp_path, "a", "10.244.0.0/26", 26), 4) == N("10.244.0.0/26")


async def test_ipv6_blocks_and_borrowed_addresses_by_compare_and_swap(etcd, tmp_path):  # noqa: F811
    """IPv6 blocks are claimed like IPv4 ones (a /122 at most once), an IPv6 address is borrowed as a /128."""
    names = [f"v{i}" for i in range(10)]
    async with claimers(etcd, names) as claims:
        got = await claim_all(claims, tmp_path, "fd00::/118", 122, 6)  # 16 blocks of /122
        assert None not in got and len(set(got)) == 10 and {b.version for b in got} == {6}
        full = {n: node_config(tmp_path, n, str(got[0]), 122) for n in names}  # a pool of one block, owned
        owner_of = names[0]
        for c in claims.values():
            await eventually(lambda c=c: owner(c.by_block().get(got[0], {})) == owner_of, what="owned")
        borrowers = [n for n in names if n != owner_of][:5]
        lent = await asyncio.gather(*(claims[n].borrow_address(full[n], {got[names.index(n)]}, 6) for n in borrowers))
        assert None not in lent and len(set(lent)) == 5 and all(b.prefixlen == 128 for b in lent)
        assert set(stored_claims(etcd).values()) == {1}
