"""The hand-packed route messages decode, with pyroute2 as the reference, to what we meant."""
from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from bgpd.dataplane.netlink_routes import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RTM_DELROUTE, RTM_NEWROUTE, RouteOp,
                                 encode)

addresses = st.integers(1, 2**32 - 2).map(A)
networks = st.builds(lambda a, l: N(f"{a}/{l}", strict=False), addresses, st.integers(0, 32))


def decode(data: bytes) -> rtmsg:
    msg = rtmsg(data)
    msg.decode()
    return msg


@given(networks, st.one_of(st.none(), st.frozensets(addresses, max_size=4)), st.booleans(),
       st.integers(0, 2**32 - 1), st.integers(5, 254), st.integers(0, 1000), st.booleans())
def test_encoding_matches_pyroute2(prefix, hops, replace, seq, proto, metric, ack):
    data = encode(RouteOp(prefix, hops, replace), seq, proto, metric=metric, ack=ack)
    msg = decode(data)
    assert msg["header"]["length"] == len(data) and msg["header"]["sequence_number"] == seq
    assert bool(msg["header"]["flags"] & NLM_F_ACK) == ack
    assert msg["dst_len"] == prefix.prefixlen and msg["proto"] == proto and msg["family"] == 2
    assert A(msg.get("dst") or "0.0.0.0") == prefix.network_address
    assert msg.get("table") == 254 and (msg.get("priority") or 0) == metric
    flags = msg["header"]["flags"]
    if hops is None:
        assert msg["header"]["type"] == RTM_DELROUTE
        return
    assert msg["header"]["type"] == RTM_NEWROUTE and flags & NLM_F_CREATE
    assert bool(flags & NLM_F_REPLACE) == replace and bool(flags & NLM_F_EXCL) == (not replace)
    if not hops:
        assert msg["type"] == 6  # blackhole
    elif len(hops) == 1:
        assert A(msg.get("gateway")) in hops
    else:
        got = {A(dict(nh["attrs"])["RTA_GATEWAY"]) for nh in msg.get("multipath")}
        assert got == hops
