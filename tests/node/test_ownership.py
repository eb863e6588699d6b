"""What readers accept from other nodes' entries: the claim rule (first owner keeps a block), endpoints inside
their node's blocks, one node record per address. Pure: unit and hypothesis tests."""
import math
from ipaddress import IPv4Network as N, ip_address, ip_network

from hypothesis import given, strategies as st

from bgpd.agent.cluster import mesh_members
from bgpd.ipam.claims import Claim, claims_by_block, owner, rivals, wins
from bgpd.ipam.ownership import (EndpointGate, Ignored, endpoint_prefixes, foreign_endpoints, owned_prefixes, registration, rival_claims,
                                 unique_addresses)

BLOCK = "claims/10.244.2.0-26/"


def test_an_owned_claim_does_not_take_a_block_from_its_first_owner():
    """Before: the lowest name won, so node 'a' writing an owned claim took node2's block."""
    items = {BLOCK + "node2": {"owned": True, "at": 100.0}, BLOCK + "a": {"owned": True, "at": 200.0}}
    claims = claims_by_block(items, lambda n: True)[N("10.244.2.0/26")]
    assert owner(claims) == "node2" and rivals(claims) == ["a"]
    assert rival_claims({N("10.244.2.0/26"): claims}) == {
        BLOCK + "a": "10.244.2.0/26 is owned by node2, who claimed it first"}
    assert wins("node2", claims) and not wins("a", claims)


def test_markers_that_are_not_finite_numbers_rank_last():
    for bad in (None, "0", True, math.nan, math.inf, -math.inf, [1]):
        claims = {"a": Claim.of("a", {"owned": True, "at": bad}), "b": Claim.of("b", {"owned": True, "at": 5})}
        assert owner(claims) == "b", bad
    assert Claim.of("a", {"owned": "yes", "at": 1}).owned is False  # only true is true


def test_claims_by_block_counts_usable_nodes_of_both_versions():
    items = {BLOCK + "node1": {"owned": True, "at": 1}, BLOCK + "node2": {"owned": True, "at": 2},
             "claims/fd00__-122/node3": {"owned": True, "at": 3}}
    by_block = claims_by_block(items, lambda n: n != "node1")
    assert set(by_block) == {N("10.244.2.0/26"), ip_network("fd00::/122")}
    assert owner(by_block[N("10.244.2.0/26")]) == "node2" and owner(by_block[ip_network("fd00::/122")]) == "node3"


claim = st.builds(Claim, st.sampled_from("abcde"), st.booleans(),
                  st.one_of(st.just(math.inf), st.floats(0, 1e9, allow_nan=False)))


@given(st.lists(claim, max_size=5), st.builds(Claim, st.sampled_from("abcde"), st.just(True), st.floats(0, 1e9)),
       st.sampled_from("xyz"), st.floats(0, 1e9))
def test_a_later_owned_claim_never_changes_the_owner(others, marked, late, after):
    """Whatever the claims (an owner with a marker among them), an owned claim by another node with a later
    marker leaves the owner as it was, and is a rival."""
    claims = {c.node: c for c in [*others, marked]}
    first = owner(claims)
    claims[late] = Claim(late, True, claims[first].at + after)
    assert owner(claims) == first and late in rivals(claims)


@given(st.lists(claim, max_size=6))
def test_owner_is_an_owned_claimant_and_order_free(cs):
    claims = {c.node: c for c in cs}
    first = owner(claims)
    assert (first is None) == (not any(c.owned for c in claims.values()))
    assert first is None or claims[first].owned
    assert owner(dict(reversed(list(claims.items())))) == first
    assert set(rivals(claims)) == {n for n, c in claims.items() if c.owned} - {first}


def test_endpoints_outside_their_nodes_blocks_are_foreign():
    by_block = claims_by_block({BLOCK + "node2": {"owned": True, "at": 1}, "claims/10.244.1.0-26/node1": {"owned": True, "at": 1},
                                "claims/10.244.2.7-32/node1": {"owned": True, "at": 2},  # borrowed from node2's block
                                "claims/10.244.3.0-26/node1": {"owned": False, "at": 3}}, lambda n: True)
    owned = owned_prefixes(by_block)
    assert owned == {"node1": [N("10.244.1.0/26"), N("10.244.2.7/32")], "node2": [N("10.244.2.0/26")]}
    endpoints = {
        "endpoints/node1/default/ok": {"ips": ["10.244.1.5"]},
        "endpoints/node1/default/borrowed": {"ips": ["10.244.2.7"]},
        "endpoints/node1/default/steal": {"ips": ["10.244.2.9"]},  # node2's pod address
        "endpoints/node1/default/half": {"ips": ["10.244.1.6", "10.244.2.9"]},
        "endpoints/node1/default/pending": {"ips": ["10.244.3.1"]},  # a block only claimed, not owned
        "endpoints/node1/default/v6": {"ips": ["fd00::1"]},
        "endpoints/node1/default/junk": {"ips": "10.244.1.5"},
        "endpoints/node1/default/none": {},
        "endpoints/node2/default/ok": {"ips": ["10.244.2.9"]},
        "endpoints/node3/default/nothing": {"ips": ["10.244.2.10"]},  # owns nothing
    }
    assert set(foreign_endpoints(endpoints, owned)) == {
        "endpoints/node1/default/" + p for p in ("steal", "half", "pending", "v6", "junk", "none")} | {
        "endpoints/node3/default/nothing"}
    assert "10.244.2.9 is not in a block its node owns" in foreign_endpoints(endpoints, owned)["endpoints/node1/default/steal"]
    assert not [k for k in foreign_endpoints(endpoints, owned, local="node1") if k.startswith("endpoints/node1/")]


