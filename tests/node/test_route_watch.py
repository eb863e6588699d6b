"""RouteStream and reconcile without a kernel: datagrams as the kernel would send them, in its order."""
import errno
import struct
from ipaddress import IPv4Address as A, IPv4Network as N, IPv6Address as A6, IPv6Network as N6

from hypothesis import given, strategies as st

from bgpd.dataplane.netlink_routes import (_NLMSGHDR, NLMSG_DONE, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE, RouteOp,
                                           encode)
from bgpd.dataplane.route_watch import NLM_F_APPEND, NLM_F_MULTI, RTM_DELADDR, RouteStream, reconcile
from bgpd.prefixes import key

PROTO, OWN, OTHER, MONITOR = 201, 777, 999, 555
PREFIXES = [key(N(f"10.100.{i}.0/26")) for i in range(6)]
HOPS = [None, frozenset(), frozenset([A("10.9.0.2")]), frozenset([A("10.9.0.2"), A("10.9.0.3")])]


def message(prefix, hops, port, protocol=PROTO, seq=0, metric=0):
    """A route event from `port`; from MONITOR, an entry of our dump (NLM_F_MULTI)."""
    data = bytearray(encode(RouteOp(prefix, hops, replace=True), seq, protocol, metric=metric, ack=False))
    length, kind, flags = _NLMSGHDR.unpack_from(data)[:3]
    _NLMSGHDR.pack_into(data, 0, length, kind, NLM_F_MULTI if port == MONITOR else flags, seq, port)
    return bytes(data)


def done(seq, code=0):
    return _NLMSGHDR.pack(20, NLMSG_DONE, 2, seq, MONITOR) + struct.pack("=i", -code)


def link():
    return _NLMSGHDR.pack(32, RTM_NEWLINK, 0, 0, 0) + bytes(16)


def stream():
    return RouteStream(PROTO, 254, OWN)


def put(routes, prefix, hops):
    if hops is None:
        routes.pop(prefix, None)
    else:
        routes[prefix] = hops


def test_own_events_are_ignored_our_writes_are_told():
    s = stream()
    s.feed(message(PREFIXES[0], HOPS[2], OWN))  # the socket filter drops them; the stream too
    assert not s.changes.routes and not s.news
    s.wrote([RouteOp(PREFIXES[0], HOPS[2])], {})
    assert reconcile({PREFIXES[0]: HOPS[2]}, s.take()) == ({PREFIXES[0]: HOPS[2]}, set())


def test_a_prefix_we_and_others_changed_is_read_again():
    s = stream()
    s.feed(message(PREFIXES[0], None, OTHER))
    s.wrote([RouteOp(PREFIXES[0], HOPS[2]), RouteOp(PREFIXES[1], HOPS[2])], {})
    assert reconcile({PREFIXES[0]: HOPS[3]}, s.take()) is None  # which came first?
    s.feed(message(PREFIXES[1], None, OTHER))
    s.wrote([RouteOp(PREFIXES[1], HOPS[2])], {PREFIXES[1]: errno.EEXIST})  # refused: no change
    assert reconcile({PREFIXES[1]: HOPS[2]}, s.take()) == ({}, {PREFIXES[1]})


def test_own_writes_after_an_empty_dump_count():
    s = stream()
    s.begin_dump(1)
    s.feed(done(1))
    s.wrote([RouteOp(PREFIXES[0], HOPS[2])], {})
    installed, drift = reconcile({PREFIXES[0]: HOPS[2]}, s.take())
    assert installed == {PREFIXES[0]: HOPS[2]} and not drift


def test_a_write_before_the_dump_is_in_it():
    s = stream()
    s.wrote([RouteOp(PREFIXES[0], HOPS[2])], {})
    s.begin_dump(1)
    s.feed(done(1))  # the route went since (a link flap): the dump is later than our write
    installed, drift = reconcile({PREFIXES[0]: HOPS[2]}, s.take())
    assert installed == {} and drift == {PREFIXES[0]}


