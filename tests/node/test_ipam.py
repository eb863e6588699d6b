"""The block claim rule: unit tests and a simulation of nodes racing for blocks over a slow datastore."""
import heapq
import random
from ipaddress import IPv4Network as N

from hypothesis import given, settings, strategies as st

from bgpd.ipam.claims import Claim, next_free, owner, wins
from config.node import IPPool

POOL = IPPool(cidr=N("10.244.0.0/28"), block_size=30)  # 4 blocks


def test_rule():
    assert wins("a", {"a": Claim("a", False), "b": Claim("b", False)})
    assert not wins("b", {"a": Claim("a", False), "b": Claim("b", False)})
    assert not wins("a", {"a": Claim("a", False), "b": Claim("b", True)})  # owned beats pending
    assert wins("b", {"a": Claim("a", False), "b": Claim("b", True)})
    assert not wins("a", {"b": Claim("b", False)})
    assert owner({"b": Claim("b", True), "a": Claim("a", True)}) == "a"
    assert next_free([POOL], [N("10.244.0.0/30")], [N("10.244.0.4/30")]) == N("10.244.0.8/30")
    assert next_free([POOL], [N(f"10.244.0.{i}/30") for i in (0, 4, 8, 12)]) is None


class World:
    """Nodes sharing a datastore whose writes reach each node after a random delay below max_delay."""

    def __init__(self, seed: int, max_delay: float):
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.events: list = []
        self.seq = 0
        self.views: dict[str, dict[N, dict[str, Claim]]] = {}

    def at(self, t, fn):
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn))

    def write(self, t, block, node, claim):
        for viewer in self.views:
            delay = 0 if viewer == node else self.rng.uniform(0, self.max_delay)

            def apply(_t, viewer=viewer):
                claims = self.views[viewer].setdefault(block, {})
                if claim is None:
                    claims.pop(node, None)
                else:
                    claims[node] = claim
            self.at(t + delay, apply)

    def run(self):
        while self.events:
            t, _, fn = heapq.heappop(self.events)
            fn(t)


def simulate(nodes, starts, seed, settle=1.0, max_delay=0.45):
    world = World(seed, max_delay)
    world.views = {n: {} for n in nodes}
    got: dict[str, N | None] = {}

    def claimant(node):
        skip = set()

        def attempt(t):
            view = world.views[node]
            block = next_free([POOL], [b for b, c in view.items() if c], skip)
            if block is None:
                got[node] = None
                return
            world.write(t, block, node, Claim(node, False))

            def decide(t2):
                if wins(node, world.views[node].get(block, {})):
                    world.write(t2, block, node, Claim(node, True))
                    got[node] = block
                else:
                    world.write(t2, block, node, None)
                    skip.add(block)
                    world.at(t2 + world.rng.uniform(0, 0.1), attempt)
            world.at(t + settle, decide)
        return attempt

    for node, start in zip(nodes, starts):
        world.at(start, claimant(node))
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