def test_a_borrowed_address_in_use_by_its_block_owner_stays_the_owners():
    """A /32 claim over an address node2's pod uses (no honest borrow makes one) does not let node1 use it."""
    owned = {"node1": [N("10.244.2.9/32"), N("10.244.2.7/32")], "node2": [N("10.244.2.0/26")]}
    endpoints = {"endpoints/node2/default/db": {"ips": ["10.244.2.9"]},
                 "endpoints/node1/default/fake-db": {"ips": ["10.244.2.9"]},
                 "endpoints/node1/default/borrowed": {"ips": ["10.244.2.7"]}}
    assert list(foreign_endpoints(endpoints, owned)) == ["endpoints/node1/default/fake-db"]


def test_registration_keeps_its_marker_while_the_address_stays():
    first = registration(None, "10.99.0.2", 64512, "10.99.0.2", now=100.0)
    assert first == {"address": "10.99.0.2", "asn": 64512, "router_id": "10.99.0.2", "since": 100.0}
    assert registration(first, "10.99.0.2", 64513, "10.99.0.2", now=500.0)["since"] == 100.0  # a restart
    assert registration(first, "10.99.0.9", 64512, "10.99.0.9", now=500.0)["since"] == 500.0  # a new address
    assert registration({**first, "since": 900.0}, "10.99.0.2", 64512, "10.99.0.2", now=500.0)["since"] == 500.0
    assert registration({**first, "since": "x"}, "10.99.0.2", 64512, "10.99.0.2", now=500.0)["since"] == 500.0


def test_a_node_record_with_an_address_registered_earlier_is_ignored():
    records = {"nodes/node2": {"address": "10.99.0.2", "since": 100.0},
               "nodes/a": {"address": "10.99.0.2", "since": 200.0},  # node2's address, registered later
               "nodes/b": {"address": "10.99.0.3"},  # no marker: ranks last, but nobody else has its address
               "nodes/c": {"address": {"x": 1}}, "nodes/d": {"address": 5}}
    kept, ignored = unique_addresses(records)
    assert set(kept) == {"nodes/node2", "nodes/b", "nodes/c", "nodes/d"}
    assert ignored == {"nodes/a": "address 10.99.0.2 is registered by node2 since earlier"}
    same = {"nodes/y": {"address": "10.99.0.2", "since": 1}, "nodes/x": {"address": "10.99.0.2", "since": 1}}
    assert set(unique_addresses(same)[0]) == {"nodes/x"}


records = st.dictionaries(st.sampled_from([f"nodes/n{i}" for i in range(6)]),
                          st.fixed_dictionaries({"address": st.sampled_from(["10.0.0.1", "10.0.0.2", "x", None]),
                                                 "since": st.one_of(st.none(), st.floats(0, 10, allow_nan=False))}))


@given(records)
def test_unique_addresses_keeps_one_record_per_address(rs):
    kept, ignored = unique_addresses(rs)
    assert set(kept) | set(ignored) == set(rs) and not set(kept) & set(ignored)
    valid = [r["address"] for r in kept.values() if r["address"] in ("10.0.0.1", "10.0.0.2")]
    assert len(valid) == len(set(valid))
    assert {r["address"] for r in rs.values() if r["address"] in ("10.0.0.1", "10.0.0.2")} == set(valid)


def test_ignored_entries_are_logged_once_while_they_last(caplog):
    ignored = Ignored()
    with caplog.at_level("WARNING", "tortie.ownership"):
        ignored.update({"nodes/a": "why"})
        ignored.update({"nodes/a": "why", "nodes/b": "why"})
        ignored.update({})
        ignored.update({"nodes/a": "why"})
    assert [r.getMessage() for r in caplog.records] == ["ignoring datastore entry nodes/a: why",
                                                        "ignoring datastore entry nodes/b: why",
                                                        "ignoring datastore entry nodes/a: why"]
    assert ignored.total == 3 and ignored.current == {"nodes/a": "why"}


