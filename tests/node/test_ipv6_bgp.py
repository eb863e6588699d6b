"""IPv6 over BGP: one ExaBGP session per family, IPv6 unicast over IPv6 addresses (docs/ipv6.md)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from ipaddress import IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bgpd.bgp import messages as m
from bgpd.bgp.exabgp_config import exabgp_environment, render_config
from bgpd.bgp.rib import ImportFilter, Reject
from bgpd.prefixes import V6, key
from config.node import NodeConfig

pytestmark = pytest.mark.timeout(120)

DUAL = NodeConfig.model_validate({
    "name": "n1", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "listen_address6": "fd00::1",
    "pools": [{"cidr": "10.244.0.0/16"}, {"cidr": "fd00:244::/56"}],
    "peers": [{"address": "10.0.1.1", "asn": 65000}, {"address": "fd00:1::1", "asn": 65000}],
    "mesh": {"nodes": [{"name": "n2", "address": "10.0.0.2", "address6": "fd00::2"}]}})


def neighbors(text: str) -> dict[str, str]:
    return dict(re.findall(r"^neighbor (\S+) \{\n(.*?)^\}", text, re.M | re.S))


def test_one_session_per_family_with_its_own_source(tmp_path):
    text = render_config(DUAL, tmp_path / "exabgp.sock", "/bin/nc.openbsd")
    sessions = neighbors(text)
    assert set(sessions) == {"10.0.1.1", "fd00:1::1", "10.0.0.2", "fd00::2"}
    for peer, body in sessions.items():
        v6 = ":" in peer
        assert f"local-address {'fd00::1' if v6 else '10.0.0.1'};" in body
        assert f"family {{ {'ipv6' if v6 else 'ipv4'} unicast; }}" in body
        assert "router-id 10.0.0.1;" in body  # the router id stays IPv4
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = subprocess.run([sys.executable, "-m", "exabgp", "validate", "-nv", str(conf)], capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr


def test_exabgp_listens_on_both_underlay_addresses():
    assert exabgp_environment(DUAL)["exabgp.tcp.bind"] == "10.0.0.1 fd00::1"
    v6only = NodeConfig.model_validate({"name": "n1", "router_id": "10.0.0.1", "asn": 64512,
                                        "listen_address6": "fd00::1", "pools": [{"cidr": "fd00:244::/56"}]})
    assert exabgp_environment(v6only)["exabgp.tcp.bind"] == "fd00::1"
    assert "family { ipv4" not in render_config(v6only, Path("/nonexistent"), "/bin/nc.openbsd")


def K(text: str) -> int:
    return key(ip_network(text))


def update(peer: str, message: dict) -> str:
    return json.dumps({"exabgp": "5.0.0", "type": "update", "neighbor": {
        "address": {"local": "fd00::1", "peer": peer}, "asn": {"local": 64512, "peer": 65000}, "message": message}})


def test_ipv6_announce_withdraw_and_end_of_rib():
    # BIRD's shape: the prefixes once under the global next hop and once under the link-local one
    both = {"update": {"announce": {"ipv6 unicast": {"fd00::2": ["fd00:244::40/122", "fd00:244::80/122"],
                                                     "fe80::2": ["fd00:244::40/122", "fd00:244::80/122"]}},
                       "withdraw": {"ipv6 unicast": ["fd00:244::c0/122"]}}}
    events = m.parse_line(update("fd00::2", both))
    assert events == [m.Withdraw("fd00::2", (K("fd00:244::c0/122"),)),
                      m.Announce("fd00::2", ip_address("fd00::2"), (K("fd00:244::40/122"), K("fd00:244::80/122")))]
    assert all(p >= V6 for e in events for p in e.prefixes)  # keys of the IPv6 family
    # a link-local next hop alone is passed on: the import filter refuses it (no device to route it through)
    alone = {"update": {"announce": {"ipv6 unicast": {"fe80::2": ["fd00:244::40/122"]}}}}
    assert m.parse_line(update("fd00::2", alone)) == [
        m.Announce("fd00::2", ip_address("fe80::2"), (K("fd00:244::40/122"),))]
    assert m.parse_line(update("fd00::2", {"eor": {"afi": "ipv6", "safi": "unicast"}})) == [m.EndOfRib("fd00::2")]
    assert m.parse_line(update("fd00::2", {"eor": {"afi": "ipv6", "safi": "flow"}})) == []


def test_commands_per_family():
    blocks = [ip_network("10.244.1.0/26"), ip_network("fd00:244::40/122")]
    assert m.announce_blocks(blocks, ["fd00::2"]) == ["neighbor fd00::2 announce route fd00:244::40/122 next-hop self"]
    assert m.announce_blocks(blocks, ["10.0.0.2"]) == ["neighbor 10.0.0.2 announce route 10.244.1.0/26 next-hop self"]
    assert m.withdraw_blocks(blocks, ["fd00::2", "fd00::3"]) == [
        "neighbor fd00::2 , neighbor fd00::3 withdraw route fd00:244::40/122"]
    assert m.announce_blocks(blocks, []) == [] and m.withdraw_blocks(blocks, ["10.0.0.2"]) == [
        "neighbor 10.0.0.2 withdraw route 10.244.1.0/26"]
    assert m.end_of_rib("fd00::2") == "neighbor fd00::2 announce eor ipv6 unicast"
    assert m.end_of_rib("10.0.0.2") == "neighbor 10.0.0.2 announce eor ipv4 unicast"


def test_exabgp_sends_each_block_to_the_sessions_of_its_family_only():
    """ExaBGP's own parser of neighbour selectors, on the names it gives the sessions of DUAL's configuration."""
    from exabgp.reactor.api.command.limit import extract_neighbors, match_neighbors
    sessions = {"10.0.1.1": "10.0.0.1", "fd00:1::1": "fd00::1", "10.0.0.2": "10.0.0.1", "fd00::2": "fd00::1"}
    names = [f"neighbor {peer} local-ip {local} local-as 64512 peer-as 65000 router-id 10.0.0.1 family-allowed in-open"
             for peer, local in sessions.items()]
    blocks = [ip_network("10.244.1.0/26"), ip_network("fd00:244::40/122")]
    got = {}
    lines = m.announce_blocks(blocks, sessions) + m.withdraw_blocks(blocks, sessions) + m.route_refresh(sessions)
    for line in lines:
        descriptions, command = extract_neighbors(line)
        got[command] = sorted(name.split()[1] for name in match_neighbors(names, descriptions))
    assert got == {"announce route 10.244.1.0/26 next-hop self": ["10.0.0.2", "10.0.1.1"],
                   "announce route fd00:244::40/122 next-hop self": ["fd00:1::1", "fd00::2"],
                   "withdraw route 10.244.1.0/26": ["10.0.0.2", "10.0.1.1"],
                   "withdraw route fd00:244::40/122": ["fd00:1::1", "fd00::2"],
                   "announce route-refresh ipv4 unicast": ["10.0.0.2", "10.0.1.1"],
                   "announce route-refresh ipv6 unicast": ["fd00:1::1", "fd00::2"]}


FILTER = ImportFilter(pools=(ip_network("10.244.0.0/16"), ip_network("fd00:244::/56")),
                      own_blocks=(ip_network("10.244.1.0/26"), ip_network("fd00:244::40/122")),
                      own_addresses=frozenset({ip_address("10.0.0.1"), ip_address("fd00::1")}),
                      borrowed=(ip_network("10.244.7.9/32"), ip_network("fd00:244::1:5/128")))


@pytest.mark.parametrize("prefix, reject", [
    ("fd00:244::80/122", None),
    ("fd00:244::1:6/128", None),  # an address another node borrowed
    ("::/0", Reject.DEFAULT_ROUTE),
    ("fd01::/122", Reject.NOT_IN_POOL),
    ("fd00:244::/48", Reject.NOT_IN_POOL),  # holds the pool, is not inside it
    ("::10.244.2.0/122", Reject.NOT_IN_POOL),  # the IPv4 pool's bits in an IPv6 prefix: another family
    ("::ffff:10.244.2.0/122", Reject.NOT_IN_POOL),
    ("fd00:244::40/122", Reject.OWN_BLOCK),
    ("fd00:244::/120", Reject.OWN_BLOCK),  # holds our block
    ("fd00:244::45/128", None),  # inside our block: an address another node borrowed from it, as for IPv4
    ("fd00:244::1:5/128", Reject.OWN_BLOCK),  # the address we borrowed
    ("10.244.2.0/26", None),
    ("10.244.1.0/26", Reject.OWN_BLOCK),
    ("10.244.7.9/32", Reject.OWN_BLOCK),
])
def test_import_filter_per_family(prefix, reject):
    assert FILTER.check_prefix(K(prefix)) is reject


@pytest.mark.parametrize("next_hop, reject", [
    ("fd00::2", None), ("fe80::2", Reject.BAD_NEXT_HOP), ("::ffff:10.0.0.2", Reject.BAD_NEXT_HOP),
    ("fd00::1", Reject.BAD_NEXT_HOP), ("::1", Reject.BAD_NEXT_HOP), ("::", Reject.BAD_NEXT_HOP),
    ("ff02::1", Reject.BAD_NEXT_HOP), ("10.0.0.2", None), ("10.0.0.1", Reject.BAD_NEXT_HOP),
])
def test_ipv6_next_hops(next_hop, reject):
    assert FILTER.check_next_hop(ip_address(next_hop)) is reject


@given(st.integers(0, 2**128 - 1), st.integers(1, 128))
def test_filter_matches_ipaddress_for_ipv6(bits, prefixlen):
    prefix = IPv6Network((bits, prefixlen), strict=False)
    block = ip_network("fd00:244::40/122")
    expected = None
    if not prefix.subnet_of(ip_network("fd00:244::/56")):
        expected = Reject.NOT_IN_POOL
    elif (prefix.overlaps(block) and not (prefixlen == 128 and prefix.subnet_of(block))
          or prefix == ip_network("fd00:244::1:5/128")):
        expected = Reject.OWN_BLOCK
    assert FILTER.check_prefix(key(prefix)) is expected


def test_route_refresh_in_each_family_of_the_sessions():
    assert m.route_refresh(["10.0.0.2", "10.0.0.3"]) == [
        "neighbor 10.0.0.2 , neighbor 10.0.0.3 announce route-refresh ipv4 unicast"]
    assert m.route_refresh(["fd00::2", "10.0.0.2"]) == ["neighbor 10.0.0.2 announce route-refresh ipv4 unicast",
                                                        "neighbor fd00::2 announce route-refresh ipv6 unicast"]
    assert m.route_refresh(["fd00::2"]) == ["neighbor fd00::2 announce route-refresh ipv6 unicast"]