def test_changes_by_others_are_decoded_last_one_wins():
    s = stream()
    s.feed(message(PREFIXES[0], HOPS[3], OTHER) + message(PREFIXES[1], None, OTHER) + message(PREFIXES[0], HOPS[1], 0))
    installed, drift = reconcile({PREFIXES[0]: HOPS[2], PREFIXES[1]: HOPS[2], PREFIXES[2]: HOPS[2]}, s.take())
    assert installed == {PREFIXES[0]: HOPS[1], PREFIXES[2]: HOPS[2]} and drift == {PREFIXES[0], PREFIXES[1]}


def test_routes_of_others_only_flag():
    s = stream()
    s.feed(message(PREFIXES[0], HOPS[2], OTHER, protocol=12)
           + message(PREFIXES[1], HOPS[2], OTHER, protocol=4, metric=5)
           + message(PREFIXES[2], None, OTHER, protocol=12) + message(PREFIXES[3], HOPS[2], OTHER, metric=100))
    got = s.take()
    assert not got.routes and got.foreign_added and got.foreign == {PREFIXES[0]}  # same key as ours: may replace it


def test_a_dump_is_the_whole_truth_and_events_keep_their_order():
    s = stream()
    s.feed(message(PREFIXES[0], HOPS[2], OTHER))  # before the dump, which does not list it: gone since
    s.begin_dump(7)
    s.feed(message(PREFIXES[1], HOPS[2], MONITOR, seq=7) + message(PREFIXES[1], None, OTHER))  # deleted after it
    s.wrote([RouteOp(PREFIXES[2], HOPS[2])], {})  # our write, maybe later than its place in the dump
    s.feed(done(6))  # not ours
    assert not s.settled
    s.feed(message(PREFIXES[3], HOPS[3], MONITOR, seq=7) + done(7))
    assert s.settled
    got = s.take()
    assert got.full
    installed, drift = reconcile({PREFIXES[0]: HOPS[2], PREFIXES[1]: HOPS[2], PREFIXES[2]: HOPS[2],
                                  PREFIXES[4]: HOPS[2]}, got)
    assert installed == {PREFIXES[2]: HOPS[2], PREFIXES[3]: HOPS[3]}
    assert drift == {PREFIXES[0], PREFIXES[1], PREFIXES[3], PREFIXES[4]}


def test_dump_errors():
    s = stream()
    s.begin_dump(1)
    s.feed(done(1, errno.ENOENT))  # no such table yet: empty
    got = s.take()
    assert got.full and not got.routes and not got.dump_error
    s.begin_dump(2)
    s.feed(done(2, errno.EINVAL))
    got = s.take()
    assert s.settled and not got.full and got.dump_error == errno.EINVAL


def test_doubt_asks_for_a_dump():
    s = stream()
    s.feed(link())
    assert s.take().links and s.settled
    s.feed(_NLMSGHDR.pack(24, RTM_DELADDR, 0, 0, 0) + bytes(8))  # the last address gone: its routes too
    assert s.take().links
    bad = bytearray(message(PREFIXES[0], HOPS[2], OTHER))
    struct.pack_into("=HH", bad, 16 + 12, 200, 1)  # an attribute longer than the message
    s.feed(bytes(bad))
    assert not s.settled and s.dump_again
    s = stream()
    s.feed(message(PREFIXES[0], HOPS[2], OTHER)[:30])  # cut short
    assert s.dump_again


steps = st.lists(st.one_of(
    st.tuples(st.sampled_from(["own", "other"]), st.sampled_from(PREFIXES), st.sampled_from(HOPS)),
    st.tuples(st.just("lose"), st.sampled_from(PREFIXES), st.none())), max_size=30)


