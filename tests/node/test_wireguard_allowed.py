"""WireGuard's AllowedIPs fed as the daemon feeds them: the core's plan batches only (bgpd/wireguard/service.py
`routes_changed`), never a pass over the RIB. Random BGP inputs, key changes and device replacements; once the
plan is drained the peers equal a full recomputation over every desired route (`NodeCore.routes`)."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bgpd.bgp import messages as msgs
from bgpd.bgp.core import CoreConfig, NodeCore, PeerSettings
from bgpd.bgp.rib import ImportFilter
from bgpd.dataplane.netlink_routes import DeviceHop
from bgpd.prefixes import key
from bgpd.wireguard import keys
from bgpd.wireguard.plan import AllowedIps, encryption
from config.node import MeshMember
from tests.node.test_wireguard_plan import full

POOL, BLOCK = N("10.244.0.0/16"), N("10.244.1.0/26")
ME, N2, N3, N4 = A("192.168.1.11"), A("192.168.1.12"), A("192.168.1.13"), A("192.168.1.14")
PEERS = (str(N2), str(N3), str(N4))
KEY = keys.public_key(keys.generate())
PREFIXES = [key(N(f"10.244.{i}.0/26")) for i in range(2, 7)] + [key(N("10.244.9.7/32")), key(N("172.16.0.0/24"))]


def members(keyed: frozenset[A]) -> list[MeshMember]:
    return [MeshMember(name="n1", address=ME, public_key=KEY)] + [
        MeshMember(name=f"n{a.packed[-1] - 10}", address=a, public_key=KEY if a in keyed else None)
        for a in (N2, N3, N4)]


def config(keyed: frozenset[A], oif: int, required: bool, max_prefixes: int = 100) -> CoreConfig:
    return CoreConfig(peers={p: PeerSettings(p, 64512, max_prefixes) for p in PEERS},
                      import_filter=ImportFilter((POOL, N("172.16.0.0/12")), (BLOCK,), frozenset({ME})),
                      announced=(BLOCK,), graceful_restart=0, initial_sync_timeout=5, wait_for_datastore=False,
                      encryption=encryption(members(keyed), "n1", ME, [POOL], required, oif))


class AllowedMachine(RuleBasedStateMachine):
    @initialize(limit=st.integers(1, 4))
    def start(self, limit):
        self.keyed, self.oif, self.required, self.limit = frozenset({N2}), 9, False, limit
        self.core = NodeCore(config(self.keyed, self.oif, self.required))
        self.allowed = AllowedIps()
        self.core.adopted({}, 0.0)
        for peer in PEERS:
            self.core.event(msgs.SessionState(peer, "up"), 0.0)
        self._drain()

    def _drain(self):
        """What the daemon's kernel writer does: batches of the plan, each handed to WireGuard."""
        while self.core.planned:
            self.allowed.update(self.core.plan(self.limit), self.core.config.encryption.oif)

    @rule(peer=st.sampled_from(PEERS), prefixes=st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3))
    def announce(self, peer, prefixes):
        self.core.event(msgs.Announce(peer, A(peer), tuple(prefixes)), 1.0)
        self._drain()

    @rule(peer=st.sampled_from(PEERS), prefixes=st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3))
    def withdraw(self, peer, prefixes):
        self.core.event(msgs.Withdraw(peer, tuple(prefixes)), 1.0)
        self._drain()

    @rule(peer=st.sampled_from(PEERS), up=st.booleans())
    def session(self, peer, up):
        self.core.event(msgs.SessionState(peer, "up" if up else "down", "hold timer expired"), 1.0)
        self._drain()

    @rule(node=st.sampled_from([N2, N3, N4]), oif=st.sampled_from([9, 9, 12]), required=st.booleans())
    def reconfigure(self, node, oif, required):
        """A node's key appears or goes, the device is replaced (a new ifindex), `required` flips."""
        self.keyed, self.oif, self.required = self.keyed ^ {node}, oif, required
        self.core.configure(config(self.keyed, oif, required), 2.0)
        self._drain()

    @invariant()
    def peers_equal_a_full_recomputation(self):
        routes = {prefix: want for prefix, want, _ in self.core.routes()}
        assert self.allowed.peers(members(self.keyed), "n1") == full(members(self.keyed), routes, self.oif, "n1")


AllowedMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                            derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TestAllowedMachine = AllowedMachine.TestCase


def test_core_routes_are_what_the_views_show():
    """`NodeCore.routes`: every desired route in order, as the kernel gets it, with the peers it came from."""
    core = NodeCore(config(frozenset({N2}), 9, False))
    core.adopted({}, 0.0)
    for peer in (str(N2), str(N3)):
        core.event(msgs.SessionState(peer, "up"), 0.0)
        core.event(msgs.Announce(peer, A(peer), (key(N("10.244.2.0/26")),)), 0.0)
    core.event(msgs.Announce(str(N3), N3, (key(N("10.244.3.0/26")),)), 0.0)
    assert core.routes() == [
        (key(BLOCK), frozenset(), []),
        (key(N("10.244.2.0/26")), frozenset({DeviceHop(N2, 9), N3}), [str(N2), str(N3)]),
        (key(N("10.244.3.0/26")), frozenset({N3}), [str(N3)])]
    assert core.peer_routes(str(N3)).routes == {key(N("10.244.2.0/26")): N3, key(N("10.244.3.0/26")): N3}
