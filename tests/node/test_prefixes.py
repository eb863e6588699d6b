"""Prefix keys (bgpd/prefixes.py): the parser and the kernel decoder must build the keys ipaddress would."""
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given, strategies as st

from bgpd.prefixes import V6, key, network, parse, text, version

v4 = st.builds(lambda a, n: IPv4Network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))
v6 = st.builds(lambda a, n: IPv6Network((a, n), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128))


@given(st.one_of(v4, v6))
def test_key_round_trips(net):
    k = key(net)
    assert network(k) == net and version(k) == net.version and text(k) == str(net)
    assert parse(str(net)) == k and parse(net.compressed) == k and parse(net.exploded) == k
    assert (k >= V6) == (net.version == 6)


@given(st.lists(st.one_of(v4, v6), max_size=20))
def test_keys_sort_as_networks_by_family(nets):
    assert [network(k) for k in sorted(map(key, nets))] == sorted(nets, key=lambda n: (n.version, n))


@pytest.mark.parametrize("bad", ["10.0.0.1/24", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/ 8",
                                 "10.0.0.0/08", "010.0.0.0/8", "10.0.0/8", "10.0.0.0.0/8", "fd00::1/64",
                                 "fd00::/129", "", "/8", "x/8", "10.0.0.0/8/8", "fe80::1%eth0/128", "10.0.0.0/٨"])
def test_bad_prefixes_are_value_errors(bad):
    with pytest.raises(ValueError):
        parse(bad)


def test_a_bare_address_is_a_host_prefix():
    assert parse("10.1.2.3") == key(ip_network("10.1.2.3/32"))
    assert parse("fd00::1") == key(ip_network("fd00::1/128"))