class Model:
    """The kernel, our record of it, and the stream that watches it; `both`: prefixes we and others changed."""

    def __init__(self, start):
        self.kernel, self.ours, self.s = dict(start), dict(start), stream()
        self.mine, self.theirs = set(), set()

    def step(self, kind, prefix, hops):
        put(self.kernel, prefix, hops)
        if kind == "own":  # its event never reaches the stream: the writer tells it
            put(self.ours, prefix, hops)
            self.s.wrote([RouteOp(prefix, hops)], {})
            self.mine.add(prefix)
        elif kind == "other":
            self.s.feed(message(prefix, hops, OTHER))
            self.theirs.add(prefix)

    def check(self):
        wrong = {p for p in PREFIXES if self.ours.get(p) != self.kernel.get(p)}
        result = reconcile(dict(self.ours), self.s.take())
        if result is None:  # only when the order is unknown; the caller then reads again, writes held
            assert self.mine & self.theirs
            return
        assert result == (self.kernel, wrong)


@given(st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from(HOPS[1:])), steps, steps, st.permutations(PREFIXES),
       st.integers(1, 6), steps)
def test_after_a_full_read_installed_is_the_kernel(start, before, during, order, chunk, after):
    """Our writes, others' changes and silent losses (a link flap) before a dump; writes and changes while
    its chunks are produced and after its end. Then `installed` is exactly the kernel, and the drift is
    where our record was wrong."""
    m = Model(start)
    for args in before:
        m.step(*args)
    m.s.begin_dump(3)
    m.mine, m.theirs = set(), set()  # the dump orders everything before it
    pending, changes = list(order), iter([d for d in during + after if d[0] != "lose"])
    while pending:
        listed, pending = pending[:chunk], pending[chunk:]
        m.s.feed(b"".join(message(p, m.kernel[p], MONITOR, seq=3) for p in listed if p in m.kernel))
        args = next(changes, None)
        if args:
            m.step(*args)
    m.s.feed(done(3))
    for args in changes:
        m.step(*args)
    m.check()


@given(st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from(HOPS[1:])),
       st.lists(st.tuples(st.sampled_from(["own", "other"]), st.sampled_from(PREFIXES), st.sampled_from(HOPS))))
def test_events_alone_keep_installed_true(start, changes):
    m = Model(start)
    for args in changes:
        m.step(*args)
    m.check()


V6_PREFIX = key(N6("fd00:244:0:1::/122"))
V6_HOPS = [frozenset([A6("fd09::2")]), frozenset([A6("fd09::3")])]


def event(prefix, hops, kind, flags=0):
    """A change by someone else, as the kernel reports it: RTM_NEWROUTE or RTM_DELROUTE naming the route's hops."""
    data = bytearray(message(prefix, hops, OTHER))
    length = _NLMSGHDR.unpack_from(data)[0]
    _NLMSGHDR.pack_into(data, 0, length, kind, flags, 0, OTHER)
    return bytes(data)


def test_ipv6_ecmp_hops_listed_apart_are_one_route():
    """Older kernels dump each hop of an IPv6 ECMP route as a route of its own, one after the other."""
    s = stream()
    s.begin_dump(1)
    s.feed(message(V6_PREFIX, V6_HOPS[0], MONITOR, seq=1) + message(V6_PREFIX, V6_HOPS[1], MONITOR, seq=1)
           + message(PREFIXES[0], HOPS[2], MONITOR, seq=1) + done(1))
    assert s.take().routes == {V6_PREFIX: V6_HOPS[0] | V6_HOPS[1], PREFIXES[0]: HOPS[2]}


def test_an_ipv6_hop_deleted_or_appended_asks_for_a_dump():
    """One hop of an IPv6 route gone (a link down deletes ECMP routes hop by hop) or added: the other hops are
    the kernel's to tell. A whole route deleted, or an IPv4 event, is news enough."""
    for data, dump in ((event(V6_PREFIX, V6_HOPS[0], RTM_DELROUTE), True),
                       (event(V6_PREFIX, V6_HOPS[0] | V6_HOPS[1], RTM_NEWROUTE, NLM_F_APPEND), True),
                       (event(V6_PREFIX, None, RTM_DELROUTE), False),
                       (event(V6_PREFIX, V6_HOPS[0], RTM_NEWROUTE), False),
                       (event(PREFIXES[0], HOPS[2], RTM_DELROUTE), False)):
        s = stream()
        s.feed(data)
        assert s.settled is not dump and s.news
