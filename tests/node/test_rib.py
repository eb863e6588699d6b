"""The RIB and the import filter: pure logic, tested exhaustively."""
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, settings, strategies as st

from bgpd.bgp.rib import ImportFilter, Reject, Rib
from bgpd.prefixes import key


def K(text):
    return key(N(text))


FLT = ImportFilter((N("10.244.0.0/16"),), (N("10.244.1.0/26"),), frozenset({A("10.99.0.1")}))
NH2, NH3 = A("10.99.0.2"), A("10.99.0.3")


def rib(limit=100):
    return Rib(FLT, {"p2": limit, "p3": limit})


def test_filter():
    assert FLT.check(K("10.244.2.0/26"), NH2) is None
    assert FLT.check(K("0.0.0.0/0"), NH2) is Reject.DEFAULT_ROUTE
    assert FLT.check(K("192.0.2.0/24"), NH2) is Reject.NOT_IN_POOL
    assert FLT.check(K("10.0.0.0/8"), NH2) is Reject.NOT_IN_POOL  # a supernet of the pool
    assert FLT.check(K("10.244.1.0/26"), NH2) is Reject.OWN_BLOCK
    assert FLT.check(K("10.244.1.4/30"), NH2) is Reject.OWN_BLOCK
    assert FLT.check(K("10.244.1.5/32"), NH2) is None  # an address another node borrowed from our block
    borrowing = ImportFilter(FLT.pools, FLT.own_blocks, borrowed=(N("10.244.9.7/32"),))
    assert borrowing.check(K("10.244.9.7/32"), NH2) is Reject.OWN_BLOCK  # the one we borrowed is ours
    assert borrowing.check(K("10.244.9.0/26"), NH2) is None  # the block it came from is still its owner's
    assert FLT.check(K("10.244.0.0/23"), NH2) is Reject.OWN_BLOCK
    assert FLT.check(K("10.244.2.0/26"), A("10.99.0.1")) is Reject.BAD_NEXT_HOP
    assert FLT.check(K("10.244.2.0/26"), A("127.0.0.1")) is Reject.BAD_NEXT_HOP


def test_own_blocks_are_blackholes():
    r = rib()
    assert r.desired(K("10.244.1.0/26")) == frozenset()
    assert r.all_desired() == {K("10.244.1.0/26"): frozenset()}


def test_announce_withdraw_ecmp():
    r = rib()
    p = K("10.244.2.0/26")
    assert r.announce("p2", [p], NH2).changed == {p}
    assert r.announce("p2", [p], NH2).changed == frozenset()  # no change, no kernel work
    assert r.announce("p3", [p], NH3).changed == {p}
    assert r.desired(p) == {NH2, NH3}
    assert r.withdraw("p2", [p]).changed == {p}
    assert r.desired(p) == {NH3}
    assert r.withdraw("p3", [p]).changed == {p}
    assert r.desired(p) is None
    assert r.withdraw("p3", [p]).changed == frozenset()


def test_rejected_announcement_is_an_implicit_withdraw():
    r = rib()
    p = K("10.244.2.0/26")
    r.announce("p2", [p], NH2)
    upd = r.announce("p2", [p], A("10.99.0.1"))
    assert upd.rejected == {Reject.BAD_NEXT_HOP} and upd.changed == {p}
    assert r.desired(p) is None
    assert r.peers["p2"].rejected[Reject.BAD_NEXT_HOP] == 1


def test_max_prefixes_blocks_the_excess_only():
    r = rib(limit=2)
    for i in range(4):
        r.announce("p2", [K(f"10.244.{10 + i}.0/26")], NH2)
    assert r.accepted("p2") == 2
    assert r.peers["p2"].rejected[Reject.MAX_PREFIXES] == 2
    assert r.announce("p2", [K("10.244.10.0/26")], NH3).rejected == frozenset()  # a known prefix may change


def test_session_down_hard_and_graceful():
    r = rib()
    a, b = K("10.244.2.0/26"), K("10.244.3.0/26")
    r.announce("p2", [a], NH2)
    r.announce("p2", [b], NH2)
    assert r.session_down("p2", graceful=True).changed == frozenset()
    assert r.desired(a) == {NH2}  # kept as stale
    r.session_up("p2")
    r.announce("p2", [a], NH2)  # refreshed
    assert r.end_of_rib("p2").changed == {b}  # not refreshed: gone
    assert r.desired(b) is None and r.desired(a) == {NH2}
    assert r.session_down("p2", graceful=False).changed == {a}
    assert r.all_desired() == {K("10.244.1.0/26"): frozenset()}


def test_stale_purge_on_timer():
    r = rib()
    a = K("10.244.2.0/26")
    r.announce("p2", [a], NH2)
    r.session_down("p2", graceful=True)
    assert r.purge_stale("p2").changed == {a}


prefixes = st.builds(lambda i: K(f"10.244.{i}.0/26"), st.integers(0, 5))
ops = st.lists(st.tuples(st.sampled_from(["announce", "withdraw", "down", "gdown", "up", "eor"]),
                         st.sampled_from(["p2", "p3"]), prefixes, st.sampled_from([NH2, NH3])), max_size=60)


@settings(max_examples=300)
@given(ops)
def test_incremental_changes_match_full_recomputation(seq):
    """Applying only the changed prefixes to a table always yields the full desired state."""
    r = rib()
    table = dict(r.all_desired())
    for op, peer, prefix, nh in seq:
        upd = {"announce": lambda: r.announce(peer, [prefix], nh), "withdraw": lambda: r.withdraw(peer, [prefix]),
               "down": lambda: r.session_down(peer, False), "gdown": lambda: r.session_down(peer, True),
               "up": lambda: r.session_up(peer), "eor": lambda: r.end_of_rib(peer)}[op]()
        for p in upd.changed:
            want = r.desired(p)
            if want is None:
                table.pop(p, None)
            else:
                table[p] = want
        assert table == r.all_desired()
        for name, pr in r.peers.items():
            assert pr.stale <= set(pr.routes)


nets = st.builds(lambda a, l: N((a, l), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))


@given(nets, st.lists(nets, max_size=3), st.lists(nets, max_size=3))
def test_filter_agrees_with_ipaddress(prefix, pools, blocks):
    """The integer arithmetic gives what ipaddress's subnet_of / overlaps would."""
    flt = ImportFilter(tuple(pools), tuple(blocks))
    if prefix.prefixlen == 0:
        expected = Reject.DEFAULT_ROUTE
    elif not any(prefix.subnet_of(p) for p in pools):
        expected = Reject.NOT_IN_POOL
    elif any(prefix.supernet_of(b) or (prefix.subnet_of(b) and prefix.prefixlen < 32) for b in blocks):
        expected = Reject.OWN_BLOCK
    else:
        expected = None
    assert flt.check(key(prefix), None) is expected


def test_end_of_rib_bookkeeping():
    r = rib()
    assert r.waiting_for_end_of_rib() == ["p2", "p3"]
    r.end_of_rib("p2")
    r.expect_no_end_of_rib("p3")
    assert r.waiting_for_end_of_rib() == []
    r.session_up("p3")
    assert r.waiting_for_end_of_rib() == ["p3"]
