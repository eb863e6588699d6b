"""IPAM: the block claim rule (unit tests and a simulation of nodes racing for blocks over a slow datastore),
borrowing, address allocation and the state files."""
import heapq
import random
from ipaddress import IPv4Address as A, IPv4Network as N, ip_address, ip_network

import pytest
from hypothesis import given, settings, strategies as st

from bgpd.ipam.allocate import AddressError, allocate, choose
from bgpd.ipam.claiming import BlockClaims
from bgpd.ipam.claims import Claim, blocks_from, next_free, owner, wins
from bgpd.ipam.holdings import borrowable, lent
from bgpd.ipam.ownership import beaten
from bgpd.ipam.state import IpamStateError, Lent, NodeBlocks, load, save
from config.datastore import FilesDatastore, cidr_segment
from config.node import IPPool, NodeConfig
from tests.waiting import eventually

POOL = IPPool(cidr=N("10.244.0.0/28"), block_size=30)  # 4 blocks


def test_rule():
    assert wins("a", {"a": Claim("a", False), "b": Claim("b", False)})
    assert not wins("b", {"a": Claim("a", False), "b": Claim("b", False)})
    assert not wins("a", {"a": Claim("a", False), "b": Claim("b", True)})  # owned beats pending
    assert wins("b", {"a": Claim("a", False), "b": Claim("b", True)})
    assert not wins("a", {"b": Claim("b", False)})
    assert owner({"b": Claim("b", True), "a": Claim("a", True)}) == "a"
    order = list(blocks_from(POOL, "n"))
    assert next_free([POOL], [order[0]], "n", [order[1]]) == order[2]
    assert next_free([POOL], [N(f"10.244.0.{i}/30") for i in (0, 4, 8, 12)], "n") is None


class World:
    """Nodes sharing a datastore whose writes reach each node after a random delay below max_delay, in the order
    they were made (per writer and reader, as MQTT delivers one client's messages)."""

    def __init__(self, seed: int, max_delay: float):
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.events: list = []
        self.seq = 0
        self.views: dict[str, dict[N, dict[str, Claim]]] = {}
        self.last: dict[tuple[str, str], float] = {}  # (writer, reader) -> when its latest write arrives
        self.on_arrival = lambda t, viewer: None

    def at(self, t, fn):
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn))

    def write(self, t, block, node, claim):
        for viewer in self.views:
            delay = 0 if viewer == node else self.rng.uniform(0, self.max_delay)
            arrival = self.last[node, viewer] = max(t + delay, self.last.get((node, viewer), t))

            def apply(t_, viewer=viewer):
                claims = self.views[viewer].setdefault(block, {})
                if claim is None:
                    claims.pop(node, None)
                else:
                    claims[node] = claim
                self.on_arrival(t_, viewer)
            self.at(arrival, apply)

    def run(self):
        for _ in range(100_000):  # a simulation that does not settle fails instead of hanging
            if not self.events:
                return
            t, _, fn = heapq.heappop(self.events)
            fn(t)
        raise AssertionError("the claims never settled")


def simulate(nodes, starts, seed, settle=1.0, max_delay=0.45, pool=POOL, give_up=False):
    """Nodes claiming a block each by the claim rule (claiming.py); with `give_up`, a node that finds its owned
    claim beaten (a rival: Cluster.give_up_rivals(), no pods yet) deletes it and claims again."""
    world = World(seed, max_delay)
    world.views = {n: {} for n in nodes}
    got: dict[str, N | None] = {}
    attempts = {}

    def claimant(node):
        skip = set()

        def attempt(t):
            view = world.views[node]
            block = next_free([pool], [b for b, c in view.items() if c], node, skip)
            if block is None:
                got[node] = None
                return
            world.write(t, block, node, Claim(node, False, t))

            def decide(t2):
                if wins(node, world.views[node].get(block, {})):
                    world.write(t2, block, node, Claim(node, True, t2))
                    got[node] = block
                else:
                    world.write(t2, block, node, None)
                    skip.add(block)
                    world.at(t2 + world.rng.uniform(0, 0.1), attempt)
            world.at(t + settle, decide)
        return attempt

    def arrival(t, viewer):
        mine = got.get(viewer)
        if give_up and mine is not None and mine in beaten(viewer, world.views[viewer], ()).release:
            world.write(t, mine, viewer, None)
            got[viewer] = None
            world.given_up += 1
            attempts[viewer] = claimant(viewer)  # a new claim_block(): what it gave up on before is forgotten
            attempts[viewer](t)

    world.given_up = 0
    world.on_arrival = arrival
    for node, start in zip(nodes, starts):
        attempts[node] = claimant(node)
        world.at(start, attempts[node])
    world.run()
    return got, world


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 6), st.lists(st.floats(0, 0.5), min_size=6, max_size=6), st.integers(0, 2**32))
def test_racing_claims_end_with_one_owner_per_block(n, starts, seed):
    nodes = [f"node{i}" for i in range(n)]
    got, world = simulate(nodes, starts[:n], seed)
    owned = [b for b in got.values() if b is not None]
    assert len(owned) == len(set(owned))  # never two owners of one block
    assert len(owned) == min(n, 4)  # and nobody went without while a block was free
    for view in world.views.values():  # everyone agrees, and the losers' claims are gone
        for block, claims in view.items():
            if claims:
                assert list(claims) == [owner(claims)] and got[owner(claims)] == block