def test_endpoint_gate_follows_claims_and_liveness():
    gate, alive = EndpointGate("node3"), {"node1": True, "node2": True}
    usable = lambda n: alive[n]  # noqa: E731
    claims = {BLOCK + "node2": {"owned": True, "at": 1}, "claims/10.244.1.0-26/node1": {"owned": True, "at": 1}}
    mine, steal = "endpoints/node1/default/a", "endpoints/node1/default/steal"
    eps = {mine: {"ips": ["10.244.1.5"]}, steal: {"ips": ["10.244.2.5"]}}
    assert gate.filter(eps, eps, claims, usable) == {mine: eps[mine], steal: None}
    assert gate.filter({}, eps, claims, usable) == {}  # nothing changed
    alive["node2"] = False  # node2 reads down: still the owner of its block, node1 still may not use it
    assert gate.filter({}, eps, claims, usable) == {}
    claims["claims/10.244.2.5-32/node1"] = {"owned": True, "at": 2}  # node1 borrowed the address: acceptable now
    assert gate.filter({}, eps, claims, usable) == {steal: eps[steal]}
    del claims["claims/10.244.2.5-32/node1"]
    assert gate.filter({}, eps, claims, usable) == {steal: None}  # withdrawn again
    del eps[steal]
    assert gate.filter({steal: None}, eps, claims, usable) == {steal: None} and gate.ignored.current == {}
    assert gate.filter({}, eps, claims, usable) == {}


def test_endpoint_gate_wakes_its_reader_on_claims_and_liveness_flips_only():
    gate = EndpointGate("node1")
    assert gate.concerns("claims/10.244.2.0-26/node2", None)
    assert not gate.concerns("endpoints/node2/default/x", {}) and not gate.concerns("nodes/node2", {})
    assert not gate.concerns("status/node2", {"alive": True, "expires": 1})
    assert gate.concerns("status/node2", {"alive": False})
    assert not gate.concerns("status/node2", {"alive": False, "expires": 2})
    assert gate.concerns("status/node2", {"alive": True, "expires": 3})
    assert not gate.concerns("status/node2", None)  # unknown counts as up


def test_a_node_that_reads_down_keeps_its_addresses_until_its_block_is_taken():
    """Before: a node read down (as every node does while the broker restarts) lost its pods at every reader."""
    claims = {BLOCK + "node2": {"owned": True, "at": 1}}
    assert endpoint_prefixes(claims, lambda n: n != "node2") == {"node2": [N("10.244.2.0/26")]}
    claims[BLOCK + "node3"] = {"owned": True, "at": 5}  # taken over by a node that counts, node2 being gone
    assert endpoint_prefixes(claims, lambda n: n != "node2") == {"node3": [N("10.244.2.0/26")]}
    assert endpoint_prefixes(claims, lambda n: True) == {"node2": [N("10.244.2.0/26")]}  # node2 is back: first


def test_ipv6_endpoints_are_judged_by_ipv6_blocks_only():
    """An IPv6 address whose integer is an IPv4 address of the node's block (::10.244.1.5) is not inside it."""
    owned = {"node1": [N("10.244.1.0/26"), ip_network("fd00::/122"), ip_network("fd00::1:5/128")],
             "node2": [ip_network("fd00::1:0/122")]}
    endpoints = {"endpoints/node1/default/dual": {"ips": ["10.244.1.5", "fd00::5"]},
                 "endpoints/node1/default/borrowed": {"ips": ["fd00::1:5"]},
                 "endpoints/node1/default/steal": {"ips": ["10.244.1.6", "fd00::1:9"]},  # node2's
                 "endpoints/node1/default/mapped": {"ips": ["::10.244.1.5"]},
                 "endpoints/node2/default/ok": {"ips": ["fd00::1:9"]}}
    problems = foreign_endpoints(endpoints, owned)
    assert set(problems) == {"endpoints/node1/default/steal", "endpoints/node1/default/mapped"}
    assert problems["endpoints/node1/default/steal"] == "address fd00::1:9 is not in a block its node owns or borrowed"


def test_node_records_with_ipv6_addresses():
    first = registration(None, None, 64512, "10.99.0.2", now=100.0, address6="fd99::2")
    assert first == {"address": None, "address6": "fd99::2", "asn": 64512, "router_id": "10.99.0.2", "since": 100.0}
    assert registration(first, None, 64512, "10.99.0.2", now=500.0, address6="fd99::2")["since"] == 100.0
    assert registration(first, None, 64512, "10.99.0.2", now=500.0, address6="fd99::9")["since"] == 500.0
    records = {"nodes/node2": {**first},
               "nodes/a": {"address": "10.99.0.7", "address6": "fd99::2", "since": 200.0},  # node2's IPv6 address
               "nodes/b": {"address": "10.99.0.8", "address6": "fd99::8", "since": 300.0}}
    kept, ignored = unique_addresses(records)
    assert set(kept) == {"nodes/node2", "nodes/b"}
    assert ignored == {"nodes/a": "address fd99::2 is registered by node2 since earlier"}
    members = mesh_members(kept, {ip_address("10.99.0.8")})  # b's IPv4 address is a configured peer's
    assert [(m.name, m.address, m.address6) for m in members] == [("node2", None, ip_address("fd99::2"))]