SLOW = {"settle": 1.0, "max_delay": 3.0}  # propagation up to three times the settle time (a loaded broker)
POOL16 = IPPool(cidr=N("10.244.0.0/26"), block_size=30)  # 16 blocks


def duplicates(got: dict) -> list:
    owned = [b for b in got.values() if b is not None]
    return sorted({b for b in owned if owned.count(b) > 1})


def test_slow_propagation_gives_two_owners_unless_rivals_give_up():
    """(a) Propagation slower than the settle time: claimants miss each other's pending claims and more than one
    marks the same block owned (the scale benchmark saw it on MQTT); with the give-up, the same runs end with one
    owner per block. Eight nodes starting at once, twenty fixed seeds: deterministic."""
    nodes = [f"node{i}" for i in range(8)]
    runs = {seed: (simulate(nodes, [0.0] * 8, seed, pool=POOL16, **SLOW)[0],
                   simulate(nodes, [0.0] * 8, seed, pool=POOL16, give_up=True, **SLOW)) for seed in range(20)}
    assert sum(1 for without, _ in runs.values() if duplicates(without)) >= 10
    for _, (got, world) in runs.values():
        assert not duplicates(got) and None not in got.values()
    assert sum(world.given_up for _, (_, world) in runs.values()) > 0


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8), st.lists(st.floats(0, 2.0), min_size=8, max_size=8), st.integers(0, 2**32))
def test_with_slow_propagation_rivals_give_up_and_every_node_ends_with_a_block_of_its_own(n, starts, seed):
    """(b) Whatever the timing, once every write has arrived: one owner per block, every node one block of its own,
    every view the same, and no claim left but the owners'."""
    nodes = [f"node{i}" for i in range(n)]
    got, world = simulate(nodes, starts[:n], seed, pool=POOL16, give_up=True, **SLOW)
    assert None not in got.values() and not duplicates(got)
    for view in world.views.values():
        assert {b: list(c) for b, c in view.items() if c} == {b: [node] for node, b in got.items()}


# --- allocation, borrowing and the state files ---------------------------------------------------------------


def test_choose_takes_the_first_free_address_or_the_one_asked_for():
    blocks = [N("10.244.0.0/30"), N("10.244.0.9/32")]
    assert choose(blocks, set(), None) == A("10.244.0.1")  # hosts only: not the network address
    assert choose(blocks, {A("10.244.0.1"), A("10.244.0.2")}, None) == A("10.244.0.9")  # a borrowed /32
    assert choose(blocks, {A("10.244.0.1"), A("10.244.0.2"), A("10.244.0.9")}, None) is None
    assert choose(blocks, set(), A("10.244.0.2")) == A("10.244.0.2")
    with pytest.raises(AddressError, match="already used"):
        choose(blocks, {A("10.244.0.2")}, A("10.244.0.2"))
    with pytest.raises(AddressError, match="not in this node's blocks"):
        choose(blocks, set(), A("10.245.0.1"))


def test_lent_and_borrowable():
    c = {N("10.244.0.0/30"): {"a": Claim("a", True, 1.0)}, N("10.244.0.4/30"): {"b": Claim("b", True, 1.0)},
         N("10.244.0.5/32"): {"a": Claim("a", True, 2.0)}, N("10.244.0.8/30"): {"c": Claim("c", False)}}
    assert lent("b", [N("10.244.0.4/30")], c) == [A("10.244.0.5")]
    assert lent("a", [N("10.244.0.0/30")], c) == []
    # a borrows from b's block (c's is only pending): not the address it has, nor one a pod uses
    assert list(borrowable({N("10.244.0.0/30")}, c, {"10.244.0.6"}, 4)) == []
    assert list(borrowable({N("10.244.0.0/30")}, c, set(), 4)) == [N("10.244.0.6/32")]
    assert list(borrowable({N("10.244.0.4/30")}, c, set(), 4)) == [N("10.244.0.1/32"), N("10.244.0.2/32")]
    assert list(borrowable({N("10.244.0.4/30")}, c, set(), 6)) == []


def test_state_files_round_trip_and_refuse_garbage(tmp_path):
    assert load(tmp_path, NodeBlocks) == NodeBlocks() and load(tmp_path, Lent) == Lent()  # no daemon yet
    save(tmp_path, NodeBlocks(blocks=[N("10.244.0.0/26")], borrowed=[A("10.244.9.3")]))
    save(tmp_path, Lent(addresses=[A("10.244.0.7")]))
    assert load(tmp_path, NodeBlocks).borrowed == [A("10.244.9.3")]
    assert load(tmp_path, Lent).addresses == [A("10.244.0.7")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.json", "lent.json"]
    (tmp_path / "blocks.json").write_text('["10.244.0.0/26"]')  # the old, untyped form
    with pytest.raises(IpamStateError, match=r"blocks\.json: invalid"):
        load(tmp_path, NodeBlocks)


def test_allocate_reads_the_daemons_blocks_and_skips_lent_addresses(tmp_path):
    node = NodeConfig.model_validate({"name": "n", "router_id": "10.0.0.1", "asn": 64512,
                                      "listen_address": "10.0.0.1", "state_dir": str(tmp_path),
                                      "pools": [{"cidr": "10.244.0.0/24", "block_size": 30}],
                                      "blocks": ["10.244.0.0/30"]})
    assert allocate(node, []) == [A("10.244.0.1")]
    save(tmp_path, Lent(addresses=[A("10.244.0.1")]))
    save(tmp_path, NodeBlocks(blocks=[N("10.244.0.0/30"), N("10.244.0.8/30")], borrowed=[A("10.244.0.66")]))
    assert allocate(node, [A("10.244.0.2")]) == [A("10.244.0.9")]
    assert allocate(node, [A("10.244.0.2"), A("10.244.0.9"), A("10.244.0.10")]) == [A("10.244.0.66")]
    with pytest.raises(AddressError, match="no free IPv4 address"):  # no datastore: nobody to ask for more
        allocate(node, [A("10.244.0.2"), A("10.244.0.9"), A("10.244.0.10"), A("10.244.0.66")])


@pytest.mark.timeout(60)
async def test_claiming_and_borrowing_over_a_files_datastore(tmp_path):
    """Two nodes share a directory datastore and a pool of two blocks: each claims one, the pool is then full,
    and a node that needs more borrows the first address of the other's block that no endpoint uses."""
    def node(name: str) -> NodeConfig:
        return NodeConfig.model_validate({
            "name": name, "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "claim_settle": 0.2,
            "state_dir": str(tmp_path / name), "pools": [{"cidr": "10.244.0.0/29", "block_size": 30}]})
    a, b = node("a"), node("b")
    stores = {n: FilesDatastore(tmp_path / "ds", n, lease_ttl=60) for n in ("a", "b")}
    for ds in stores.values():
        await ds.start()
    try:
        ca, cb = (BlockClaims(stores[n], lambda _: True) for n in ("a", "b"))
        assert await ca.claim_block(a, 4) == N("10.244.0.4/30")  # where "a" starts its search (start_index())
        await eventually(lambda: owner(cb.by_block().get(N("10.244.0.4/30"), {})) == "a", 10)
        assert await cb.claim_block(b, 4) == N("10.244.0.0/30")  # "b" starts there too: it wraps around
        await eventually(lambda: owner(ca.by_block().get(N("10.244.0.0/30"), {})) == "b", 10)
        assert await ca.claim_block(a, 4) is None  # the pools are full
        await stores["a"].put("endpoints/a/default/p1", {"ips": ["10.244.0.5"]})
        await eventually(lambda: stores["b"].items("endpoints"), 10)
        assert await cb.claim_more(b, {N("10.244.0.0/30")}, 4) == N("10.244.0.6/32")
        await eventually(lambda: owner(ca.by_block().get(N("10.244.0.6/32"), {})) == "b", 10)
        a.state_dir.mkdir()  # the daemon makes it at start
        ca.save_lent(a, {N("10.244.0.4/30")})
        assert load(a.state_dir, Lent).addresses == [A("10.244.0.6")]
    finally:
        for ds in stores.values():
            await ds.stop()


# --- both IP versions --------------------------------------------------------------------------------------------
def dual_node(tmp_path, pools, blocks=(), **extra) -> NodeConfig:
    return NodeConfig.model_validate({"name": "n", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1",
                                      "listen_address6": "fd99::1", "state_dir": str(tmp_path), "pools": pools,
                                      "blocks": list(blocks), **extra})


def test_a_dual_stack_pod_gets_an_address_of_each_version(tmp_path):
    v4, v6 = {"cidr": "10.244.0.0/24", "block_size": 30}, {"cidr": "fd00::/120", "block_size": 126}
    node = dual_node(tmp_path, [v4, v6], ["10.244.0.0/30", "fd00::/126"])
    assert allocate(node, []) == [A("10.244.0.1"), ip_address("fd00::1")]  # IPv6 hosts(): all but the anycast ::0
    assert allocate(node, [A("10.244.0.1"), ip_address("fd00::1")]) == [A("10.244.0.2"), ip_address("fd00::2")]
    assert allocate(node, [], ["fd00::3"]) == [A("10.244.0.1"), ip_address("fd00::3")]
    save(tmp_path, Lent(addresses=[ip_address("fd00::1")]))  # borrowed by another node
    save(tmp_path, NodeBlocks(blocks=[N("10.244.0.0/30"), ip_network("fd00::/126")], borrowed=[ip_address("fd00::77")]))
    assert allocate(node, [])[1] == ip_address("fd00::2")
    assert allocate(node, map(ip_address, ["fd00::2", "fd00::3"]))[1] == ip_address("fd00::77")  # a /128 borrowed
    with pytest.raises(AddressError, match="^no free IPv6 address in this node's blocks$"):
        allocate(node, map(ip_address, ["fd00::2", "fd00::3", "fd00::77"]))
    with pytest.raises(AddressError, match="one IPv4 address per pod"):
        allocate(node, [], ["10.244.0.1", "10.244.0.2"])
    with pytest.raises(AddressError, match="'x' is not an IP address"):
        allocate(node, [], ["x"])
    only6 = dual_node(tmp_path / "6", [v6], ["fd00::4/126"])
    assert allocate(only6, []) == [ip_address("fd00::5")]
    with pytest.raises(AddressError, match="this node's pools have no IPv4 addresses"):
        allocate(only6, [], ["10.244.0.1"])


blocks6 = st.lists(st.integers(0, 2**10 - 1).map(lambda i: ip_network(f"fd00::{i * 4:x}/126")), min_size=1,
                   max_size=4, unique=True)


@given(blocks6, st.sets(st.integers(0, 2**12 - 1).map(lambda i: ip_address(f"fd00::{i:x}")), max_size=30))
def test_choose_ipv6_never_gives_a_used_address_or_one_outside_the_blocks(blocks, used):
    ip = choose(sorted(blocks), used, None)
    free = [a for b in sorted(blocks) for a in b.hosts() if a not in used]
    assert ip == (free[0] if free else None)


def test_lent_and_borrowable_ipv6():
    c = {N("10.244.0.0/30"): {"b": Claim("b", True, 1.0)}, ip_network("fd00::/126"): {"b": Claim("b", True, 1.0)},
         ip_network("fd00::2/128"): {"a": Claim("a", True, 2.0)}, N("10.244.0.1/32"): {"a": Claim("a", True, 2.0)}}
    assert lent("b", [N("10.244.0.0/30"), ip_network("fd00::/126")], c) == [A("10.244.0.1"), ip_address("fd00::2")]
    assert list(borrowable(set(), c, {"fd00::1"}, 6)) == [ip_network("fd00::3/128")]
    assert list(borrowable(set(), c, set(), 4)) == [N("10.244.0.2/32")]


@pytest.mark.timeout(60)
async def test_a_dual_stack_node_claims_a_block_of_each_version(tmp_path):
    from bgpd.agent.cluster import Cluster
    node = dual_node(tmp_path / "a", [{"cidr": "10.244.0.0/29", "block_size": 30},
                                      {"cidr": "fd00::/120", "block_size": 122}], claim_settle=0.1)
    ds = FilesDatastore(tmp_path / "ds", "a", lease_ttl=60)
    await ds.start()
    try:
        cluster = Cluster(ds, node, apply=None)
        await cluster.claim_missing()
        assert sorted(cluster.ours(), key=lambda b: (b.version, b)) == [N("10.244.0.0/30"), ip_network("fd00::/122")]
        await cluster.claim_missing()  # nothing missing: nothing more
        assert len(cluster.ours()) == 2
        assert await cluster.claim_more(6) == ip_network("fd00::40/122")
        view = cluster.view()
        assert view.blocks == (N("10.244.0.0/30"), ip_network("fd00::/122"), ip_network("fd00::40/122"))
    finally:
        await ds.stop()


async def test_ipam_show_counts_each_version(tmp_path):
    from bgpd.cli.cluster import borrowed_counts, ipam_table
    node = dual_node(tmp_path, [{"cidr": "10.244.0.0/24", "block_size": 26}, {"cidr": "fd00::/112"}])
    ds = FilesDatastore(tmp_path / "ds", "a", lease_ttl=60)
    await ds.start()
    try:
        for prefix, name in (("10.244.0.0/26", "a"), ("fd00::/122", "a"), ("fd00::40/122", "b"), ("fd00::41/128", "a")):
            await ds.put(f"claims/{cidr_segment(prefix)}/{name}", {"owned": True, "at": 1.0})
        await ds.put("endpoints/a/default/web", {"ips": ["10.244.0.1", "fd00::1"]})
        await ds.put("endpoints/a/default/db", {"ips": ["10.244.0.2", "fd00::41"]})
        rows = {r["block"]: (r["owner"], r["used"], r["size"]) for r in ipam_table(node, ds)}
        assert rows == {"10.244.0.0/26": ("a", 2, 62), "fd00::/122": ("a", 1, 63), "fd00::40/122": ("b", 1, 63)}
        assert borrowed_counts(node, ds) == {"10.244.0.0/24": 0, "fd00::/112": 1}
    finally:
        await ds.stop()


async def test_the_cluster_view_routes_each_family_via_that_familys_address(tmp_path):
    """Without BGP, another node's blocks are routed via its address of their family (both in one sorted view)."""
    from bgpd.agent.cluster import Cluster
    pools = [{"cidr": "10.244.0.0/24", "block_size": 26}, {"cidr": "fd00::/112"}]
    ds = FilesDatastore(tmp_path / "ds", "a", lease_ttl=60)
    await ds.start()
    try:
        for prefix, name in (("10.244.0.0/26", "a"), ("fd00::/122", "a"), ("10.244.0.64/26", "b"),
                             ("fd00::40/122", "b"), ("fd00::41/128", "c")):
            await ds.put(f"claims/{cidr_segment(prefix)}/{name}", {"owned": True, "at": 1.0})
        await ds.put("nodes/b", {"address": "10.0.0.2", "address6": "fd99::2", "since": 1.0})
        await ds.put("nodes/c", {"address": None, "address6": "fd99::3", "since": 1.0})
        node = dual_node(tmp_path, pools, bgp={"enabled": False},
                         datastore={"type": "files", "path": str(tmp_path / "ds")})
        view = Cluster(ds, node, apply=None).view()
        assert [(str(p), str(a)) for p, a in view.routes] == [
            ("10.244.0.64/26", "10.0.0.2"), ("fd00::40/122", "fd99::2"), ("fd00::41/128", "fd99::3")]
        assert [(m.name, m.address, m.address6) for m in view.members] == [
            ("b", A("10.0.0.2"), ip_address("fd99::2")), ("c", None, ip_address("fd99::3"))]
    finally:
        await ds.stop()


async def test_release_and_node_list_of_ipv6_prefixes(tmp_path):
    """`tortie ipam release` takes an IPv6 address or block too; `tortie node list` shows address6."""
    from bgpd.cli.resource_commands import node_rows, release_plan
    ds = FilesDatastore(tmp_path / "ds", "admin", lease_ttl=60)
    await ds.start()
    try:
        for k, v in (("claims/fd00__-122/b", {"owned": True, "at": 1.0}), ("claims/fd00__45-128/b", {"owned": True}),
                     ("endpoints/b/default/old", {"ips": ["10.244.0.9", "fd00::45"]}), ("status/b", {"alive": False}),
                     ("nodes/b", {"address": None, "address6": "fd99::2", "asn": 64512}),
                     ("endpoints/a/default/web", {"ips": ["fd00::50"]}), ("claims/fd00__40-122/a", {"owned": True})):
            await ds.put(k, v)
        assert release_plan(ds, ip_network("fd00::45/128")) == (
            ["claims/fd00__45-128/b", "endpoints/b/default/old"], None)
        assert release_plan(ds, ip_network("fd00::/122")) == (["claims/fd00__-122/b"], None)
        doomed, why = release_plan(ds, ip_network("fd00::40/122"))
        assert doomed == [] and why.startswith("fd00::50 is used by endpoints/a/default/web of node a")
        (row,) = [r for r in node_rows(ds, 0.0) if r["name"] == "b"]
        assert (row["address"], row["address6"]) == (None, "fd99::2")
    finally:
        await ds.stop()
